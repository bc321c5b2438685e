"""The two linked sides of one relayed session: close handshake and flow control.

The pump (compiled or pure) moves frames; everything that happens once per session
lands here, in one place:

* **Flow control.** When a side's socket write buffer passes the high-water mark, asyncio
  calls ``pause_writing`` on it; we stop *reading* the other side until the buffer drains
  below the low-water mark (``resume_writing``). Each direction thus holds at most about
  one high-water mark plus one read buffer: a slow peer costs bounded memory and nothing
  is dropped.
* **A paused side is still watched.** While a side's reading is paused its EOF or reset
  would go unseen, so every ``WATCH_SECONDS`` its socket is polled: a peer that has gone
  is read again (what it left is bounded by the kernel's receive buffer), so its close or
  EOF ends the session as usual. A destination that takes nothing for ``stall_timeout``
  seconds is *stalled*: its peer gets 1011 ("bot stalled") or 1001 ("client stalled"),
  and the stalled side is dropped after ``close_timeout``.
* **Close.** A CLOSE from one side is forwarded byte for byte to the other; the other's
  reply is forwarded back; a side whose close handshake is complete (sent and received)
  is disconnected. A side that vanishes without a CLOSE gets its peer closed with 1011
  (bot lost) or 1001 (client lost). Every close waits at most ``close_timeout`` seconds
  for its reply, then both sockets are aborted.
* **End.** When both sockets are gone, ``on_end(pair)`` is called exactly once.
"""

from __future__ import annotations

import asyncio
import select
import struct
import time
from typing import Any, Callable

from picows import WSCloseCode

CLIENT_LOST = (WSCloseCode.GOING_AWAY, "client lost")     # 1001, sent to the bot
BOT_LOST = (WSCloseCode.INTERNAL_ERROR, "bot lost")       # 1011, sent to the client
WATCH_SECONDS = 1.0          # how often the socket of a side whose reading is paused is polled
# poll() flags meaning "the peer has closed or reset this socket"; POLLRDHUP is Linux's.
_GONE = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR


