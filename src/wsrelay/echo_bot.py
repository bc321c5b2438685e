"""The built-in echo bot behind the demo agent ``echo.demo``.

It answers every data frame with the same payload, opcode, fin and rsv bits, replies
to pings (picows' auto-pong) and to close frames (the same payload: code and reason, or none). It is what
``wsrelay serve`` without a config relays to, and a real bot for the tests.
"""

from __future__ import annotations

from picows import WSListener, WSMsgType, ws_create_server


class EchoListener(WSListener):
    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            # Echo the close payload as it came: a close without a status code is answered
            # without one (send_close would invent code 0, which clients such as wscat
            # rightly reject as an invalid frame).
            transport.send(WSMsgType.CLOSE, frame.get_payload_as_bytes())
            transport.disconnect()
            return
        if frame.msg_type in (WSMsgType.PING, WSMsgType.PONG):
            return
        transport.send(frame.msg_type, frame.get_payload_as_bytes(),
                       frame.fin, frame.rsv1, frame.rsv2, frame.rsv3)


async def start_echo_bot(host: str = "127.0.0.1", port: int = 0):
    """Start the echo bot; returns the asyncio server (its port via ``sockets[0]``)."""
    return await ws_create_server(lambda request: EchoListener(), host, port,
                                  max_frame_size=64 * 1024 * 1024, use_aiofastnet=False)
