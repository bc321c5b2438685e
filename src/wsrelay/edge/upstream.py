"""The upstream connector: pick a bot instance of the agent, connect, negotiate.

An agent's instances are its ``upstreams``, each host name expanded to all its addresses
(edge/discovery.py, re-resolved every ``dns_refresh_seconds``). They are tried in the
order core/balancer.py gives: fewest active sessions first, ties in rotation, ejected
instances last; an instance that cannot be reached is ejected for a while (passive
health check with exponential backoff) and the next one is tried. The outcome is the bot's ``WSTransport`` (its ``101`` has arrived and the pump's bot
side is already linked), or an ``UpstreamError`` whose ``status`` the client gets:
502 when no instance could be reached, 504 when connecting timed out, or the bot's
own HTTP status when it refused the upgrade.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Callable

from picows import WSHandshakeError, WSListener
from picows.url import parse_url

from ..core.balancer import Balancer, Instance
from ..errors import UpstreamRejected, UpstreamTimeout, UpstreamUnreachable
from .deadlines import Deadlines
from .discovery import Resolver, host_of
from .handover import bot_protocol

log = logging.getLogger("wsrelay.upstream")
# A session tries instance after instance for at most this many upstream_connect_timeouts in all:
# a Service of many silent pods must not keep a client waiting for each of them.
MAX_CONNECT_TIMEOUTS = 3


class UpstreamConnector:
    """Connects sessions to bot instances; one per relay. State: the balancer and the resolver."""

    def __init__(self, *, connect_timeout: float, max_frame_size: int, read_buffer_size: int,
                 deadlines: Deadlines, ssl_context: ssl.SSLContext | None = None,
                 keepalive_interval: float = 0.0, keepalive_timeout: float = 10.0,
                 resolver: Resolver | None = None, balancer: Balancer | None = None) -> None:
        self._deadlines = deadlines
        self._keepalive = (keepalive_interval, keepalive_timeout)
        self._timeout = connect_timeout
        self._max_frame_size = max_frame_size
        self._read_buffer_size = read_buffer_size
        self._ssl_context = ssl_context
        self.resolver = resolver or Resolver()
        self.balancer = balancer or Balancer()
        self._upstreams: dict[str, tuple[str, ...]] = {}     # service host -> upstreams its pool is built from
        self._holding: dict[object, Instance] = {}          # bot transport -> its instance, while live
        self._parsed: dict[str, BotTarget] = {}             # upstream URL -> parsed once (bounded by the config)

    # -- instances ------------------------------------------------------------------------

    def _targets(self, upstreams: tuple[str, ...]) -> list[tuple[str, str | None]]:
        """(url, address) for every instance: each known address of a name, else the URL alone."""
        targets: list[tuple[str, str | None]] = []
        for url in upstreams:
            host = host_of(url)
            addresses = self.resolver.addresses.get(host, []) if host else []
            targets += [(url, a) for a in addresses] or [(url, None)]
        return targets

    async def _pool_for(self, service_host: str, upstreams: tuple[str, ...]) -> None:
        """Build the agent's pool on its first session, or when its upstreams changed (reload)."""
        if self._upstreams.get(service_host) == upstreams:
            return
        await asyncio.gather(*(self.resolver.resolve(host) for host in
                               {h for h in map(host_of, upstreams) if h and h not in self.resolver.addresses}))
        self._upstreams[service_host] = upstreams
        self.balancer.update(service_host, self._targets(upstreams))

    async def refresh(self, agents: dict[str, tuple[str, ...]]) -> None:
        """Re-resolve the host names of the agents with a pool and rebuild those (every ``dns_refresh_seconds``).

        ``agents`` is every agent known now (service host -> upstreams); pools of agents
        no longer known are dropped.
        """
        names = {h for sh, ups in agents.items() if sh in self._upstreams for h in map(host_of, ups) if h}
        await asyncio.gather(*(self.resolver.resolve(h) for h in names))
        self.balancer.forget(set(agents))
        for host in [h for h in self._upstreams if h not in agents]:
            del self._upstreams[host]
        for service_host, upstreams in agents.items():
            if service_host in self._upstreams:
                self._upstreams[service_host] = upstreams
                self.balancer.update(service_host, self._targets(upstreams))

    def order(self, service_host: str) -> list[Instance]:
        """The instances in the order to try them for the next session of this agent."""
        return self.balancer.order(service_host, time.monotonic())

    def _target(self, url: str) -> "BotTarget":
        target = self._parsed.get(url)
        if target is None:
            if len(self._parsed) > 10_000:                  # agents come and go by reload or from Redis
                self._parsed.clear()
            target = self._parsed[url] = BotTarget.of(url)
        return target

    def release(self, transport: object) -> None:
        """The session on ``transport`` ended: its instance has one session fewer."""
        instance = self._holding.pop(transport, None)
        if instance is not None:
            self.balancer.closed(instance)

    def _failed(self, service_host: str, instance: Instance, why: str) -> None:
        seconds = self.balancer.failed(service_host, instance, time.monotonic())
        log.warning("bot at %s %s; ejected for %gs", instance.describe(), why, seconds)

    # -- connecting -----------------------------------------------------------------------

    async def connect(self, service_host: str, upstreams: tuple[str, ...], *, query: str,
                      headers: list[tuple[str, str]],
                      listener_factory: Callable[[object, object], WSListener]):
        """Open the bot's WebSocket; returns the instance it is open to (the pump's bot side has
        its transport), or raises UpstreamError."""
        timed_out = False
        await self._pool_for(service_host, upstreams)
        loop = self._deadlines.loop
        deadline = loop.time() + self._timeout * MAX_CONNECT_TIMEOUTS
        for instance in self.order(service_host):
            remaining = deadline - loop.time()
            if remaining <= 0:                       # many silent instances: the client has waited enough
                timed_out = True
                break
            target = self._target(instance.url)
            protocol = None

            def protocol_factory():
                nonlocal protocol
                protocol = bot_protocol(
                    listener_factory, host_port=target.netloc, resource=target.resource(query),
                    keepalive=self._keepalive,
                    max_frame_size=self._max_frame_size, extra_headers=headers,
                    read_buffer_size=self._read_buffer_size)
                return protocol
            try:
                with ConnectLimit(self._deadlines, min(self._timeout, remaining)):
                    try:
                        await loop.create_connection(
                            protocol_factory, instance.address or target.host, target.port,
                            ssl=(self._ssl_context or True) if target.secure else None,
                            server_hostname=target.host if target.secure else None)
                        assert protocol is not None
                        await protocol.wait_until_handshake_complete()
                    except BaseException:
                        _drop(protocol)  # given up mid-handshake: the bot must not keep a half-open connection
                        raise
            except WSHandshakeError as exc:
                if exc.response is not None and int(exc.response.status) >= 300:
                    self.balancer.succeeded(instance)          # it answered: alive, just unwilling
                    raise UpstreamRejected(
                        f"bot at {instance.describe()} answered the upgrade with HTTP "
                        f"{int(exc.response.status)}", int(exc.response.status)) from exc
                self._failed(service_host, instance, f"sent an invalid handshake response: {exc}")
                continue
            except TimeoutError:
                self._failed(service_host, instance, f"did not complete the handshake within {self._timeout:g}s")
                timed_out = True
                continue
            except OSError as exc:
                self._failed(service_host, instance, f"unreachable: {exc}")
                continue
            except Exception as exc:           # e.g. a host name IDNA cannot encode: this instance fails
                self._failed(service_host, instance, f"cannot be connected to ({type(exc).__name__}: {exc})"[:300])
                continue
            assert protocol is not None
            transport, listener = protocol.transport, protocol.listener
            if listener is None:
                self._failed(service_host, instance, "closed the connection during the handshake")
                continue
            self.balancer.succeeded(instance)
            self.balancer.opened(instance)
            self._holding[transport] = instance
            return instance
        if timed_out:
            raise UpstreamTimeout(f"no instance of {service_host} answered within {self._timeout}s")
        raise UpstreamUnreachable(f"no instance of {service_host} could be reached")


