"""The relay: one public listener, the dispatcher, and the book of live sessions.

``dispatch`` is the data path of SPEC §2 as a straight line of calls, each into one
module: route (routing.py) → agent lookup (registry.py) → handshake check
(handshake.py) → auth → capacity → session (session.py: upstream connector, pump).
Every refusal is an HTTP answer before any upgrade and before any bot is contacted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
from collections import Counter
from typing import TYPE_CHECKING

from . import pump as pump_selector
from .auth import Authenticator
from .capacity import Capacity, LocalCapacity
from .config import Config
from .cors import CorsPolicy, is_preflight
from .errors import RequestRefused
from .gate import Gate
from .handshake import parse_upgrade
from .metrics import RelayMetrics
from .nonces import NonceStore, make_nonce_store
from .registry import AgentRegistry, StaticRegistry
from .routing import GENERIC_PREFIX, route_start_api, route_websocket, split_target
from .start_api import StartRequest, handle_start
from .session import Session
from .session_log import log_refusal, log_session
from .tls import server_tls_context, upstream_tls_context
from .upstream import UpstreamConnector

if TYPE_CHECKING:
    from .config import AgentConfig

log = logging.getLogger("wsrelay.server")


class Relay:
    """Serves the public endpoint for the agents of ``registry``."""

    def __init__(self, config: Config, *, registry: AgentRegistry | None = None,
                 pump: str | None = None, capacity: Capacity | None = None,
                 nonces: NonceStore | None = None) -> None:
        self.config = config
        self.capacity = capacity or LocalCapacity()
        self.registry = registry or StaticRegistry(config.agents)
        self.pump = pump_selector.load(pump)
        cfg = config.relay
        self.tls = server_tls_context(cfg)
        self.authenticator = Authenticator(
            config.auth, nonces or make_nonce_store(cfg.nonce_store, cfg.redis_url))
        self.upstreams = UpstreamConnector(
            ssl_context=upstream_tls_context(cfg),
            connect_timeout=cfg.upstream_connect_timeout, max_frame_size=cfg.max_frame_size,
            read_buffer_size=cfg.read_buffer_size, keepalive_interval=cfg.keepalive_interval,
            keepalive_timeout=cfg.keepalive_timeout)
        self.sessions: set[Session] = set()            # admitted: connecting or connected
        self.active: Counter[str] = Counter()          # service host -> this process's sessions
        self.rejections: Counter[int] = Counter()      # HTTP status -> refused handshakes
        self.accepting = True
        self.metrics = RelayMetrics(self._active_by_agent)
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Listen on the configured host/port (or on ``sock``)."""
        loop = asyncio.get_running_loop()
        cfg = self.config.relay
        tls = {"ssl": self.tls, "ssl_handshake_timeout": cfg.handshake_timeout} if self.tls else {}
        create_server = loop.create_server
        if sock is not None:
            self._server = await create_server(lambda: Gate(self), sock=sock, backlog=1024, **tls)
        else:
            self._server = await create_server(
                lambda: Gate(self), cfg.host, cfg.port, backlog=1024,
                reuse_port=cfg.workers > 1 or None, **tls)

    @property
    def port(self) -> int:
        return self._server.sockets[0].getsockname()[1]

    async def stop(self, *, drain_seconds: float = 0.0) -> None:
        """Stop accepting; let live sessions run up to ``drain_seconds``; then close with 1012."""
        self.accepting = False
        if self._server is not None:
            self._server.close()
        if self.sessions and drain_seconds > 0:
            try:
                await asyncio.wait_for(self._idle.wait(), drain_seconds)
            except TimeoutError:
                pass
        for session in list(self.sessions):
            session.close(1012, "relay restarting", "shutdown")
        if self.sessions:
            try:
                await asyncio.wait_for(self._idle.wait(), self.config.relay.close_timeout + 1)
            except TimeoutError:
                for session in list(self.sessions):
                    session.pair.abort()
        await self.authenticator.nonces.close()

    def reload(self, config: Config) -> None:
        """Take new agents and auth keys; live sessions keep the agent they started with.

        Listener settings (host, port, workers, TLS), the nonce store and the other
        ``[relay]`` bounds need a restart and are kept; ``cors_origins`` follows the file.
        """
        changed = [k for k in ("host", "port", "workers", "tls_cert", "tls_key", "admin_port",
                               "nonce_store", "redis_url")
                   if getattr(config.relay, k) != getattr(self.config.relay, k)]
        if changed:
            log.warning("config reload: %s changed but take effect only after a restart",
                        ", ".join(f"relay.{k}" for k in changed))
        # cors_origins is read per request, so it follows the file like the agents do.
        relay = dataclasses.replace(self.config.relay, cors_origins=config.relay.cors_origins)
        self.config = Config(relay=relay, auth=config.auth, agents=config.agents,
                             source=config.source)
        self.authenticator.auth = config.auth
        if isinstance(self.registry, StaticRegistry):
            self.registry.replace(config.agents)

    # -- the data path --------------------------------------------------------------------

    def dispatch(self, gate: Gate) -> None:
        """Answer or admit one request; called by the gate once the request is read."""
        request = gate.request
        try:
            target = request.target.decode("ascii")
        except UnicodeDecodeError:
            gate.refuse(400, "Bad Request: non-ASCII request target", reason="non-ASCII target")
            return
        try:
            path, _ = split_target(target)
            start_agent = route_start_api(path)
            if start_agent is not None:
                self._answer_start_api(gate, start_agent)
            elif path == GENERIC_PREFIX or path.startswith(GENERIC_PREFIX + "/"):
                self._admit_websocket(gate, target)
            else:
                raise RequestRefused(f"no endpoint at {path[:200]!r}", status=404,
                                     public_reason="Not Found")
        except RequestRefused as exc:
            gate.refuse(exc.status, exc.public_reason, reason=str(exc), headers=exc.headers)

    def _admit_websocket(self, gate: Gate, target: str) -> None:
        request = gate.request
        if not self.accepting:
            raise RequestRefused("relay is draining", status=503,
                                 public_reason="Service Unavailable: the relay is shutting down",
                                 headers={"Retry-After": "5"})
        route = route_websocket(target)
        agent = self.registry.lookup(route.service_host)
        if agent is None:
            raise RequestRefused(f"unknown service host {route.service_host!r}", status=404,
                                 public_reason="Not Found: unknown agent")
        upgrade = parse_upgrade(request.method, request.headers, http_version=request.http_version)
        gate.task = asyncio.get_running_loop().create_task(
            self._authenticate_and_run(gate, route, agent, upgrade))

    async def _authenticate_and_run(self, gate: Gate, route, agent: "AgentConfig", upgrade) -> None:
        """Auth (the nonce store may be remote), capacity, then the session itself."""
        try:
            claims = await self.authenticator.check(route, upgrade, agent)
            self.admit(agent)
        except RequestRefused as exc:
            gate.refuse(exc.status, exc.public_reason, reason=str(exc), headers=exc.headers)
            return
        except Exception as exc:      # a bug or a failing nonce store: answer, never hang
            log.exception("auth or admission failed unexpectedly")
            gate.refuse(500, "Internal Server Error", reason=f"internal error: {exc!r}"[:200])
            return
        session = Session(self, gate, route, agent, upgrade, claims.session_id if claims else None)
        self.sessions.add(session)
        self._idle.clear()
        await session.run()

    def _answer_start_api(self, gate: Gate, agent_name: str) -> None:
        """The start API, callable from a browser page of a ``cors_origins`` origin."""
        request = gate.request
        cors = CorsPolicy(self.config.relay.cors_origins)
        origin = _header(request, b"origin")
        if is_preflight(request.method, origin, _header(request, b"access-control-request-method")):
            preflight = cors.preflight(origin, _header(request, b"access-control-request-method"),
                                       _header(request, b"access-control-request-headers"))
            if preflight.status != 204:
                raise RequestRefused(f"CORS preflight from {origin[:100]!r} refused: {preflight.reason}",
                                     status=403, public_reason=f"Forbidden: {preflight.reason}",
                                     headers=preflight.headers)
            gate.respond(204, "", preflight.headers)
            return
        cors_headers = cors.response_headers(origin)
        try:
            answer = self._start(gate, agent_name)
        except RequestRefused as exc:
            exc.headers.update(cors_headers)      # so the page can read why it was refused
            raise
        gate.respond(200, json.dumps(answer), {"Content-Type": "application/json",
                                               "Cache-Control": "no-store", **cors_headers})

    def _start(self, gate: Gate, agent_name: str) -> dict:
        request = gate.request
        return handle_start(
            StartRequest(method=request.method.decode("latin-1"), agent_name=agent_name,
                         authorization=_header(request, b"authorization"),
                         host=_header(request, b"host"), body=bytes(gate.body)),
            registry=self.registry, config=self.config, authenticator=self.authenticator,
            secure=self.tls is not None)

    def admit(self, agent: "AgentConfig") -> None:
        """Take a capacity slot of ``agent`` or refuse with 429."""
        host = agent.service_host
        if not self.capacity.try_acquire(host, agent.max_sessions):
            raise RequestRefused(f"{host} is at max_sessions={agent.max_sessions}", status=429,
                                 public_reason="Too Many Requests: the agent is at its session limit",
                                 headers={"Retry-After": "1"})
        self.active[host] += 1

    def release(self, session: Session) -> None:
        """Give back the session's capacity slot (idempotent)."""
        if session in self.sessions:
            self.sessions.discard(session)
            host = session.agent.service_host
            self.capacity.release(host)
            self.active[host] -= 1
            if self.active[host] <= 0:
                del self.active[host]
            if not self.sessions:
                self._idle.set()

    # -- events -------------------------------------------------------------------------

    def on_connected(self, session: Session) -> None:
        pass

    def on_session_end(self, session: Session) -> None:
        summary = session.summary()
        log_session(summary)
        if session.connected_at is not None:
            self.metrics.session_ended(summary, summary["duration_s"])

    def on_upstream_connected(self, seconds: float) -> None:
        self.metrics.upstream_connected(seconds)

    def _active_by_agent(self) -> dict[tuple[str, str], int]:
        return {tuple(host.rsplit(".", 1)): n for host, n in self.active.items()}

    def on_refused(self, gate: Gate, status: int, reason: str) -> None:
        self.rejections[status] += 1
        self.metrics.handshake_refused(status)
        log_refusal(status=status, reason=reason, client=gate.peer,
                    target=gate.request.target.decode("latin-1")[:200] if gate.request else None)


def _header(request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None
