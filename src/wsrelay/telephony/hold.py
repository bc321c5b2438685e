"""Holding a telephony provider's first messages: the I/O around telephony/providers.py.

See docs/telephony.md. On a provider endpoint the client is upgraded by the
gate itself (its ``101`` carries no sub-protocol), and what it sends next stays in the gate's buffer, byte for
byte, while ``FirstMessages`` reads the first messages from it. The relay then routes
(Twilio: on ``start.customParameters._pipecatCloudServiceHost``), contacts the bot, and
the gate hands the socket to picows with every held byte: the first messages and
whatever followed them reach the bot first, in order, through the ordinary pump.

Bounded three ways: ``provider_start_timeout`` for the first messages, and while they
are read at most ``MAX_FIRST_BYTES`` held bytes and ``MAX_FIRST_FRAMES`` frames (both
refusals, 1008); once they are complete and the bot is being contacted, the gate stops
reading past ``EARLY_DATA_BYTES`` or ``MAX_HELD_FRAMES`` (TCP holds the rest).
"""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol

from ..core.frames import FrameScanner
from ..errors import ProviderRefused, SessionRefused
from .providers import ClientClosed, FirstMessages, Start


class HoldingGate(Protocol):
    """What a hold needs of the connection's gate (edge/gate.py): upgrade and hold, the bytes
    read since, and the transport to pause. Declared here so telephony/ does not import edge/."""

    early: bytearray

    @property
    def transport(self) -> asyncio.Transport | None: ...

    def hold(self, key: str, on_held: Callable[[], None]) -> None: ...


MAX_HELD_FRAMES = 1024         # frames kept after the first messages while the bot is contacted
NORMAL_CLOSURE = 1000


class Hold:
    """One provider client's first messages; ``start_message()`` waits for their verdict."""

    __slots__ = ("provider", "_gate", "_reader", "_verdict", "_timer", "_after", "_timeout")

    def __init__(self, gate: HoldingGate, provider: str, *, start_timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self.provider = provider
        self._gate = gate
        self._reader = FirstMessages(provider)
        self._verdict: asyncio.Future[Start] = loop.create_future()
        self._timeout = start_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._after: FrameScanner | None = None        # counts frames held after the start

    async def start_message(self, key: str) -> Start:
        """Upgrade the client and return its valid start; SessionRefused otherwise."""
        self._timer = asyncio.get_running_loop().call_later(self._timeout, self._timed_out)
        self._gate.hold(key, self._held)
        return await self._verdict

    def refuse(self, refusal: SessionRefused) -> None:
        """End a hold still waiting for its start message (the relay is shutting down)."""
        self._decide(refusal)

    def close(self) -> None:
        """Stop the timer; the hold is over (routed, refused, or the client left)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _held(self) -> None:
        """The gate read more bytes: read the first messages, or count what follows them."""
        buffer = self._gate.early
        if self._verdict.done():
            self._count(buffer)
            return
        try:
            result = self._reader.scan(buffer)
        except SessionRefused as exc:
            self._decide(exc)
            return
        if isinstance(result, ClientClosed):
            # Answered (and counted) as 1000 whatever the client sent: its own code may be
            # one that must never be on the wire, and it would be a metric label it chose.
            self._decide(SessionRefused(f"the client closed ({result.code}, {result.reason[:60]!r}) before "
                                        f"its {self.provider} start message", code=NORMAL_CLOSURE))
        elif result is not None:
            self.close()
            self._verdict.set_result(result)
            self._after = FrameScanner(max_payload=1 << 62)
            self._after.pos = result.end
            self._count(buffer)

    def _count(self, buffer: bytearray) -> None:
        """Pause reading once MAX_HELD_FRAMES frames wait behind the start message."""
        scanner = self._after
        if scanner is None:
            return
        try:
            while scanner.next(buffer, want_payload=False) is not None:
                pass
        except SessionRefused:
            self._after = None            # picows will find it, after the held frames, in order
            return
        transport = self._gate.transport
        if scanner.frames >= MAX_HELD_FRAMES and transport is not None:
            transport.pause_reading()

    def _timed_out(self) -> None:
        self._timer = None
        self._decide(ProviderRefused(f"no {self.provider} start message within {self._timeout:g}s"))

    def _decide(self, refusal: SessionRefused) -> None:
        self.close()
        if not self._verdict.done():
            self._verdict.set_exception(refusal)