class ConnectLimit:
    """``asyncio.timeout`` for one connect attempt, on the relay's deadline wheel.

    Entered in the connecting task; when ``seconds`` pass before the block ends, the task is
    cancelled, and that cancellation leaves the block as ``TimeoutError`` (the cancel count
    restored, as ``asyncio.timeout`` does). Unlike ``asyncio.timeout`` it adds no loop timer
    per attempt and never asks for the running loop (two ``getpid`` system calls on Python
    3.11); the wheel fires at most ``RESOLUTION`` (50 ms) late. A cancellation from anywhere
    else (the client left, the relay stops) stays a cancellation.
    """

    __slots__ = ("_deadlines", "_seconds", "_task", "_cancelling", "_handle", "_expired")

    def __init__(self, deadlines: Deadlines, seconds: float) -> None:
        self._deadlines = deadlines
        self._seconds = seconds
        self._expired = False
        self._handle: int | None = None

    def __enter__(self) -> "ConnectLimit":
        task = asyncio.current_task(self._deadlines.loop)
        assert task is not None, "a connect runs in a task"
        self._task = task
        self._cancelling = task.cancelling()
        self._handle = self._deadlines.add(self._seconds, self, None)
        return self

    def deadline_passed(self, name: None) -> None:
        if self._handle is not None:
            self._handle = None
            self._expired = True
            self._task.cancel()

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._handle is not None:
            self._deadlines.remove(self._handle, self, None)
            self._handle = None
        elif self._expired and self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


def _drop(protocol) -> None:
    """Close a bot connection whose handshake was given up (cancelled, timed out, refused)."""
    transport = getattr(protocol, "transport", None)
    if transport is not None:
        transport.underlying_transport.abort()


@dataclass(frozen=True, slots=True)
class BotTarget:
    """A bot URL, parsed once (by picows' own parser): where to connect, what to ask for."""

    host: str
    port: int
    netloc: str           # the Host header
    path: str
    query: str
    secure: bool

    @classmethod
    def of(cls, url: str) -> "BotTarget":
        parsed = parse_url(url)
        return cls(parsed.host, int(parsed.port), parsed.netloc, parsed.path or "/", parsed.query,
                   parsed.is_secure)

    def resource(self, query: str) -> str:
        """The request target: the URL's path and query, then the client's query."""
        joined = f"{self.query}&{query}" if self.query and query else (self.query or query)
        return f"{self.path}?{joined}" if joined else self.path
