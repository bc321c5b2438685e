"""The admin listener (``[relay] admin_port``, not public): /healthz, /readyz, /metrics.

Also the live sessions (``/sessions``, telemetry/live_sessions.py) and the dashboard (``/``,
static files in admin/dashboard/); with ``[relay] admin_token`` everything but the probes
needs the token.

One request per connection, read with the public gate's bounded reader (edge/http.py)
under a size limit and a deadline, answered, closed. ``/readyz`` turns 503 when the relay drains, so a load balancer stops sending
new clients before live sessions are closed.
With ``--workers N``, ``gather_metrics`` makes /metrics the whole process group's
(telemetry/metrics_group.py asks the other workers when scraped).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import binascii
import hmac
import ipaddress
import json
from importlib import resources
from typing import Awaitable, Callable, cast
from urllib.parse import parse_qs, unquote

from ..edge.http import RequestReader, header, http_response
from ..errors import RequestRefused
from ..telemetry.live_sessions import BadCursor, LiveSessions

log = logging.getLogger("wsrelay.admin")

MAX_HEAD = 8192


class AdminServer:
    """Serves the admin endpoints of one relay process."""

    def __init__(self, *, render_metrics: Callable[[], tuple[bytes, str]],
                 is_ready: Callable[[], bool], read_timeout: float = 10.0,
                 gather_metrics: Callable[[], Awaitable[tuple[bytes, str]]] | None = None,
                 sessions: LiveSessions | None = None, token: str | None = None) -> None:
        self.render_metrics = render_metrics
        self.sessions = sessions
        self.token = token
        self.gather_metrics = gather_metrics
        self.is_ready = is_ready
        self.read_timeout = read_timeout
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AdminConnection(self), host, port)
        if self.token is None:
            exposed = [_shown(sock.getsockname()) for sock in self._server.sockets if not _loopback(sock.getsockname())]
            if exposed:
                log.warning("the admin port listens on %s, beyond loopback, and [relay] admin_token is not set: "
                            "whoever reaches it sees client addresses and can end sessions (DELETE "
                            "/sessions/{id}); set admin_token, or admin_host to an address only trusted "
                            "hosts reach", ", ".join(exposed))

    @property
    def port(self) -> int:
        assert self._server is not None, "the admin listener has a port once start() has run"
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def authorized(self, path: bytes, authorization: str | None) -> bool:
        """``[relay] admin_token``: required on all but the probes. Scripts send it as
        ``Bearer <token>``; a browser opening the dashboard is asked for it (HTTP Basic, any
        user name, the token as password) and resends it on the page's own requests."""
        if self.token is None or path in PUBLIC_PATHS:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                value = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(value.strip().encode("utf-8", "replace"), self.token.encode())

    async def respond(self, method: bytes, target: bytes) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers) for one authorized request; with ``--workers N`` /sessions
        and /metrics ask the other workers (each bounded by its gatherer's own timeout)."""
        path = target.split(b"?", 1)[0]
        if path.startswith(b"/sessions"):
            return await self.answer_sessions(method, target)
        if path == b"/metrics" and self.gather_metrics is not None and method in (b"GET", b"HEAD"):
            body, content_type = await self.gather_metrics()
            return 200, body, {"Content-Type": content_type}
        return self.answer(method, target)

    def answer(self, method: bytes, target: bytes) -> tuple[int, bytes, dict[str, str]]:
        """(status, body, headers) for one authorized request this process answers alone."""
        path = target.split(b"?", 1)[0]
        if path not in (b"/healthz", b"/readyz", b"/metrics") and path not in STATIC:
            return 404, b"not found\n", {}
        if method not in (b"GET", b"HEAD"):
            return 405, b"use GET\n", {"Allow": "GET, HEAD"}
        if path == b"/healthz":
            return 200, b"ok\n", {}
        if path == b"/readyz":
            return (200, b"ready\n", {}) if self.is_ready() else (503, b"draining\n", {})
        if path in STATIC:
            return 200, _static(STATIC[path][0]), {"Content-Type": STATIC[path][1], **PAGE_HEADERS}
        body, content_type = self.render_metrics()
        return 200, body, {"Content-Type": content_type}

    async def answer_sessions(self, method: bytes, target: bytes) -> tuple[int, bytes, dict[str, str]]:
        """``GET /sessions[?cursor=&limit=]``, ``GET /sessions/{id}``, ``DELETE /sessions/{id}``
        (async: with ``--workers N`` the other workers are asked too)."""
        path, _, query = target.partition(b"?")
        if self.sessions is None:
            return 404, b"not found\n", {}
        if path == b"/sessions":
            if method not in (b"GET", b"HEAD"):
                return 405, b"use GET\n", {"Allow": "GET, HEAD"}
            try:
                params = parse_qs(query.decode("latin-1"), max_num_fields=MAX_QUERY_FIELDS)
            except ValueError:                    # more fields than MAX_QUERY_FIELDS
                return _json(400, {"error": f"too many query parameters (at most {MAX_QUERY_FIELDS}): "
                                            "/sessions takes cursor and limit"})
            try:
                limit = int(params.get("limit", ["1000"])[0])
            except ValueError:
                return _json(400, {"error": "limit must be a number"})
            try:
                return _json(200, await self.sessions.page(params.get("cursor", [None])[0], limit))
            except BadCursor as exc:
                return _json(400, {"error": str(exc)})
        if not path.startswith(b"/sessions/") or len(path) > 200:
            return 404, b"not found\n", {}
        session_id = unquote(path[len(b"/sessions/"):].decode("latin-1"))
        if method in (b"GET", b"HEAD"):
            view, missing = await self.sessions.view(session_id)
            if view is None:
                return _json(404, _not_live(session_id, missing))
            return _json(200, view)
        if method == b"DELETE":
            ended, missing = await self.sessions.end(session_id)
            if not ended:
                return _json(404, _not_live(session_id, missing))
            return _json(200, {"ended": session_id, "close_code": 1008})
        return 405, b"use GET or DELETE\n", {"Allow": "GET, HEAD, DELETE"}


PUBLIC_PATHS = (b"/healthz", b"/readyz")
MAX_QUERY_FIELDS = 10
CHALLENGE = {"WWW-Authenticate": 'Basic realm="wsrelay admin", charset="UTF-8", Bearer realm="wsrelay admin"'}
STATIC = {b"/": ("index.html", "text/html; charset=utf-8"),
          b"/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          b"/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
# The dashboard loads nothing from elsewhere, and the headers say so to the browser.
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"}
# Live sessions (client addresses): never kept by a cache, never read as anything but JSON.
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
_STATIC_CACHE: dict[str, bytes] = {}


def _static(name: str) -> bytes:
    """A dashboard file shipped in the package (admin/dashboard/), read once."""
    if name not in _STATIC_CACHE:
        _STATIC_CACHE[name] = resources.files("wsrelay.admin").joinpath("dashboard").joinpath(name).read_bytes()
    return _STATIC_CACHE[name]


def _not_live(session_id: str, missing: int) -> dict:
    """The 404 of /sessions/{id}; with --workers N, whether some worker could not be asked."""
    error = f"no live session {session_id!r}"
    if missing:
        error += f" on the workers that answered ({missing} did not answer in time: it may be on one of them)"
    return {"error": error, "incomplete": missing}


def _loopback(address: tuple) -> bool:
    """A listening socket's address is a loopback one (127.0.0.0/8, ::1)."""
    try:
        return ipaddress.ip_address(str(address[0]).split("%", 1)[0]).is_loopback
    except ValueError:                  # not an IP address (a Unix socket): not reachable from elsewhere
        return True


def _shown(address: tuple) -> str:
    host, port = str(address[0]), address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _json(status: int, payload: dict) -> tuple[int, bytes, dict[str, str]]:
    return status, json.dumps(payload).encode(), {"Content-Type": "application/json", **JSON_HEADERS}


class _AdminConnection(asyncio.Protocol):
    """One request, read with the relay's bounded reader, answered, closed."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.reader = RequestReader(MAX_HEAD, max_body=0)
        self.transport: asyncio.Transport | None = None       # set by connection_made, asyncio's first call
        self.timer: asyncio.TimerHandle | None = None
        self.answering: asyncio.Task | None = None            # the request's answer (may ask the workers)

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
        if self.transport.is_closing() or self.answering is not None:
            return                               # one request per connection: what follows it is read and dropped
        try:
            complete = self.reader.feed(data)
        except RequestRefused as exc:
            self._send(exc.status, exc.public_reason.encode() + b"\n", {})
            return
        if complete:
            request = self.reader.request
            assert request is not None           # a complete reader holds its request
            if not self.server.authorized(request.target.split(b"?", 1)[0], header(request, b"authorization")):
                self._send(401, b"" if request.method == b"HEAD" else b"unauthorized: send the admin token\n",
                           CHALLENGE)
                return
            self.answering = asyncio.get_running_loop().create_task(self._answer(request))

    async def _answer(self, request) -> None:
        try:
            status, body, headers = await self.server.respond(request.method, request.target)
        except Exception:                        # a bug here must still answer, and be one log line
            log.exception("admin request failed", extra={"fields": {
                "event": "admin_error", "target": request.target.decode("latin-1")[:200]}})
            status, body, headers = 500, b"internal error: see the relay's log\n", {}
        self._send(status, b"" if request.method == b"HEAD" else body, headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        assert self.transport is not None        # called from data_received or the timer connection_made set
        if self.transport.is_closing():
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport.write(http_response(status, body, headers))
        self.transport.close()
