"""A relay-to-relay hop: a client's resume carried to the relay of the fleet that holds its session.

A resume (docs/resume.md) may reach any relay of a fleet; the session lives on one. The relay
that got the request finds the holder's ``internal_url`` in Redis (fleet/session_directory.py),
opens a TCP connection to it, writes the client's request head again (with ``X-Wsrelay-Hop``,
so the holder never carries it further), and from then on copies bytes both ways: the holder
answers the client itself (``101`` and the replay, or ``403``/``404``/``409``), and the session
goes on through the hop. Nothing is parsed here.

Bounded: the connect within ``timeout``; each direction's write buffer at most ``HIGH_WATER``
bytes (the reading side is paused above it, as the pump does), and either side's end ends both.
The client's socket is taken from the gate only once the holder is connected (``join``), so
the gate keeps what the client sends meanwhile, and a holder out of reach is still a 502.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

HOP_HEADER = "X-Wsrelay-Hop"
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class HopError(Exception):
    """The holder could not be reached; the message is for the log."""


def hopped(raw_headers: list[tuple[bytes, bytes]]) -> bool:
    """The request came through a hop already: it is never carried further."""
    return any(name.lower() == HOP_HEADER.lower().encode() for name, _ in raw_headers)


def hop_head(method: bytes, target: bytes, raw_headers: list[tuple[bytes, bytes]], relay_id: str) -> bytes:
    """The client's request head as the holder gets it: the same target and headers, and the hop's mark."""
    lines = [method + b" " + target + b" HTTP/1.1"]
    lines += [name + b": " + value for name, value in raw_headers if name.lower() != HOP_HEADER.lower().encode()]
    lines.append(f"{HOP_HEADER}: {relay_id}".encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _End(asyncio.Protocol):
    """One socket of a hop: what it reads goes to the other one."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.other: "_End | None" = None
        self.pending = bytearray()              # read before the other side was connected
        self.lost = False
        self.on_lost: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            self.pending += data
            if len(self.pending) > HIGH_WATER and self.transport is not None:
                self.transport.pause_reading()
            return
        other.transport.write(data)

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self._end()
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:            # the other side reads slower than this one is fed
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def _end(self) -> None:
        other, self.other = self.other, None
        if other is not None:
            other.other = None
            if other.transport is not None:
                other.transport.close()         # after what is queued for it
        if self.transport is not None:
            self.transport.close()


class Hop:
    """A connection to the holder, until ``join`` gives it the client or ``close`` drops it.
    ``on_ended`` is called once both sockets are gone (the relay keeps its live hops until then;
    no coroutine waits on a hop)."""

    def __init__(self, holder: _End) -> None:
        self.holder = holder
        self.client: _End | None = None
        self.on_ended: Any = None
        holder.on_lost = self._lost

    def join(self, client_transport: Any, early: bytes, head: bytes) -> None:
        """Send ``head`` and the client's ``early`` bytes to the holder; then copy both ways."""
        client, holder = _End(), self.holder
        self.client = client
        client.on_lost = self._lost
        client_transport.set_protocol(client)
        client.connection_made(client_transport)
        client.other, holder.other = holder, client
        holder.transport.write(head + early)
        if holder.pending:                       # the holder spoke first (it never should): pass it on
            client_transport.write(bytes(holder.pending))
            holder.pending.clear()
        client_transport.resume_reading()

    def close(self) -> None:
        """Drop both sockets now (the relay stops, or the client left before ``join``)."""
        for end in (self.holder, self.client):
            if end is not None and end.transport is not None:
                end.transport.abort()

    def _lost(self) -> None:
        if self.holder.lost and (self.client is None or self.client.lost) and self.on_ended is not None:
            on_ended, self.on_ended = self.on_ended, None
            on_ended(self)


async def connect(address: str, *, timeout: float) -> Hop:
    """A TCP connection to the relay at ``address`` (``ws://host:port``); HopError when it
    cannot be reached within ``timeout``."""
    parts = urlsplit(address)
    if parts.hostname is None:
        raise HopError(f"internal_url {address!r} names no host")
    loop = asyncio.get_running_loop()
    holder = _End()
    try:
        await asyncio.wait_for(loop.create_connection(lambda: holder, parts.hostname, parts.port or 80), timeout)
    except (OSError, TimeoutError) as exc:
        raise HopError(f"the relay at {address} could not be reached: {exc!r}") from None
    return Hop(holder)
