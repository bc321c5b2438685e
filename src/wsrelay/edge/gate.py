"""The pre-upgrade gate: one bounded HTTP request per client connection.

Every client connection starts here (an ``asyncio.Protocol``). The gate reads the request
with ``RequestReader`` (size- and count-limited, with a deadline), which applies the
relay's one verdict on a head (core/upgrade.py), and hands the complete request to the
``dispatch`` callable it was given. Then it either answers with a plain HTTP response and
closes, or, for a WebSocket session whose bot has answered ``101``, passes the socket to
picows (``hand_over``, see handover.py), with the frames the client sent early.

A provider endpoint (telephony/hold.py) upgrades first: the gate writes the ``101`` itself and
keeps every byte that follows, untouched, while the first messages are read from them
(``hold``); a refusal then is a close frame (``refuse_held``), and an accepted session is
handed to picows with all those bytes, so the held frames reach the bot first, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from ..config import RelayConfig
from ..core.frames import CLOSE, FrameScanner, accept_value, close_frame, switching_protocols
from ..errors import RequestRefused, SessionRefused
from .deadlines import Deadlines
from .handover import hand_over
from .http import Request, RequestReader, http_response, response_head

log = logging.getLogger("wsrelay.gate")

EARLY_DATA_BYTES = 65536       # client bytes kept while its bot is being contacted
LINGER_FRAME_BYTES = 1 << 20  # after a refusal: a bigger frame from the client just ends it
MAX_BODY_BYTES = 8192          # the start API's JSON bodies; the platform caps body at 4 KiB

BodyLimit = Callable[[Request], "int | None"]             # a request's own body bound (None: the default)
ErrorBody = Callable[["Request | None", int, str], "tuple[str, dict[str, str]] | None"]


def _upgraded(*args: Any) -> None:
    """What an upgraded gate calls instead of the relay: nothing (it reads no more requests)."""


class Gate(asyncio.Protocol):
    """Reads one request, then answers it or hands the socket to picows.

    ``state``: "head" (reading), "busy" (dispatched, waiting), "holding" (upgraded by the
    gate, first frames held), "lingering" (a close sent after the upgrade, waiting for the
    client's), "upgraded" (picows has the socket), "closed".
    """

    def __init__(self, limits: RelayConfig, *, dispatch: Callable[["Gate"], None],
                 on_refused: Callable[["Gate", int, str], None], stream_class: Any,
                 deadlines: Deadlines, body_limit: BodyLimit | None = None,
                 error_body: ErrorBody | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: str = "-"
        self.early = bytearray()             # bytes after the head: early frames (bounded)
        self.request: Request | None = None
        self.body = b""
        self.state = "head"
        self.task: asyncio.Task | None = None
        # Provider endpoints (``hold``): time.monotonic_ns(), the pump's clock, when the gate
        # wrote the client's 101, and when the client's first bytes after it arrived.
        self.upgraded_ns = 0
        self.first_held_ns = 0
        self._limits = limits
        self._dispatch_request = dispatch
        self._on_refused = on_refused
        self._stream_class = stream_class
        # ``body_limit``: the endpoint's own bound for a request that announces a body (the
        # Session API's); ``error_body``: how a refusal is written when the endpoint says (JSON).
        self._reader: RequestReader | None = RequestReader(limits.max_request_head_bytes, MAX_BODY_BYTES,
                                                           body_limit)
        self._error_body = error_body
        # The head's deadline, then a refused held client's linger: on the relay's one
        # deadline wheel (edge/deadlines.py), not a loop timer per connection.
        self._deadlines = deadlines
        self._timer: tuple[int, str] | None = None      # (wheel handle, name)
        self._on_held: Callable[[], None] | None = None
        self._linger_scanner: FrameScanner | None = None
        self._linger_pending = bytearray()

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if peername else "-"
        self._start_timer(self._limits.handshake_timeout, "head")

    def data_received(self, data: bytes) -> None:
        if self.state == "head" and self._reader is not None:
            try:
                complete = self._reader.feed(data)
            except RequestRefused as exc:
                self.request = self._reader.request
                self.refuse(exc.status, exc.public_reason, reason=str(exc), headers=exc.headers)
                return
            self.request = self._reader.request
            if complete:
                self._dispatch()
        elif self.state == "busy":
            self._keep_early(data)
        elif self.state == "holding":
            if not self.first_held_ns:
                self.first_held_ns = time.monotonic_ns()
            self._keep_early(data)
            if self._on_held is not None:
                self._on_held()
        elif self.state == "lingering":
            self._linger(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        self._cancel_timer()
        if self.state in ("head", "busy", "holding", "lingering"):
            self.state = "closed"
            if self.task is not None and not self.task.done():
                self.task.cancel()

    # -- reading ------------------------------------------------------------------------

    def _keep_early(self, data: bytes) -> None:
        """Frames from a client that does not wait for its 101: kept for the hand-over.

        Bounded: past ``EARLY_DATA_BYTES`` the gate stops reading until the upgrade, so
        the kernel's buffers (and TCP flow control) hold the rest.
        """
        self.early += data
        if len(self.early) > EARLY_DATA_BYTES and self.transport is not None:
            self.transport.pause_reading()

    def _dispatch(self) -> None:
        reader, self._reader = self._reader, None
        assert reader is not None
        self._cancel_timer()
        self.state = "busy"
        self.body = bytes(reader.body)
        if reader.trailing:
            self._keep_early(reader.trailing)
        try:
            self._dispatch_request(self)
        except Exception:
            log.exception("dispatching a request failed")
            self.refuse(500, "Internal Server Error", reason="internal error")

    def deadline_passed(self, name: str) -> None:
        """The head did not arrive in time, or a refused held client did not answer its close."""
        self._timer = None
        if name == "head" and self.state == "head":
            self.refuse(408, "Request Timeout: the request head did not arrive in time",
                        reason="handshake timeout")
        elif name == "linger":
            self._close()

    # -- answering ----------------------------------------------------------------------

    def respond(self, status: int, body: str = "", headers: dict[str, str] | None = None) -> None:
        """Send a complete HTTP response and close the connection."""
        if self.state in ("closed", "upgraded") or self.transport is None:
            return
        self.transport.write(http_response(status, body, headers))
        self._close()

    def refuse(self, status: int, public_reason: str, *, reason: str,
               headers: dict[str, str] | None = None) -> None:
        """Refuse the request before any upgrade: answer ``status``, log ``reason``.

        The answer is ``public_reason`` as text, or what ``error_body`` makes of it for the
        request's endpoint (the Session API's JSON)."""
        if self.state in ("closed", "upgraded"):
            return
        self._on_refused(self, status, reason)
        written = self._error_body(self.request, status, public_reason) if self._error_body is not None else None
        if written is not None:
            body, own = written
            self.respond(status, body, {**own, **(headers or {})})
            return
        self.respond(status, public_reason + "\n", headers)

    def respond_raw(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        """Send ``status``, ``headers`` exactly as given (repeats kept) and ``body``, and close:
        a bot's answer passed on (the caller has set its Content-Length)."""
        if self.state in ("closed", "upgraded") or self.transport is None:
            return
        self.transport.write(response_head(status, headers) + body)
        self._close()

    def hold(self, key: str, on_held: Callable[[], None]) -> None:
        """Answer ``101`` now and keep what follows in ``early``; ``on_held`` after each read.

        The ``101`` carries no sub-protocol: no bot has chosen one yet. Its time is kept
        (``upgraded_ns``): the session's first-frame times count from it.
        """
        if self.state != "busy" or self.transport is None:
            return
        self.state = "holding"
        self._on_held = on_held
        # Taken before the write: the client cannot have its 101 earlier, so a first-frame time
        # is never shorter than the client's own wait (a relay descheduled right after the write
        # would otherwise stamp a later time than the client saw).
        self.upgraded_ns = time.monotonic_ns()
        self.transport.write(switching_protocols(accept_value(key)))
        if self.early:                # sent with the head, before the 101: a first frame at 0 ms
            self.first_held_ns = self.upgraded_ns
            on_held()

    def refuse_held(self, code: int, reason: str, linger: float) -> None:
        """Close a held client with ``code`` and ``reason``; drop it when it answers or after ``linger``.

        The client's own close (or its EOF) ends it: closing the socket while the client
        still sends could reset the connection and lose the close frame before it is read.
        """
        if self.state != "holding" or self.transport is None:
            return
        self.state = "lingering"
        self._on_held = None
        held, self.early = self.early, bytearray()
        self.request = None
        self.transport.write(close_frame(code, reason))
        self.transport.resume_reading()
        self._linger_scanner = FrameScanner(max_payload=LINGER_FRAME_BYTES)
        self._cancel_timer()
        self._start_timer(linger, "linger")
        self._linger(held)            # the client's close may already be among the held bytes

    def _linger(self, data: bytes | bytearray) -> None:
        """Read and drop; close once the client's close frame has passed (or on nonsense)."""
        scanner = self._linger_scanner
        if scanner is None:
            return
        pending = self._linger_pending
        pending += data
        scanner.pos = 0
        try:
            while (frame := scanner.next(pending, want_payload=False)) is not None:
                if frame.opcode == CLOSE:
                    self._close()
                    return
        except SessionRefused:        # nonsense or a huge frame: no close is coming
            self._close()
            return
        del pending[:scanner.pos]     # keep only an unfinished frame (at most LINGER_FRAME_BYTES)

    def attach(self, client_side, subprotocol: str | None, key: str, resume_token: str | None = None) -> bool:
        """Hand the socket to picows with ``client_side`` as listener and answer ``101``.

        Called synchronously from the bot side's ``on_ws_connected``, so the client is
        linked before the bot's first frame (which may share a read with its ``101``).
        Returns False when the client is gone or its handshake did not complete.
        ``resume_token``: the session's next resume token, for its ``101`` (docs/resume.md).
        """
        if self.state not in ("busy", "holding") or self.transport is None:
            return False
        silent = self.state == "holding"         # the client has its 101 already
        self._on_held = None
        self.state = "upgraded"
        early, self.early = self.early, bytearray()
        # Drop what only the handshake needed: an idle session keeps little here.
        self.request = None
        self.body = b""
        self.task = None
        # uvloop keeps the transport's first protocol's ``data_received`` (this gate's) after
        # ``set_protocol``, so an upgraded session keeps this object: it holds no more of the
        # relay than it must (two bound methods, 128 bytes a session, benchmarks/session_memory.py).
        self._dispatch_request = self._on_refused = _upgraded
        return hand_over(self.transport, client_side, stream_class=self._stream_class,
                         subprotocol=subprotocol, key=key, early=early, limits=self._limits,
                         silent_101=silent, resume_token=resume_token)

    def hand_off(self) -> tuple[Any, bytes] | None:
        """Give up the client's socket, not upgraded, with the bytes that followed its head (a
        resume carried to another relay: edge/hop.py sets its protocol). None when it is gone."""
        if self.state != "busy" or self.transport is None:
            return None
        self.state = "upgraded"                  # it reads no more requests, and answers none
        early, self.early = bytes(self.early), bytearray()
        self.request = None
        self.task = None
        self._dispatch_request = self._on_refused = _upgraded
        return self.transport, early

    def _start_timer(self, seconds: float, name: str) -> None:
        self._timer = (self._deadlines.add(seconds, self, name), name)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            handle, name = self._timer
            self._timer = None
            self._deadlines.remove(handle, self, name)

    def _close(self) -> None:
        self.state = "closed"
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()
