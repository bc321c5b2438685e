"""Pure-Python twin of the compiled pump (csrc/wsrelay/pump/), for debugging.

Same interface, same behaviour, same tests; slower, and it copies each payload into a
``bytes`` object (``frame.get_payload_as_bytes()``) because the payload's memory belongs
to picows' read buffer and is only valid inside ``on_ws_frame`` — a memoryview handed to
the transport could be kept past that and read after the buffer is reused.
Forced with ``WSRELAY_PURE_PYTHON=1``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport

from ..core.frames import CLOSE, header_size, payload_length

IMPLEMENTATION = "python"
DEFAULT_GAP_THRESHOLD_NS = 100_000_000
_DATA = (WSMsgType.CONTINUATION, WSMsgType.TEXT, WSMsgType.BINARY)
KEEPALIVE = b"wsrelay-keepalive"      # the relay's own pings; their pongs are never relayed

# Process-wide counters: [0] client->bot, [1] bot->client.
_total_frames = [0, 0]
_total_bytes = [0, 0]
_total_sends = [0, 0]          # writes to the destination: one per frame here (no coalescing)


def totals() -> dict[str, int]:
    """Frames and payload bytes relayed by this process, per direction, since start."""
    return {
        "frames_up": _total_frames[0], "bytes_up": _total_bytes[0], "sends_up": _total_sends[0],
        "frames_down": _total_frames[1], "bytes_down": _total_bytes[1], "sends_down": _total_sends[1],
    }


class Side(WSListener):
    """The listener of one socket of a session (see csrc/wsrelay/pump/)."""

    def __init__(self, session: Any, is_bot: bool) -> None:
        self.session = session
        self.transport: WSTransport | None = None
        self.peer: Side | None = None
        self.is_bot = is_bot
        self.close_sent = False
        self.disconnected = False
        self.frames = 0
        self.bytes = 0
        self.dropped = 0
        self._direction = 1 if is_bot else 0
        self.first_frame_ns = 0
        self.max_gap_ns = 0
        self.gaps = 0
        self.gap_threshold_ns = DEFAULT_GAP_THRESHOLD_NS
        self._last_frame_ns = 0
        self._last_interval_ns = -1
        self._jitter16 = 0

    @property
    def jitter_ns(self) -> int:
        """The interarrival jitter estimate in nanoseconds (RFC 3550 §A.8: J = J16 / 16)."""
        return self._jitter16 >> 4

    def observe_arrivals(self, times_ns: Iterable[int]) -> None:
        """Account data-frame arrivals at the given monotonic times (see the compiled pump)."""
        for now in times_ns:
            self._time_arrival(now)

    def _time_arrival(self, now: int) -> None:
        """The same integers as the compiled ``_time_arrival`` (csrc/wsrelay/pump/side.pxi)."""
        if self._last_frame_ns == 0:
            self.first_frame_ns = now
        else:
            interval = now - self._last_frame_ns
            if interval > self.max_gap_ns:
                self.max_gap_ns = interval
            if interval > self.gap_threshold_ns:
                self.gaps += 1
            if self._last_interval_ns >= 0:
                d = abs(interval - self._last_interval_ns)
                self._jitter16 += d - ((self._jitter16 + 8) >> 4)
            self._last_interval_ns = interval
        self._last_frame_ns = now

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.session.side_connected(self)       # (the compiled pump also drops transport.request)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.session.close_frame(self, frame.get_payload_as_bytes())
            return
        if transport.is_close_frame_sent and not self.close_sent:
            # picows closed this side itself; it parses one frame ahead, so the frame
            # right before a bad one is valid (see csrc/wsrelay/pump/ for the rule).
            if frame.last_in_buffer and frame.tail_size > 0:
                self._relay(frame)
            else:
                self.dropped += 1
            self.session.protocol_error(self)
            return
        self._relay(frame)

    def _relay(self, frame: WSFrame) -> None:
        if frame.msg_type in _DATA:
            self._time_arrival(time.monotonic_ns())
        size = frame.payload_size
        self.frames += 1
        self.bytes += size
        _total_frames[self._direction] += 1
        _total_bytes[self._direction] += size
        peer = self.peer
        assert peer is not None          # the session pairs its two sides before either connects
        dst = peer.transport
        if dst is None or peer.close_sent or peer.disconnected:
            self.dropped += 1
            return
        _total_sends[self._direction] += 1
        dst.send(frame.msg_type, frame.get_payload_as_bytes(),
                 frame.fin, frame.rsv1, frame.rsv2, frame.rsv3)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        if self.is_bot:
            # The error picows keeps for a bot connection it closed itself is fetched, as in the
            # compiled pump; from Python its future is reachable only through this coroutine.
            asyncio.ensure_future(transport.wait_disconnected()).add_done_callback(_retrieve_exception)
        self.session.side_disconnected(self)

    def send_user_specific_ping(self, transport: WSTransport) -> None:
        transport.send_ping(KEEPALIVE)

    def is_user_specific_pong(self, frame: WSFrame) -> bool:
        return frame.msg_type == WSMsgType.PONG and frame.get_payload_as_bytes() == KEEPALIVE

    def pause_writing(self) -> None:
        self.session.pause_source_of(self)

    def resume_writing(self) -> None:
        self.session.resume_source_of(self)


class ResumableSide(Side):
    """The bot's side of a session with resume on (see the compiled ``ResumableSide``): its
    ``replay`` (core/replay.py) gets a copy of each data frame before ``Side``'s path."""

    def __init__(self, session: Any, is_bot: bool) -> None:
        super().__init__(session, is_bot)
        self.replay: Any = None

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in _DATA and self.replay is not None \
                and not self.replay.keep(frame.msg_type, frame.fin, frame.get_payload_as_bytes()):
            self.session.resume_buffer_full(self)
        super().on_ws_frame(transport, frame)


