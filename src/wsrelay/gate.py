"""The pre-upgrade gate: one bounded HTTP request head per client connection.

Every client connection starts here (an ``asyncio.Protocol``). The gate reads the request
head with h11 (size-limited, with a deadline), hands it to the relay's dispatcher, and
then either answers with a plain HTTP response and closes, or — for a WebSocket session
whose bot has answered ``101`` — hands the socket to picows.

picows' server-side listener factory is synchronous, but a session needs async work
(connecting to the bot) before the client may get its ``101``. So the gate keeps every
byte it read, pauses reading while the bot is contacted, and on success swaps in a
server-side picows ``WSProtocol`` and *replays* those bytes into it: picows parses the
same head, answers ``101`` with the bot's sub-protocol, and any frames the client sent
early follow through the pump.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

import h11
from picows import WSUpgradeResponse, WSUpgradeResponseWithListener
from picows.picows import WSAutoPingStrategy, WSProtocol

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
    all_headers = {"Content-Type": "text/plain; charset=utf-8"}
    all_headers.update(headers or {})
    all_headers["Content-Length"] = str(len(data))
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
        self.raw = bytearray()
        self.body = bytearray()
        self.request: h11.Request | None = None
        self.state = "head"
        self._limits = relay.config.relay
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_request_head_bytes)
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
        if self.state != "head":
            if self.state == "busy":
                # Early frames from a client that does not wait for its 101: kept for the
                # replay, bounded; past the bound we stop reading until the upgrade.
                self.raw += data
                if len(self.raw) > EARLY_DATA_BYTES:
                    self.transport.pause_reading()
            return
        self.raw += data
        if len(self.raw) > self._limits.max_request_head_bytes + MAX_BODY_BYTES:
            self.refuse(431, "Request Header Fields Too Large", reason="request too large")
            return
        if self.request is None:
            end = self.raw.find(b"\r\n\r\n")
            head_len = end + 4 if end >= 0 else len(self.raw)
            if head_len > self._limits.max_request_head_bytes:
                self.refuse(431, "Request Header Fields Too Large: the request head is over "
                            f"{self._limits.max_request_head_bytes} bytes",
                            reason="request head too large")
                return
        self._h11.receive_data(data)
        self._advance()

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

    def _advance(self) -> None:
        while self.state == "head":
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint or 400
                self.refuse(status, f"{HTTPStatus(status).phrase}: malformed HTTP request",
                            reason=f"malformed HTTP request: {exc}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request = event
                length = _content_length(event)
                if length is not None and length > MAX_BODY_BYTES:
                    self.refuse(413, "Content Too Large", reason=f"body of {length} bytes")
                    return
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > MAX_BODY_BYTES:
                    self.refuse(413, "Content Too Large", reason="body too large")
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._dispatch()
                return
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _dispatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.state = "busy"
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
        self.raw = bytearray()
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

    @property
    def waiting(self) -> bool:
        """True while the client is still there and waiting for its answer."""
        return self.state == "busy"

    def attach(self, client_side, subprotocol: str | None) -> bool:
        """Hand the socket to picows with ``client_side`` as listener and answer ``101``.

        Called synchronously from the bot side's ``on_ws_connected``, so the client is
        linked before the bot's first frame (which may share a read with its ``101``).
        Returns False when the client is gone or its handshake did not complete.
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
            None,                      # handshake timeout: the gate already enforced one
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
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        view = memoryview(self.raw)
        pos = 0
        while pos < len(view) and not transport.is_closing():
            buffer = protocol.get_buffer(-1)
            n = min(len(buffer), len(view) - pos)
            buffer[:n] = view[pos:pos + n]
            protocol.buffer_updated(n)
            pos += n
        view.release()
        self._forget_request()
        if client_side.transport is None:
            return False
        if transport.is_closing():
            return False
        transport.resume_reading()
        return True


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
