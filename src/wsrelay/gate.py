"""The pre-upgrade gate: one bounded HTTP request head per client connection.

Every client connection starts here (an ``asyncio.Protocol``). The gate reads the request
head with h11 (size- and count-limited, with a deadline), applies the relay's one verdict
on it (handshake.py), hands it to the relay's dispatcher, and then either answers with a
plain HTTP response and closes, or — for a WebSocket session whose bot has answered
``101`` — hands the socket to picows.

picows' server-side listener factory is synchronous, but a session needs async work
(connecting to the bot) before the client may get its ``101``. So the gate pauses
while the bot is contacted, keeping (bounded) any frames the client sent early, and on
success swaps in a server-side picows ``WSProtocol`` and feeds it a *canonical* upgrade
head built from the checked request, followed by those early bytes. picows never parses
the client's own head, so its stricter parser can never refuse what the relay accepted
after a bot was contacted; it answers ``101`` with the bot's sub-protocol, and the early
frames follow through the pump.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

import h11
from picows import WSUpgradeResponse, WSUpgradeResponseWithListener
from picows.picows import WSAutoPingStrategy, WSProtocol

from .errors import RequestRefused
from .handshake import canonical_upgrade_head, check_head, declares_body

if TYPE_CHECKING:
    from .server import Relay

log = logging.getLogger("wsrelay.gate")
_picows_log = logging.LoggerAdapter(logging.getLogger("wsrelay.picows"), {})

EARLY_DATA_BYTES = 65536       # client bytes buffered while its bot is being contacted
MAX_BODY_BYTES = 8192          # the start API's JSON bodies; the platform caps body at 4 KiB


def http_response(status: int, body: str | bytes = "", headers: dict[str, str] | None = None) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    data = body.encode() if isinstance(body, str) else body
    lines = [f"HTTP/1.1 {status} {phrase}"]
    all_headers = {"Content-Type": "text/plain; charset=utf-8"} if status != 204 else {}
    all_headers.update(headers or {})
    if status != 204:                        # a 204 has no body and no Content-Length
        all_headers["Content-Length"] = str(len(data))
    else:
        data = b""
    all_headers["Connection"] = "close"
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


class Gate(asyncio.Protocol):
    """Reads one request, then answers it or hands the socket to picows."""

    # state: "head" (reading), "busy" (dispatched, waiting), "upgraded", "closed"

    def __init__(self, relay: "Relay") -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: str = "-"
        self._raw = bytearray()              # what arrived until the head was parsed
        self.early = bytearray()             # bytes after the head: early frames (bounded)
        self.body = bytearray()
        self.request: h11.Request | None = None
        self.state = "head"
        self._limits = relay.config.relay
        self._max_head = self._limits.max_request_head_bytes
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_head)
        self._received = 0                   # bytes fed to h11 so far
        self._timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if peername else "-"
        self._timer = asyncio.get_running_loop().call_later(
            self._limits.handshake_timeout, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        if self.state == "head":
            self._received += len(data)
            if self.request is None:
                self._raw += data            # bounded: over max_head with no head is a 431
            self._h11.receive_data(data)
            self._advance()
        elif self.state == "busy":
            self._keep_early(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.state in ("head", "busy"):
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

    def _buffered(self) -> int:
        return len(self._h11.trailing_data[0])

    def _advance(self) -> None:
        while self.state == "head":
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint or 400
                if status == 431:
                    self._refuse_head_too_large()
                else:
                    self.refuse(status, f"{HTTPStatus(status).phrase}: malformed HTTP request",
                                reason=f"malformed HTTP request: {exc}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                # h11 refuses an incomplete head over max_head itself (431 above).
                return
            if isinstance(event, h11.Request):
                if not self._take_head(event):
                    return
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > MAX_BODY_BYTES:
                    self.refuse(413, "Content Too Large", reason="body too large")
                    return
            elif isinstance(event, h11.EndOfMessage):
                trailing, _ = self._h11.trailing_data
                self._h11 = None
                self._dispatch(trailing)
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _take_head(self, request: h11.Request) -> bool:
        """Check a complete head before anything else happens; False when refused."""
        self.request = request
        head_size = self._received - self._buffered()
        raw, self._raw = self._raw, bytearray()
        if head_size > self._max_head:
            self._refuse_head_too_large()
            return False
        try:
            check_head(bytes(raw[:head_size]), request.headers)
        except RequestRefused as exc:
            self.refuse(exc.status, exc.public_reason, reason=str(exc))
            return False
        length = _content_length(request)
        if length is not None and length > MAX_BODY_BYTES:
            self.refuse(413, "Content Too Large", reason=f"body of {length} bytes")
            return False
        if request.method != b"POST" and declares_body(request.headers):
            # A GET (upgrade) with a body is a request-smuggling shape: refuse it now
            # rather than wait for a body that may never come.
            self.refuse(400, "Bad Request: this request must not have a body",
                        reason=f"{request.method.decode('latin-1')} request with a body")
            return False
        return True

    def _refuse_head_too_large(self) -> None:
        self.refuse(431, f"Request Header Fields Too Large: the request head is over {self._max_head} bytes",
                    reason="request head too large")

    def _dispatch(self, trailing: bytes) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = "busy"
        if trailing:
            self._keep_early(trailing)
        try:
            self.relay.dispatch(self)
        except Exception:
            log.exception("dispatching a request failed")
            self.refuse(500, "Internal Server Error", reason="internal error")

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.state == "head":
            self.refuse(408, "Request Timeout: the request head did not arrive in time",
                        reason="handshake timeout")

    # -- answering ----------------------------------------------------------------------

    def respond(self, status: int, body: str = "", headers: dict[str, str] | None = None) -> None:
        """Send a complete HTTP response and close the connection."""
        if self.state in ("closed", "upgraded") or self.transport is None:
            return
        self.transport.write(http_response(status, body, headers))
        self._close()

    def refuse(self, status: int, public_reason: str, *, reason: str,
               headers: dict[str, str] | None = None) -> None:
        """Refuse the request before any upgrade: answer ``status``, log ``reason``."""
        if self.state in ("closed", "upgraded"):
            return
        self.relay.on_refused(self, status, reason)
        self.respond(status, public_reason + "\n", headers)

    def _forget_request(self) -> None:
        """Drop what only the handshake needed: an idle session keeps a few hundred bytes here."""
        self.early = bytearray()
        self.body = bytearray()
        self._h11 = None
        self.request = None
        self.task = None

    def _close(self) -> None:
        self.state = "closed"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()

    def attach(self, client_side, subprotocol: str | None, key: str) -> bool:
        """Hand the socket to picows with ``client_side`` as listener and answer ``101``.

        Called synchronously from the bot side's ``on_ws_connected``, so the client is
        linked before the bot's first frame (which may share a read with its ``101``).
        picows is fed the canonical head for the client's checked ``key``, then the early
        bytes. Returns False when the client is gone or its handshake did not complete.
        """
        if self.state != "busy":
            return False
        extra = {"Sec-WebSocket-Protocol": subprotocol} if subprotocol else None
        response = WSUpgradeResponse.create_101_response(extra)
        limits = self._limits
        protocol = WSProtocol(
            None, None, False,
            lambda request: WSUpgradeResponseWithListener(response, client_side),
            _picows_log,
            True,                      # disconnect_on_exception
            None,                      # handshake timeout: the canonical head is complete
            limits.keepalive_interval > 0,  # the relay's own keepalive pings, if configured
            limits.keepalive_interval or 20, limits.keepalive_timeout,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            False,                     # auto-pong off: pings are relayed
            limits.max_frame_size,
            None,
            limits.read_buffer_size,
        )
        self.state = "upgraded"
        transport = self.transport
        stream = self.relay.pump.ClientStream(protocol)    # stops at the client's close frame
        transport.set_protocol(stream)
        protocol.connection_made(transport)
        self._feed(protocol, canonical_upgrade_head(key))    # HTTP: straight to picows
        if protocol.listener is not client_side:
            # Cannot happen for a head the relay built; never leave a socket half-open.
            log.error("picows refused the relay's canonical upgrade head; dropping the client")
            transport.abort()
            self._forget_request()
            return False
        self._feed(stream, self.early)                       # frames: through the stream
        self._forget_request()
        if client_side.transport is None or transport.is_closing():
            return False
        transport.resume_reading()
        return True

    def _feed(self, protocol, data) -> None:
        """Replay ``data`` into ``protocol`` as if the socket had just read it."""
        view = memoryview(data)
        pos = 0
        transport = self.transport
        while pos < len(view) and not transport.is_closing():
            buffer = protocol.get_buffer(-1)
            n = min(len(buffer), len(view) - pos)
            buffer[:n] = view[pos:pos + n]
            protocol.buffer_updated(n)
            pos += n
        view.release()


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
