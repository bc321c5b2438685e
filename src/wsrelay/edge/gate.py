"""The pre-upgrade gate: one bounded HTTP request per client connection.

Every client connection starts here (an ``asyncio.Protocol``). The gate reads the request
with ``RequestReader`` (size- and count-limited, with a deadline), which applies the
relay's one verdict on a head (core/upgrade.py), and hands the complete request to the
``dispatch`` callable it was given. Then it either answers with a plain HTTP response and
closes, or, for a WebSocket session whose bot has answered ``101``, passes the socket to
picows (``hand_over``, see handover.py), with the frames the client sent early.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import h11

from ..config import RelayConfig
from ..errors import RequestRefused
from .handover import hand_over
from .http import RequestReader, http_response

log = logging.getLogger("wsrelay.gate")

EARLY_DATA_BYTES = 65536       # client bytes kept while its bot is being contacted
MAX_BODY_BYTES = 8192          # the start API's JSON bodies; the platform caps body at 4 KiB


class Gate(asyncio.Protocol):
    """Reads one request, then answers it or hands the socket to picows.

    ``state``: "head" (reading), "busy" (dispatched, waiting), "upgraded", "closed".
    """

    def __init__(self, limits: RelayConfig, *, dispatch: Callable[["Gate"], None],
                 on_refused: Callable[["Gate", int, str], None], stream_class: Any) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: str = "-"
        self.early = bytearray()             # bytes after the head: early frames (bounded)
        self.request: h11.Request | None = None
        self.body = b""
        self.state = "head"
        self.task: asyncio.Task | None = None
        self._limits = limits
        self._dispatch_request = dispatch
        self._on_refused = on_refused
        self._stream_class = stream_class
        self._reader: RequestReader | None = RequestReader(limits.max_request_head_bytes, MAX_BODY_BYTES)
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if peername else "-"
        self._timer = asyncio.get_running_loop().call_later(
            self._limits.handshake_timeout, self._head_timed_out)

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

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        self._cancel_timer()
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
        self._on_refused(self, status, reason)
        self.respond(status, public_reason + "\n", headers)

    def attach(self, client_side, subprotocol: str | None, key: str) -> bool:
        """Hand the socket to picows with ``client_side`` as listener and answer ``101``.

        Called synchronously from the bot side's ``on_ws_connected``, so the client is
        linked before the bot's first frame (which may share a read with its ``101``).
        Returns False when the client is gone or its handshake did not complete.
        """
        if self.state != "busy" or self.transport is None:
            return False
        self.state = "upgraded"
        early, self.early = self.early, bytearray()
        # Drop what only the handshake needed: an idle session keeps little here.
        self.request = None
        self.body = b""
        self.task = None
        return hand_over(self.transport, client_side, stream_class=self._stream_class,
                         subprotocol=subprotocol, key=key, early=early, limits=self._limits)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        self.state = "closed"
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()
