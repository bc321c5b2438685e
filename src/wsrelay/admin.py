"""The admin listener (``[relay] admin_port``, not public): /healthz, /readyz, /metrics.

One request per connection, read with h11 under a size limit and a deadline, answered,
closed. ``/readyz`` turns 503 when the relay drains, so a load balancer stops sending
new clients before live sessions are closed.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import h11

from .gate import http_response

MAX_HEAD = 8192


class AdminServer:
    """Serves the admin endpoints of one relay process."""

    def __init__(self, *, render_metrics: Callable[[], tuple[bytes, str]],
                 is_ready: Callable[[], bool], read_timeout: float = 10.0) -> None:
        self.render_metrics = render_metrics
        self.is_ready = is_ready
        self.read_timeout = read_timeout
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AdminConnection(self), host, port)

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def answer(self, method: bytes, target: bytes) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers) for one request."""
        path = target.split(b"?", 1)[0]
        if path not in (b"/healthz", b"/readyz", b"/metrics"):
            return 404, b"not found\n", {}
        if method not in (b"GET", b"HEAD"):
            return 405, b"use GET\n", {"Allow": "GET, HEAD"}
        if path == b"/healthz":
            return 200, b"ok\n", {}
        if path == b"/readyz":
            return (200, b"ready\n", {}) if self.is_ready() else (503, b"draining\n", {})
        body, content_type = self.render_metrics()
        return 200, body, {"Content-Type": content_type}


class _AdminConnection(asyncio.Protocol):
    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.transport = None
        self.request: h11.Request | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.received = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(self.server.read_timeout, self._timeout)

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _timeout(self) -> None:
        self._send(408, b"request timeout\n", {})

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        self.received += len(data)
        if self.request is None and self.received > MAX_HEAD:
            self._send(431, b"request head too large\n", {})
            return
        self.h11.receive_data(data)
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._send(exc.error_status_hint or 400, b"bad request\n", {})
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request = event
            elif isinstance(event, h11.EndOfMessage):
                status, body, headers = self.server.answer(self.request.method, self.request.target)
                if self.request.method == b"HEAD":
                    body = b""
                self._send(status, body, headers)
                return
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if self.transport.is_closing():
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport.write(http_response(status, body, headers))
        self.transport.close()