class ClientStream:
    """The client socket's protocol: picows gets every byte up to the client's close frame.

    Same behaviour as the compiled ``ClientStream`` (see csrc/wsrelay/pump/ for why): frame
    headers are tracked in the client's byte stream, and bytes after the first close
    frame are read and dropped instead of reaching picows' parser.
    """

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._get_buffer = protocol.get_buffer
        self._buffer_updated = protocol.buffer_updated
        self._view: memoryview | None = None      # picows' buffer, from get_buffer to buffer_updated
        self._head = bytearray()
        self._skip = 0
        self._in_close = False
        self._closed = False

    @property
    def protocol(self) -> Any:
        return self._protocol

    def get_buffer(self, size_hint: int) -> memoryview:
        if self._closed:
            return memoryview(bytearray(4096))
        self._view = self._get_buffer(size_hint)
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed:
            return
        # The transport (or _feed, or data_received) calls get_buffer before each buffer_updated.
        assert self._view is not None
        keep = self._scan(self._view[:nbytes])
        self._view = None
        self._buffer_updated(keep)

    def _scan(self, data: memoryview) -> int:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                pos += take
                self._skip -= take
                if self._skip == 0 and self._in_close:
                    self._closed = True
                    return pos
                continue
            self._head.append(data[pos])
            pos += 1
            head = self._head
            if len(head) < 2 or len(head) < header_size(head[1]):
                continue
            length = payload_length(head)
            self._in_close = (head[0] & 0x0F) == CLOSE
            self._head = bytearray()
            self._skip = length
            if length == 0 and self._in_close:
                self._closed = True
                return pos
        return pos

    def eof_received(self) -> bool | None:
        return self._protocol.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._protocol.connection_lost(exc)

    def pause_writing(self) -> None:
        self._protocol.pause_writing()

    def resume_writing(self) -> None:
        self._protocol.resume_writing()

    def data_received(self, data: bytes) -> None:      # only if a transport ignores get_buffer
        pos = 0
        while pos < len(data) and not self._closed:
            buf = self.get_buffer(len(data) - pos)
            take = min(len(buf), len(data) - pos)
            buf[:take] = data[pos:pos + take]
            self.buffer_updated(take)
            pos += take


def _retrieve_exception(future: asyncio.Future) -> None:
    """Fetch (and drop) the error picows keeps for a bot connection it closed itself."""
    if not future.cancelled():
        future.exception()
