"""The relay: one public listener, the dispatcher, and the book of live sessions.

``dispatch`` is the data path (docs/architecture.md) as a straight line of calls,
each into one module: endpoint (core/routing.py's table) → route → agent lookup
(admission/registry.py) → upgrade check (core/upgrade.py) → auth (admission/auth.py) →
capacity → session (edge/session.py: upstream connector, hand-over, pump). Every refusal is an HTTP answer
before any upgrade and before any bot is contacted; on a telephony provider's endpoint the
client is upgraded first and its first messages held (telephony/hold.py), so refusals from then
on are close frames, still before any bot is contacted. Both go through one pipeline,
``_admit``, and one ``_refuse``, which answers in the client's state (errors.py declares each
refusal in both forms). The capacity slot is taken in ``_admit`` and given back in
``_session_over``, once.

In a fleet (``[fleet] redis_url``) the same line holds with the shared engines in place
(fleet/membership.py): agents from the file and Redis, a Redis lease per session of a
capped agent, nonces in Redis. The background tasks (the fleet's, DNS re-resolution) start
with ``start`` and end with ``stop``. The start API's answer is edge/http_endpoints.py's; the
Session API's (a live session's bot over HTTP) is edge/session_api.py's, which keeps the
book of the live sessions of agents with ``session_api = true`` (``_admit`` enters them once
their bot has answered, ``_session_over`` takes them out); it is imported and made with its
first use, so a relay whose agents do not use it never loads it.

Session resume (docs/resume.md): a generic request with ``?resume=`` or ``X-Wsrelay-Resume`` is
no new session but a client coming back to one in the book of resumable sessions
(``_resumable``): ``_resume`` checks the token (admission/resume_tokens.py), the session and its
replay, every refusal an HTTP answer before the upgrade, and hands the client to the session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections import Counter
from typing import TYPE_CHECKING

from .. import pump as pump_selector
from ..admission.auth import Authenticator
from ..admission.capacity import Capacity, LocalCapacity
from ..admission.nonces import NonceStore
from ..admission.registry import AgentRegistry, StaticRegistry
from ..admission.resume_tokens import ResumeTokens
from ..config import Config, nonce_store_of
from ..config.reload import reloaded
from ..core.cors import CorsPolicy
from ..core.routing import (EndpointKind, HeldRoute, ResumeRoute, Route, RouteAt, find_endpoint, route_provider,
                            route_session_api, route_start_api, route_websocket, split_target)
from ..core.session_machine import Outcome
from ..core.upgrade import ResumeUpgrade, parse_upgrade
from ..errors import (SHUTDOWN_CLOSE, AuthError, CapacityError, Draining, ProviderRefused, RequestRefused,
                      ResumeRefused, SessionRefused, UpstreamError, WsrelayError)
from ..fleet.agents import FleetRegistry
from ..fleet.membership import Fleet
from ..fleet.nonces import make_nonce_store
from ..fleet.redis_link import RedisDown
from ..telemetry.logs import log_refusal, log_session, log_session_refused
from ..telemetry.metrics import RelayMetrics
from ..telemetry.upstream_metrics import UpstreamCollector
from ..telephony.hold import Hold
from ..telephony.signatures import candidate_urls
from .deadlines import Deadlines
from .discovery import Resolver
from .gate import Gate
from .http import Request, json_error
from .http_endpoints import answer_start_api
from .session import HeldClient, Session, SessionServices
from .tls import server_tls_context, upstream_tls_context
from .upstream import UpstreamConnector

if TYPE_CHECKING:
    from ..config import AgentConfig
    from .session_api import SessionApi
    from ..webhooks import Webhooks
    from ..core.upgrade import UpgradeRequest

log = logging.getLogger("wsrelay.relay")

DRAINING_RETRY_AFTER = "5"
CAPACITY_RETRY_AFTER = "1"
LISTEN_BACKLOG = 1024                           # pending connections the kernel queues
# Enum members read per request, as module names (on Python 3.11 ``EndpointKind.GENERIC``
# goes through ``EnumType.__getattr__``: see core/session_machine.py).
START_API_ENDPOINT, GENERIC_ENDPOINT, PROVIDER_ENDPOINT, SESSION_API_ENDPOINT = (
    EndpointKind.START_API, EndpointKind.GENERIC, EndpointKind.PROVIDER, EndpointKind.SESSION_API)


@dataclasses.dataclass(slots=True)
class Held:
    """A provider endpoint's call while it is admitted: for its refusal's log line."""

    provider: str
    target: str                                     # the request target, cut to 200 characters
    agent: "AgentConfig | None" = None              # once known (Twilio: from the start message)


class Relay:
    """Serves the public endpoint for the agents of ``registry``."""

    def __init__(self, config: Config, *, registry: AgentRegistry | None = None,
                 pump: str | None = None, capacity: Capacity | None = None,
                 nonces: NonceStore | None = None) -> None:
        self.config = config
        self.capacity = capacity or LocalCapacity()
        cfg = config.relay
        self.fleet = Fleet(config.fleet, config.agents, region=cfg.region) if config.fleet.redis_url else None
        self.leases = self.fleet.leases if self.fleet is not None else None
        self._lease_of: dict[Session, str] = {}        # session -> its fleet lease, while held
        self.registry = registry or (self.fleet.registry if self.fleet is not None
                                     else StaticRegistry(config.agents, region=cfg.region))
        self.pump = pump_selector.load(pump)
        self.tls = server_tls_context(cfg)
        kind, nonce_url = nonce_store_of(config)
        link = self.fleet.link if self.fleet is not None else None
        self.authenticator = Authenticator(config.auth, nonces or make_nonce_store(kind, nonce_url, link))
        self.resume_tokens = ResumeTokens(config.auth, self.authenticator.nonces)
        self._resumable: dict[str, Session] = {}       # session id -> a live session with resume on
        self._hops: set = set()                        # resumes carried to another relay, live (edge/hop.py)
        self.deadlines = Deadlines()                   # every session's timers, on one loop timer
        self._upstream_tls = upstream_tls_context(cfg)
        self.upstreams = UpstreamConnector(
            deadlines=self.deadlines, ssl_context=self._upstream_tls,
            connect_timeout=cfg.upstream_connect_timeout, max_frame_size=cfg.max_frame_size,
            read_buffer_size=cfg.read_buffer_size, keepalive_interval=cfg.keepalive_interval,
            keepalive_timeout=cfg.keepalive_timeout,
            resolver=Resolver(cfg.dns_servers, timeout=min(2.0, cfg.dns_refresh_seconds)))
        self._session_api: "SessionApi | None" = None      # made on first use (session_api())
        self._background: list[asyncio.Task] = []
        self.sessions: set[Session] = set()            # admitted: connecting or connected
        self.holds: set[Hold] = set()                  # provider clients upgraded, start message not yet read
        self.rejections: Counter[int] = Counter()      # HTTP status -> refused handshakes
        self.accepting = True
        self.metrics = RelayMetrics(active=self._active_by_agent, rejections=lambda: self.rejections)
        self.metrics.registry.register(UpstreamCollector(self.upstreams.balancer))
        # Signed session events ([webhooks]): queued without waiting, delivered by their own task.
        # Imported only when configured: a relay without webhooks loads none of it.
        self.webhooks: "Webhooks | None" = None
        if config.webhooks.enabled:
            from ..webhooks import WebhookSettings, Webhooks
            self.webhooks = Webhooks.open(WebhookSettings.from_config(config.webhooks,
                                                                      redis_url=config.fleet.redis_url),
                                          self.metrics.registry)
        self.session_services = SessionServices(
            pump=self.pump, limits=cfg, connect=self.upstreams.connect, deadlines=self.deadlines,
            secure=self.tls is not None, on_start=self._session_started, on_end=self._session_over,
            resume_tokens=self.resume_tokens, on_resume=self._session_resumed)
        self._server: asyncio.Server | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Listen on the configured host/port (or on ``sock``); start the background tasks."""
        loop = asyncio.get_running_loop()
        cfg = self.config.relay
        if self.fleet is not None:
            await self.fleet.start()
        if self.webhooks is not None:
            await self.webhooks.start()
        self._background.append(loop.create_task(self._rediscover()))
        # Without TLS both stay None, create_server's defaults (a handshake timeout needs ssl).
        handshake_timeout = cfg.handshake_timeout if self.tls else None
        if sock is not None:
            self._server = await loop.create_server(
                self._new_gate, sock=sock, backlog=LISTEN_BACKLOG,
                ssl=self.tls, ssl_handshake_timeout=handshake_timeout)
        else:
            self._server = await loop.create_server(
                self._new_gate, cfg.host, cfg.port, backlog=LISTEN_BACKLOG,
                reuse_port=cfg.workers > 1 or None, ssl=self.tls, ssl_handshake_timeout=handshake_timeout)

    async def _rediscover(self) -> None:
        """Re-resolve the upstreams' host names every ``dns_refresh_seconds``."""
        while True:
            await asyncio.sleep(self.config.relay.dns_refresh_seconds)
            try:
                await self.upstreams.refresh({a.service_host: a.upstreams for a in self.registry.agents()})
            except Exception:                          # a bug: log it, keep the pools as they are
                log.exception("upstream re-resolution failed")

    def _new_gate(self) -> Gate:
        return Gate(self.config.relay, dispatch=self.dispatch, on_refused=self._refused,
                    stream_class=self.pump.ClientStream, deadlines=self.deadlines,
                    body_limit=self._body_limit, error_body=self._error_body)

    def session_api(self) -> "SessionApi":
        """The Session API (edge/session_api.py), imported and made on first use: its modules
        loaded by every relay would cost each session more of the cyclic GC's full collections."""
        if self._session_api is None:
            from .session_api import SessionApi
            cfg = self.config.relay
            self._session_api = SessionApi(
                timeout=cfg.session_api_timeout, max_body=cfg.max_session_api_body, ssl_context=self._upstream_tls,
                directory=self.fleet.session_directory() if self.fleet is not None else None)
        return self._session_api

    def _body_limit(self, request: Request) -> int | None:
        """A request announcing a body: the Session API takes one of any method, up to its bound."""
        path = request.target.decode("latin-1").partition("?")[0]
        return self.config.relay.max_session_api_body if route_session_api(path) is not None else None

    @staticmethod
    def _error_body(request: Request | None, status: int, public_reason: str) -> tuple[str, dict[str, str]] | None:
        """A refusal on the platform's HTTP APIs (the start API, the Session API: the endpoints
        that are not WebSockets) is its JSON ``{"error", "code"}``; a WebSocket handshake's is text."""
        if request is None:
            return None
        endpoint = find_endpoint(request.target.decode("latin-1").partition("?")[0])
        return json_error(status, public_reason) if endpoint is not None and not endpoint.websocket else None

    @property
    def port(self) -> int:
        assert self._server is not None, "the relay has a port once start() has run"
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
        for hold in list(self.holds):                 # no session yet: the gate sends the close
            hold.refuse(SessionRefused("relay is shutting down", code=SHUTDOWN_CLOSE[0],
                                       public_reason=SHUTDOWN_CLOSE[1]))
        for session in list(self.sessions):
            session.close(*SHUTDOWN_CLOSE, Outcome.SHUTDOWN)
        for hop in list(self._hops):                  # the holding relay's sessions go on: their clients resume
            hop.close()
        if self.sessions:
            try:
                await asyncio.wait_for(self._idle.wait(), self.config.relay.close_timeout + 1)
            except TimeoutError:
                for session in list(self.sessions):
                    session.abort()
        self.deadlines.close()
        if self.webhooks is not None:              # after the last session's end was queued
            await self.webhooks.close()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._session_api is not None:
            await self._session_api.close()
        await self.authenticator.nonces.close()
        if self.fleet is not None:
            await self.fleet.close()

    def reload(self, config: Config) -> None:
        """Take new agents, auth keys and what else is read per request (config/reload.py); live
        sessions keep the agent they started with. What needs a restart is kept, and named."""
        self.config, waiting = reloaded(self.config, config)
        if waiting:
            log.warning("config reload: %s changed but take effect only after a restart", ", ".join(waiting))
        self.authenticator.auth = self.resume_tokens.auth = self.config.auth
        if isinstance(self.registry, (StaticRegistry, FleetRegistry)):
            self.registry.replace(self.config.agents)

    # -- the data path --------------------------------------------------------------------

    @property
    def active(self) -> Counter[str]:
        """Live sessions per service host (counted from the book, kept nowhere else)."""
        return Counter(session.agent.service_host for session in self.sessions)

    def dispatch(self, gate: Gate) -> None:
        """Answer or admit one request; the gate calls it once the request is read."""
        request = gate.request
        assert request is not None
        try:
            target = request.target.decode("ascii")
        except UnicodeDecodeError:
            gate.refuse(400, "Bad Request: non-ASCII request target", reason="non-ASCII target")
            return
        try:
            path, query = split_target(target)
            endpoint = find_endpoint(path)
            if endpoint is None:
                raise RequestRefused(f"no endpoint at {path[:200]!r}", status=404, public_reason="Not Found")
            if endpoint.kind is START_API_ENDPOINT:
                answer_start_api(gate, route_start_api(path) or "", registry=self.registry, config=self.config,
                                 authenticator=self.authenticator, secure=self.tls is not None,
                                 resume_tokens=self.resume_tokens)
                return
            if endpoint.kind is SESSION_API_ENDPOINT:   # live sessions' bots answer while the relay drains
                session_api = route_session_api(path)
                assert session_api is not None
                gate.task = self.deadlines.loop.create_task(self.session_api().answer(
                    gate, session_api, query, registry=self.registry, cors=CorsPolicy(self.config.relay.cors_origins),
                    refuse=self._refuse))
                return
            self._refuse_while_draining()
            max_body = self.config.relay.max_body_bytes
            if endpoint.kind is GENERIC_ENDPOINT:
                route: Route | HeldRoute = route_websocket(target, max_body=max_body)
                provider = None
            elif endpoint.kind is PROVIDER_ENDPOINT and endpoint.provider is not None:
                provider = endpoint.provider
                route = route_provider(target, provider, max_body=max_body,
                                       service_host_in_query=endpoint.route_at is RouteAt.BEFORE_UPGRADE)
            else:
                return
            agent = None
            if isinstance(route, Route):
                agent = self.registry.lookup(route.service_host)
                if agent is None:
                    raise RequestRefused(f"unknown service host {route.service_host!r}", status=404,
                                         public_reason="Not Found: unknown agent")
            upgrade = parse_upgrade(request.method, request.raw_headers, http_version=request.http_version)
        except RequestRefused as exc:
            self._refuse(gate, exc)
            return
        if (type(route) is ResumeRoute or type(upgrade) is ResumeUpgrade) and provider is None:
            assert isinstance(route, Route)
            gate.task = self.deadlines.loop.create_task(self._resume(gate, route, upgrade))
            return
        gate.task = self.deadlines.loop.create_task(
            self._admit(gate, route, agent, upgrade, Held(provider, target[:200]) if provider else None))

    def _refuse_while_draining(self) -> None:
        """New sessions get 503 once the relay drains (1012 once upgraded): see ``Draining``."""
        if not self.accepting:
            raise Draining(DRAINING_RETRY_AFTER)

    async def _admit(self, gate: Gate, route: "Route | HeldRoute", agent: "AgentConfig | None",
                     upgrade: "UpgradeRequest", held: "Held | None") -> None:
        """The one admission pipeline: auth (the nonce store may be remote), a capacity slot,
        a last look at draining, the session, its bot. ``held`` (a provider endpoint): the
        client is upgraded first and its first messages held (telephony/hold.py) until they name
        the call; a provider routed by its start message (Twilio) is authenticated and given
        its slot only then. Any refusal is answered by ``_refuse`` in the client's state: an
        HTTP status before its upgrade, a close frame after.

        The capacity slot, once taken, belongs to the session (given back in
        ``_session_over``, exactly once), or is given back here. The task ends once both
        sides have their ``101``: a live session costs no coroutine.
        """
        slot: tuple[str, str | None] | None = None        # (service host, fleet lease) until a session owns it
        session: Session | None = None
        hold = Hold(gate, held.provider, start_timeout=self.config.relay.provider_start_timeout) if held else None
        stage = "auth"                                          # for the log line of a bug
        try:
            urls = self._signed_urls(gate, upgrade) if held or agent and agent.websocket_auth == "twilio-signature" \
                else None
            claims = None
            if agent is not None:                               # routed before the upgrade
                assert isinstance(route, Route)
                claims = await self.authenticator.check(route, upgrade, agent, urls=urls)
                stage = "capacity check"
                slot = await self._take_slot(agent)
            if hold is not None and held is not None:
                stage = f"holding a {held.provider} call"
                held.agent = agent
                self.holds.add(hold)
                try:
                    start = await hold.start_message(upgrade.key)
                finally:
                    self.holds.discard(hold)
                self._refuse_while_draining()
                if agent is None:                               # Twilio: the start message names the agent
                    assert start.service_host is not None and isinstance(route, HeldRoute)
                    route = route.complete(*start.service_host)
                    agent = held.agent = self.registry.lookup(route.service_host)
                    if agent is None:
                        raise ProviderRefused(f"unknown agent {route.service_host!r} in start.customParameters",
                                              public_reason=f"unknown agent {route.service_host}")
                    stage = "auth"
                    claims = await self.authenticator.check(route, upgrade, agent, urls=urls)
                    stage = "capacity check"
                    slot = await self._take_slot(agent)
            stage = "connecting a session"
            assert agent is not None and isinstance(route, Route)
            self._refuse_while_draining()       # it may have begun to stop while auth, the lease or the hold was awaited
            session = Session(self.session_services, route=route, agent=agent, client_address=gate.peer,
                              attach=gate.attach, session_id=claims.session_id if claims else None,
                              endpoint=held.provider if held else "generic",
                              **(self._held_session(gate, held, upgrade) if held else
                                 {"upgrade": upgrade, "refuse_client": gate.refuse}))
            self.sessions.add(session)
            if session.resume is not None:
                self._resumable[session.id] = session
                if self.fleet is not None and self.config.fleet.internal_url:
                    self.fleet.resumable.publish_text(session.id, self.config.fleet.internal_url)
            if slot is not None and slot[1] is not None:
                self._lease_of[session] = slot[1]
            slot = None                                         # the session gives it back
            self._idle.clear()
            await session.run()
            if session.upstream_seconds is not None:
                self.metrics.upstream_connected(session.upstream_seconds)
                if agent.session_api and session in self.sessions:
                    self.session_api().live(session)
        except asyncio.CancelledError:                          # the client left while we waited
            if session is None or not session.started:
                if session is not None:
                    self._session_over(session)
                if held is not None:
                    log_session_refused(code=1001,
                                        reason=f"the client left before its {held.provider} session started",
                                        client=gate.peer, target=held.target, provider=held.provider,
                                        service_host=held.agent.service_host if held.agent else None)
            raise
        except Exception as exc:
            if not isinstance(exc, WsrelayError):               # a bug: answer, never hang
                log.exception("%s failed unexpectedly", stage)
            if session is None or not session.started:
                if session is not None:
                    self._session_over(session)
                self._refuse(gate, exc, held)
        finally:
            if hold is not None:
                hold.close()
            if slot is not None:
                self._give_slot(*slot)

    async def _resume(self, gate: Gate, route: Route, upgrade: "UpgradeRequest") -> None:
        """A client coming back to its session (docs/resume.md): the token (403: bad, used,
        expired, another agent's, not the session's latest), the session (404: ended), the
        replay (409), then the session takes the client. Every refusal is before the upgrade."""
        in_query = route.resume if isinstance(route, ResumeRoute) else None
        in_header = upgrade.resume_token if isinstance(upgrade, ResumeUpgrade) else None
        received = route.received if isinstance(route, ResumeRoute) else None
        token = in_query or in_header or ""
        try:
            if in_query and in_header and in_query != in_header:
                raise RequestRefused("two different resume tokens", status=400,
                                     public_reason="Bad Request: two different resume tokens")
            claims = self.resume_tokens.verify(token, route.service_host)
            session = self._resumable.get(claims.session_id)
            if session is None:
                if await self._hop(gate, claims.session_id):
                    return
                raise ResumeRefused.gone(f"no live session {claims.session_id} to resume")
            if session.resume is None or claims.nonce != session.resume.nonce:
                raise AuthError("resume token replayed: the session has handed out a newer one", status=403)
            session.replay_for(received)                         # 409 before the token is used up
            await self.resume_tokens.claim(claims)
            if self._resumable.get(claims.session_id) is not session:
                raise ResumeRefused.gone(f"session {claims.session_id} ended while its resume was checked")
            if claims.nonce != session.resume.nonce:
                raise AuthError("resume token replayed: another connection resumed with it", status=403)
            if not session.reattach(gate.attach, upgrade.key, received):
                self.metrics.resume_failed("client left")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, WsrelayError):               # a bug: answer, never hang
                log.exception("a session resume failed unexpectedly")
            self.metrics.resume_failed(_resume_failure(exc))
            self._refuse(gate, exc)

    async def _hop(self, gate: Gate, session_id: str) -> bool:
        """Carry a resume for a session this relay does not hold to the fleet's relay that does
        (edge/hop.py); False when none does (or this request was carried here already).
        edge/hop.py is imported here, by the first resume that needs it: a module every relay
        loads costs each session a share of the cyclic GC's full collections."""
        from .hop import HopError, hop_head, hopped
        from .hop import connect as connect_hop
        own = self.config.fleet.internal_url
        request = gate.request
        if self.fleet is None or request is None or hopped(request.raw_headers):
            return False
        try:
            address = await self.fleet.resumable.lookup_text(session_id)
        except RedisDown as exc:
            raise RequestRefused(f"the fleet's Redis did not answer where session {session_id} is: {exc}",
                                 status=503, public_reason="Service Unavailable: try again",
                                 headers={"Retry-After": CAPACITY_RETRY_AFTER}) from None
        if not address or address == own:
            return False
        head = hop_head(request.method, request.target, request.raw_headers, self.fleet.relay_id)
        try:
            hop = await connect_hop(address, timeout=self.config.relay.upstream_connect_timeout)
        except HopError as exc:
            raise RequestRefused(f"resume of session {session_id}: {exc}", status=502,
                                 public_reason="Bad Gateway: the session's relay cannot be reached") from None
        taken = gate.hand_off()
        if taken is None:                                       # the client left meanwhile
            hop.close()
        else:
            self._hops.add(hop)
            hop.on_ended = self._hops.discard
            hop.join(taken[0], taken[1], head)
            self.metrics.resume_carried()
        return True

    def _held_session(self, gate: Gate, held: "Held", upgrade: "UpgradeRequest") -> dict:
        """A provider call's Session arguments: no sub-protocol (the gate's 101 chose none), the
        gate's close for a relay's close before the bot answers, the times of the held frames."""
        def close(code: int, reason: str) -> None:
            self._refuse(gate, SessionRefused(reason, code=code), held)

        return {"upgrade": dataclasses.replace(upgrade, subprotocols=None),
                "held": HeldClient(close, gate.upgraded_ns, gate.first_held_ns)}

    def _refuse(self, gate: Gate, exc: BaseException, held: "Held | None" = None) -> None:
        """Refuse ``gate``'s client in the state it is in: before its upgrade an HTTP answer
        (the refusal's status, public reason and headers), after it a close frame
        (``as_close()``) with one log line naming the provider. Anything but a refusal of
        errors.py's tree is a bug, answered 500 or 1011."""
        if gate.state == "holding":
            code, public = exc.as_close() if isinstance(exc, (RequestRefused, UpstreamError, SessionRefused)) \
                else (1011, "internal error")
            self.rejections[code] += 1
            reason = str(exc) if isinstance(exc, WsrelayError) else f"internal error: {exc!r}"[:200]
            log_session_refused(code=code, reason=reason, client=gate.peer,
                                target=held.target if held else None, provider=held.provider if held else "-",
                                service_host=held.agent.service_host if held and held.agent else None)
            gate.refuse_held(code, public, linger=self.config.relay.close_timeout)
        elif isinstance(exc, (RequestRefused, UpstreamError)):
            gate.refuse(exc.status, exc.public_reason, reason=str(exc), headers=exc.headers)
        elif not isinstance(exc, SessionRefused):
            gate.refuse(500, "Internal Server Error", reason=f"internal error: {exc!r}"[:200])

    async def _take_slot(self, agent: "AgentConfig") -> tuple[str, str | None]:
        """A capacity slot for one session of ``agent`` (and its fleet lease); CapacityError if full."""
        host = agent.service_host
        if not self.capacity.try_acquire(host, agent.max_sessions):
            raise CapacityError(f"{host} is at max_sessions={agent.max_sessions}",
                                headers={"Retry-After": CAPACITY_RETRY_AFTER})
        lease = None
        if self.leases is not None and agent.max_sessions is not None:
            try:
                lease = await self.leases.acquire(host, agent.max_sessions)
            except BaseException:
                self.capacity.release(host)
                raise
        return host, lease

    def _give_slot(self, host: str, lease: str | None) -> None:
        self.capacity.release(host)
        if lease is not None and self.leases is not None:
            self.leases.release(lease)

    def _signed_urls(self, gate: Gate, upgrade: "UpgradeRequest") -> list[str]:
        """The URLs a provider may have signed for this request (twilio-signature agents)."""
        target = gate.request.target.decode("ascii", "replace") if gate.request is not None else "/"
        public_url = self.config.relay.public_url
        if public_url:
            public_url = public_url.replace("{region}", self.config.relay.region or "")
        return candidate_urls(target, host=upgrade.host, public_url=public_url)

    def _session_over(self, session: Session) -> None:
        """Give back the session's capacity slot, once; log it if it ran."""
        if session not in self.sessions:
            return
        self.sessions.discard(session)
        if session.resume is not None:
            self._resumable.pop(session.id, None)
            if self.fleet is not None:
                self.fleet.resumable.withdraw(session.id)
        if session.agent.session_api and self._session_api is not None:
            self._session_api.over(session)
        self._give_slot(session.agent.service_host, self._lease_of.pop(session, None))
        if session.bot.transport is not None:
            self.upstreams.release(session.bot.transport)
        if not self.sessions:
            self._idle.set()
        if session.ended:
            self._session_ended(session)

    # -- what is logged and counted -------------------------------------------------------

    def _session_started(self, session: Session) -> None:
        agent = session.agent
        self.metrics.session_started(agent.name, agent.organization)
        if self.webhooks is not None:
            from ..webhooks.events import SessionStart
            self.webhooks.session_started(SessionStart(
                session.id, agent.name, agent.organization, session.endpoint, self.config.relay.region))

    def _session_resumed(self, session: Session) -> None:
        self.metrics.session_resumed(session.agent.name, session.agent.organization)

    def _session_ended(self, session: Session) -> None:
        timing = session.timing()
        summary = session.summary(timing)
        log_session(summary)
        if session.resume is not None and session.resume.ended_detached:
            self.metrics.session_ended_detached(session.agent.name, session.agent.organization)
        if session.connected_at is not None:
            self.metrics.session_ended(session.agent.name, session.agent.organization,
                                       session.outcome, summary["duration_s"], timing)
            if self.webhooks is not None:
                from ..webhooks.events import SessionEnd
                self.webhooks.session_ended(SessionEnd.from_summary(
                    summary, endpoint=session.endpoint, outcome=session.outcome, region=self.config.relay.region))

    def _active_by_agent(self) -> dict[tuple[str, str], int]:
        return {(a.name, a.organization): n for a, n in
                Counter(session.agent for session in self.sessions).items()}

    def _refused(self, gate: Gate, status: int, reason: str) -> None:
        self.rejections[status] += 1
        log_refusal(status=status, reason=reason, client=gate.peer,
                    target=gate.request.target.decode("latin-1")[:200] if gate.request else None)


def _resume_failure(exc: BaseException) -> str:
    """A refused resume's metric label: what kind of refusal, never the token."""
    if isinstance(exc, ResumeRefused):
        return "conflict" if exc.status == 409 else "session gone"
    if isinstance(exc, AuthError):
        return "token unavailable" if exc.status == 503 else "token"
    if isinstance(exc, RequestRefused):
        return "draining" if isinstance(exc, Draining) else "bad request"
    return "internal error"
