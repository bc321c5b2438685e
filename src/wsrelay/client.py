"""A client of a relay session that comes back after losing its network (docs/resume.md).

``ResumingClient`` connects to a relay's generic endpoint (picows, asyncio), counts the
messages it receives from the bot, keeps the resume token of its latest ``101``
(``X-Wsrelay-Resume``), and when its connection is lost without a close frame reconnects
with ``?resume=<token>&received=<n>``, backing off between attempts, until it is back or the
relay says the session cannot be resumed (403, 404, 409) or ``give_up_after`` passes. Each
message reaches ``on_message`` once, in order, across any number of reconnects.

Nothing of the relay is imported: it is a client, usable against any relay.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

RESUME_HEADER = "X-Wsrelay-Resume"
FINAL_STATUSES = (400, 403, 404, 409)   # a retry cannot help


class ResumeFailed(Exception):
    """The session could not be resumed; ``status`` is the relay's answer (None: no answer in time)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class _Listener(WSListener):
    """One connection's listener: assembles messages, counts them, tells the client of the end."""

    def __init__(self, client: "ResumingClient") -> None:
        self.client = client
        self.parts: list[bytes] = []
        self.opcode = WSMsgType.TEXT
        self.close_received = False

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.CLOSE:
            self.close_received = True
            if not transport.is_close_frame_sent:
                transport.send(WSMsgType.CLOSE, frame.get_payload_as_bytes())
            transport.disconnect()
            return
        if kind == WSMsgType.PING:
            transport.send_pong(frame.get_payload_as_bytes())
            return
        if kind not in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            return
        if kind != WSMsgType.CONTINUATION:
            self.opcode, self.parts = kind, []
        self.parts.append(frame.get_payload_as_bytes())
        if frame.fin:
            payload, self.parts = b"".join(self.parts), []
            self.client._message(self.opcode, payload)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.client._lost(self)


class ResumingClient:
    """A session through a relay that survives network loss; see the module docstring.

    ``url``: the session's ``ws://`` or ``wss://`` URL (its query may hold ``token`` and
    ``body``). ``on_message(opcode, payload)`` gets each whole message from the bot.
    Backoff: ``first_delay`` seconds, doubled each failed attempt up to ``max_delay``.
    """

    def __init__(self, url: str, on_message: Callable[[WSMsgType, bytes], Any], *,
                 resume_token: str | None = None, first_delay: float = 0.1, max_delay: float = 5.0,
                 give_up_after: float = 300.0, connect_timeout: float = 5.0,
                 headers: dict[str, str] | None = None, **connect_options: Any) -> None:
        self.url = url
        self.on_message = on_message
        self.resume_token = resume_token       # the start API's resumeToken, until a 101 gives one
        self.received = 0                      # messages received from the bot in this session
        self.resumes = 0
        self.first_delay, self.max_delay, self.give_up_after = first_delay, max_delay, give_up_after
        self.connect_timeout = connect_timeout
        self.headers = dict(headers or {})
        self.connect_options = connect_options
        self.transport: WSTransport | None = None
        self.closed = asyncio.Event()          # the session is over (closed, or not resumable)
        self.error: ResumeFailed | None = None
        self._closing = False
        self._listener: _Listener | None = None
        self._reconnecting: asyncio.Task | None = None

    async def connect(self) -> None:
        """Open the session (raises picows' WSError when refused)."""
        await self._open(self.url)

    def send(self, opcode: WSMsgType, payload: bytes) -> None:
        """Send one message to the bot (dropped while reconnecting: the caller's to resend)."""
        if self.transport is not None and self._reconnecting is None:
            self.transport.send(opcode, payload)

    async def close(self, code: int = 1000, reason: bytes = b"") -> None:
        """End the session with a close frame (the relay ends it, no resume)."""
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self.transport is not None and not self.transport.is_close_frame_sent:
            self.transport.send_close(WSCloseCode(code), reason)
        try:
            await asyncio.wait_for(self.closed.wait(), self.connect_timeout)
        except TimeoutError:
            if self.transport is not None:
                self.transport.disconnect(False)
        self.closed.set()

    def resume_url(self) -> str:
        separator = "&" if "?" in self.url else "?"
        return f"{self.url}{separator}resume={quote(self.resume_token or '')}&received={self.received}"

    # -- inside -------------------------------------------------------------------------------

    async def _open(self, url: str) -> None:
        listener = _Listener(self)
        transport, _ = await ws_connect(lambda: listener, url, extra_headers=self.headers,
                                        websocket_handshake_timeout=self.connect_timeout,
                                        enable_auto_pong=False, **self.connect_options)
        response = transport.response
        token = response.headers.get(RESUME_HEADER) if response is not None else None
        if token:
            self.resume_token = token
        self.transport, self._listener = transport, listener

    def _message(self, opcode: WSMsgType, payload: bytes) -> None:
        self.received += 1
        self.on_message(opcode, payload)

    def _lost(self, listener: _Listener) -> None:
        if listener is not self._listener:
            return
        if self._closing or listener.close_received or not self.resume_token:
            self.closed.set()
            return
        self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.give_up_after
        delay = self.first_delay
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._open(self.resume_url())
                    self.resumes += 1
                    return
                except WSError as exc:
                    status = _status_of(exc)
                    if status in FINAL_STATUSES:
                        self._fail(ResumeFailed(f"the relay refused the resume: {exc}", status))
                        return
                except OSError:
                    pass                        # no network yet: try again
                if loop.time() + delay > deadline:
                    self._fail(ResumeFailed(f"no resume within {self.give_up_after:g}s"))
                    return
                delay = min(delay * 2, self.max_delay)
        finally:
            self._reconnecting = None

    def _fail(self, error: ResumeFailed) -> None:
        self.error = error
        self.closed.set()


def _status_of(exc: Exception) -> int | None:
    """The HTTP status in picows' handshake error ("... but received 403")."""
    found = re.search(r"received (\d{3})", str(exc))
    return int(found.group(1)) if found else None