def legal_close_code(code: int) -> bool:
    """May ``code`` stand in a close frame on the wire (RFC 6455 §7.4)?

    1000-1003 and 1007-1014 are defined for use, 3000-4999 are for libraries and
    applications. 1004 is reserved, and 1005, 1006 and 1015 must never be sent.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_code_of(payload: bytes) -> int | None:
    """The status code in a CLOSE payload, or None when it carries none."""
    if len(payload) >= 2:
        return struct.unpack("!H", payload[:2])[0]
    return None


class SessionPair:
    """Links a client ``Side`` and a bot ``Side`` of one pump implementation."""

    def __init__(self, pump: Any, *, on_bot_open: Callable[["SessionPair"], bool],
                 on_end: Callable[["SessionPair"], None], close_timeout: float,
                 write_buffer_high: int, write_buffer_low: int, stall_timeout: float) -> None:
        self.client = pump.Side(self, False)
        self.bot = pump.Side(self, True)
        self.client.peer = self.bot
        self.bot.peer = self.client
        self._on_bot_open = on_bot_open
        self._on_end = on_end
        self._close_timeout = close_timeout
        self._high = write_buffer_high
        self._low = write_buffer_low
        self._close_timer: asyncio.TimerHandle | None = None
        self._stall_timeout = stall_timeout
        self._paused_since: dict[bool, float] = {}    # is_bot of a paused source -> loop time
        self._watch_timer: asyncio.TimerHandle | None = None
        self._ended = False
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        # What each side sent us in its CLOSE (None: it sent none) and what we sent it.
        self.close_from = {"client": None, "bot": None}
        self.close_to = {"client": None, "bot": None}
        self.first_closer: str | None = None      # "client", "bot" or "relay"
        self.end_reason: str | None = None

    # -- events from the pump ------------------------------------------------------

    def side_connected(self, side) -> None:
        """A side's WebSocket is open: bound its write buffer; on the bot's, attach the client."""
        side.transport.underlying_transport.set_write_buffer_limits(self._high, self._low)
        if side.is_bot and not self._on_bot_open(self):
            # The client went away while the bot was answering.
            self.client.disconnected = True
            self._send_close(self.bot, *CLIENT_LOST)
            self._arm_close_timer()
            side.transport.disconnect()

    def close_frame(self, side, payload: bytes) -> None:
        """``side`` sent a CLOSE: forward it, or finish the handshake it answers."""
        if side.transport.is_close_frame_sent and not side.close_sent:
            self.protocol_error(side)      # picows closed this side itself: this is the reply
        side.close_received = True
        name = _name(side)
        code = close_code_of(payload)
        self.close_from[name] = code
        if self.first_closer is None:
            self.first_closer = name
        peer = side.peer
        if code is not None and not legal_close_code(code):
            # picows refuses most illegal codes itself; 0, 1006 and 5000 and up it lets
            # through. Such a close is a protocol error like any other, never relayed.
            self._illegal_close(side, code)
            return
        if not peer.close_sent and not peer.disconnected and peer.transport is not None:
            peer.transport.send(0x8, payload)     # exactly as received
            self._close_sent_to(peer, close_code_of(payload))
        self._disconnect_finished()

    def _illegal_close(self, side, code: int) -> None:
        name = _name(side)
        if self.first_closer == name and self.end_reason is None:     # it closed first
            self.first_closer = "relay"
            self.end_reason = f"protocol error ({name})"
        if not side.close_sent and not side.disconnected:
            self._send_close(side, WSCloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
        peer = side.peer
        if not peer.close_sent and not peer.disconnected and peer.transport is not None:
            self._send_close(peer, WSCloseCode.PROTOCOL_ERROR, f"{name} broke the protocol")
        self._disconnect_finished()

    def protocol_error(self, side) -> None:
        """picows itself closed ``side``: a protocol error, or no pong to a keepalive ping.

        The peer is told why: the same code for a protocol error (1002, 1007, 1009), and
        1011/1001 (bot/client lost) when the side stopped answering keepalive pings.
        """
        sent = side.transport.close_handshake.sent if side.transport.close_handshake else None
        code = int(sent.code) if sent is not None else int(WSCloseCode.PROTOCOL_ERROR)
        self._close_sent_to(side, code)
        if code == WSCloseCode.GOING_AWAY:
            what = "keepalive timeout"
            peer_code, peer_reason = BOT_LOST if side.is_bot else CLIENT_LOST
        else:
            what = "protocol error"
            peer_code, peer_reason = code, f"{_name(side)} broke the protocol"
        if self.first_closer is None:
            self.first_closer = "relay"
            self.end_reason = f"{what} ({_name(side)})"
        peer = side.peer
        if not peer.close_sent and not peer.disconnected and peer.transport is not None:
            self._send_close(peer, peer_code, peer_reason)
        self._arm_close_timer()

    def side_disconnected(self, side) -> None:
        """``side``'s socket is gone: close its peer if that was abrupt; end when both are gone."""
        peer = side.peer
        if side.is_bot and side.transport is not None:
            _collect_disconnect_error(side.transport)
        if side.transport is not None and side.transport.is_close_frame_sent and not side.close_sent:
            self.protocol_error(side)
        if not side.close_received and not side.close_sent and self.first_closer is None:
            self.end_reason = "bot lost" if side.is_bot else "client lost"
        self._paused_since.pop(side.is_bot, None)
        if not peer.disconnected and peer.transport is not None:
            if not peer.close_sent:
                code, reason = BOT_LOST if side.is_bot else CLIENT_LOST
                self._send_close(peer, code, reason)
                peer.transport.disconnect()
            # A graceful disconnect waits for the peer to take its write buffer, which a
            # peer that stopped reading never does: bound it.
            self._arm_close_timer()
        self._maybe_end()

    def pause_source_of(self, side) -> None:
        """``side`` cannot take more: stop reading its peer, and start watching the peer."""
        source = side.peer
        if source.transport is None or source.disconnected or source.is_bot in self._paused_since:
            return
        source.transport.underlying_transport.pause_reading()
        self._paused_since[source.is_bot] = asyncio.get_running_loop().time()
        self._arm_watch()

    def resume_source_of(self, side) -> None:
        """``side`` drained below the low-water mark: read its peer again."""
        self._resume(side.peer)

    def _resume(self, source) -> None:
        if self._paused_since.pop(source.is_bot, None) is None:
            return
        if source.transport is not None and not source.disconnected:
            source.transport.underlying_transport.resume_reading()

    def _arm_watch(self) -> None:
        if self._watch_timer is None and not self._ended:
            interval = min(WATCH_SECONDS, self._stall_timeout)
            self._watch_timer = asyncio.get_running_loop().call_later(interval, self._watch)

    def _watch(self) -> None:
        """Look at every paused source: gone (read it again), or its destination stalled."""
        self._watch_timer = None
        if self._ended:
            return
        now = asyncio.get_running_loop().time()
        for source in (self.client, self.bot):
            since = self._paused_since.get(source.is_bot)
            if since is None:
                continue
            if _closed_by_peer(source.transport):
                self._resume(source)      # its close frame or EOF is read, and ends it as usual
            elif now - since >= self._stall_timeout:
                self._stalled(source.peer)
        if self._paused_since:
            self._arm_watch()

    def _stalled(self, side) -> None:
        """``side`` took nothing for ``stall_timeout`` seconds: end the session."""
        name = _name(side)
        if self.first_closer is None:
            self.first_closer = "relay"
            self.end_reason = f"stalled ({name})"
        why = f"{name} stalled: it read nothing for {self._stall_timeout:g}s"
        source = side.peer
        if not source.close_sent and not source.disconnected and source.transport is not None:
            code = WSCloseCode.INTERNAL_ERROR if side.is_bot else WSCloseCode.GOING_AWAY
            self._send_close(source, code, why)
        if not side.close_sent and not side.disconnected and side.transport is not None:
            self._send_close(side, WSCloseCode.GOING_AWAY, why)
        self._arm_close_timer()

    # -- commands from the relay ---------------------------------------------------

    def close(self, client: tuple[int, str], bot: tuple[int, str], reason: str) -> None:
        """The relay ends the session (time limit, shutdown): close both sides."""
        if self.first_closer is None:
            self.first_closer = "relay"
        self.end_reason = reason
        for side, (code, text) in ((self.client, client), (self.bot, bot)):
            if not side.close_sent and not side.disconnected and side.transport is not None:
                self._send_close(side, code, text)
        self._arm_close_timer()

    def abort(self) -> None:
        """Drop both sockets at once (second shutdown signal, close timeout)."""
        for side in (self.client, self.bot):
            if side.transport is not None and not side.disconnected:
                side.transport.disconnect(False)
            elif side.transport is None:
                side.disconnected = True
        self._maybe_end()

    @property
    def ended(self) -> bool:
        return self._ended

    # -- internals -----------------------------------------------------------------

    def _send_close(self, side, code: int, reason: str) -> None:
        side.transport.send_close(code, reason.encode())
        self._close_sent_to(side, int(code))

    def _close_sent_to(self, side, code: int | None) -> None:
        """Note a close sent to ``side``; read its peer again if ``side`` had paused it.

        Nothing more is relayed to a side that was sent a close, so reading its peer costs
        no memory now, and the peer's own close or EOF must be seen.
        """
        side.close_sent = True
        self.close_to[_name(side)] = code
        self._resume(side.peer)

    def _disconnect_finished(self) -> None:
        pending = False
        for side in (self.client, self.bot):
            if side.disconnected or side.transport is None:
                continue
            if side.close_sent and side.close_received:
                side.transport.disconnect()
            else:
                pending = True
        if pending:
            self._arm_close_timer()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and not self._ended:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(self._close_timeout, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._close_timer = None
        if not self._ended:
            if self.end_reason is None:
                self.end_reason = "close timeout"
            self.abort()

    def _maybe_end(self) -> None:
        if self._ended:
            return
        client_gone = self.client.disconnected or self.client.transport is None
        if self.bot.disconnected and client_gone:
            self._ended = True
            self.ended_at = time.monotonic()
            for timer in (self._close_timer, self._watch_timer):
                if timer is not None:
                    timer.cancel()
            self._close_timer = self._watch_timer = None
            self._paused_since.clear()
            self._on_end(self)


def _name(side) -> str:
    return "bot" if side.is_bot else "client"


def _closed_by_peer(transport) -> bool:
    """True when the peer of ``transport``'s socket has shut it down or reset it.

    Asked only of a socket whose reading is paused (so asyncio would not notice), at most
    once a second per paused session: one ``poll`` with a zero timeout.
    """
    if transport is None:
        return True
    sock = transport.underlying_transport.get_extra_info("socket")
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), _GONE)
    return any(events & _GONE for _, events in poller.poll(0))


def _collect_disconnect_error(transport) -> None:
    """Retrieve the error picows keeps for a bot transport that it closed itself.

    After a protocol error on its client side (our bot side), picows stores the error in
    the transport's disconnect future, which nobody awaits: asyncio would print a
    multi-line "Future exception was never retrieved" outside the structured log. The
    session already logged the outcome, so the error is fetched here and dropped. It
    costs one short task per ended bot connection, none while a session lives.
    """
    task = asyncio.ensure_future(transport.wait_disconnected())
    task.add_done_callback(_retrieve_exception)


def _retrieve_exception(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()
