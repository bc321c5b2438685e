"""The admin listener (``[relay] admin_port``, not public): /healthz, /readyz, /metrics.

One request per connection, read with the public gate's bounded reader (edge/http.py)
under a size limit and a deadline, answered, closed. ``/readyz`` turns 503 when the relay drains, so a load balancer stops sending
new clients before live sessions are closed.
"""

from __future__ import annotations

import asyncio
from typing import Callable, cast

from ..errors import RequestRefused
from .http import RequestReader, http_response

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
        assert self._server is not None, "the admin listener has a port once start() has run"
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
    """One request, read with the relay's bounded reader, answered, closed."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.reader = RequestReader(MAX_HEAD, max_body=0)
        self.transport: asyncio.Transport | None = None       # set by connection_made, asyncio's first call
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_server's connections are stream transports (a BaseTransport only by the signature).
        self.transport = cast(asyncio.Transport, transport)
        self.timer = asyncio.get_running_loop().call_later(self.server.read_timeout, self._timeout)

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def _timeout(self) -> None:
        self._send(408, b"request timeout\n", {})

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None        # connection_made comes before any data
        if self.transport.is_closing():
            return
        try:
            complete = self.reader.feed(data)
        except RequestRefused as exc:
            self._send(exc.status, exc.public_reason.encode() + b"\n", {})
            return
        if complete:
            request = self.reader.request
            assert request is not None           # a complete reader holds its request
            status, body, headers = self.server.answer(request.method, request.target)
            if request.method == b"HEAD":
                body = b""
            self._send(status, body, headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        assert self.transport is not None        # called from data_received or the timer connection_made set
        if self.transport.is_closing():
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport.write(http_response(status, body, headers))
        self.transport.close()
