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
import contextlib
import logging
import socket
import ssl
import time
from typing import Callable
from urllib.parse import urlsplit

from picows import WSHandshakeError, WSListener, ws_connect

from ..core.balancer import Balancer, Instance
from ..errors import UpstreamRejected, UpstreamTimeout, UpstreamUnreachable
from .discovery import Resolver, host_of

log = logging.getLogger("wsrelay.upstream")
# A LoggerAdapter stops picows from creating one child Logger per connection.
_picows_log = logging.LoggerAdapter(logging.getLogger("wsrelay.picows"), {})


def join_query(url: str, query: str) -> str:
    """``url`` with the client's query appended (after any query the URL already has)."""
    if not query:
        return url
    return f"{url}&{query}" if "?" in url else f"{url}?{query}"


class UpstreamConnector:
    """Connects sessions to bot instances; one per relay. State: the balancer and the resolver."""

    def __init__(self, *, connect_timeout: float, max_frame_size: int, read_buffer_size: int,
                 ssl_context: ssl.SSLContext | None = None, keepalive_interval: float = 0.0,
                 keepalive_timeout: float = 10.0, resolver: Resolver | None = None,
                 balancer: Balancer | None = None) -> None:
        self._keepalive = (keepalive_interval, keepalive_timeout)
        self._timeout = connect_timeout
        self._max_frame_size = max_frame_size
        self._read_buffer_size = read_buffer_size
        self._ssl_context = ssl_context
        self.resolver = resolver or Resolver()
        self.balancer = balancer or Balancer()
        self._upstreams: dict[str, tuple[str, ...]] = {}     # service host -> upstreams its pool is built from
        self._holding: dict[object, Instance] = {}          # bot transport -> its instance, while live

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
        for host in {h for h in map(host_of, upstreams) if h and h not in self.resolver.addresses}:
            await self.resolver.resolve(host)
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
        """Open the bot's WebSocket; returns its WSTransport or raises UpstreamError."""
        timed_out = False
        await self._pool_for(service_host, upstreams)
        for instance in self.order(service_host):
            url = instance.url
            full_url = join_query(url, query)
            address = instance.address or _ip_literal(url)
            opened: list[socket.socket] = []
            try:
                async with asyncio.timeout(self._timeout), _dropped_when_cancelled(opened):
                    transport, listener = await ws_connect(
                        listener_factory, full_url,
                        socket_factory=_connected_to(address, url, opened) if address else None,
                        ssl_context=self._ssl_context if full_url.startswith("wss:") else None,
                        websocket_handshake_timeout=self._timeout,
                        logger_name=_picows_log,
                        enable_auto_pong=False,
                        enable_auto_ping=self._keepalive[0] > 0,
                        auto_ping_idle_timeout=self._keepalive[0] or 20,
                        auto_ping_reply_timeout=self._keepalive[1],
                        max_frame_size=self._max_frame_size,
                        extra_headers=headers,
                        max_redirects=0,
                        read_buffer_init_size=self._read_buffer_size,
                        use_aiofastnet=False,     # measured: no gain over uvloop here
                    )
            except WSHandshakeError as exc:
                if exc.response is not None and int(exc.response.status) >= 300:
                    self.balancer.succeeded(instance)          # it answered: alive, just unwilling
                    raise UpstreamRejected(
                        f"bot at {instance.describe()} answered the upgrade with HTTP {int(exc.response.status)}",
                        int(exc.response.status)) from exc
                self._failed(service_host, instance, f"sent an invalid handshake response: {exc}")
                continue
            except (TimeoutError, asyncio.TimeoutError):
                self._failed(service_host, instance, f"did not complete the handshake within {self._timeout:g}s")
                timed_out = True
                continue
            except OSError as exc:
                self._failed(service_host, instance, f"unreachable: {exc}")
                continue
            if listener is None:
                self._failed(service_host, instance, "closed the connection during the handshake")
                continue
            self.balancer.succeeded(instance)
            self.balancer.opened(instance)
            self._holding[transport] = instance
            return transport
        if timed_out:
            raise UpstreamTimeout(f"no instance of {service_host} answered within {self._timeout}s")
        raise UpstreamUnreachable(f"no instance of {service_host} could be reached")


def _ip_literal(url: str) -> str | None:
    """The host of ``url`` when it is an IP address (connected to by ``_connected_to`` too)."""
    host = urlsplit(url).hostname
    return host if host and host_of(url) is None else None


@contextlib.asynccontextmanager
async def _dropped_when_cancelled(opened: list[socket.socket]):
    """Shut down the sockets of a connect that is cancelled (the session ended, the client
    left, the timeout): picows leaves a connection whose handshake is under way open when
    ``ws_connect`` is cancelled, so the bot would keep it until its own timeout. The socket
    objects are the transport's own, so one already closed has no descriptor left to hit."""
    try:
        yield
    except asyncio.CancelledError:
        for sock in opened:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise


def _connected_to(address: str, url: str, opened: list[socket.socket] | None = None):
    """A picows socket factory connecting to ``address`` (one resolved instance of ``url``);
    each socket it makes is appended to ``opened``.

    The URL keeps its host name, so the bot's ``Host`` header and TLS server name are the
    name the operator wrote, while the TCP connection goes to the chosen address.
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "wss" else 80)

    async def factory(_parsed) -> socket.socket:
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if opened is not None:
            opened.append(sock)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (address, port))
        except BaseException:
            sock.close()
            raise
        return sock
    return factory
