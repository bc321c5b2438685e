"""Types of the compiled frame pump (csrc/wsrelay/_pump.pyx); same interface as pump_py."""

from typing import Any

from picows import WSFrame, WSListener, WSTransport

IMPLEMENTATION: str

def totals() -> dict[str, int]:
    """Frames and payload bytes relayed by this process, per direction, since start."""

class Side(WSListener):
    """The listener of one socket of a session. ``frame`` payloads are valid only inside
    ``on_ws_frame``: the pump sends them from picows' read buffer before returning."""

    pair: Any
    transport: WSTransport | None
    peer: "Side | None"
    is_bot: bool
    close_received: bool
    close_sent: bool
    disconnected: bool
    @property
    def frames(self) -> int: ...
    @property
    def bytes(self) -> int: ...
    @property
    def dropped(self) -> int: ...
    def __init__(self, pair: Any, is_bot: bool) -> None: ...
    def on_ws_connected(self, transport: WSTransport) -> None: ...
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None: ...
    def on_ws_disconnected(self, transport: WSTransport) -> None: ...
