"""Upstream discovery: a bot URL's host name stands for every address it resolves to.

As Envoy's ``STRICT_DNS`` clusters and nginx's ``resolve`` do: each A and AAAA address
of ``ws://bots.default.svc:8080/ws`` is one instance, and the names are re-resolved
every ``[relay] dns_refresh_seconds``, so the pods of a Kubernetes headless Service are
found as they come and go. Without ``[relay] dns_servers`` the system resolver answers
(``getaddrinfo``: ``/etc/hosts`` and the cluster DNS alike); with them, dnspython asks
those servers directly. A lookup that fails keeps the addresses last found (a DNS
hiccup must not empty a healthy pool); every lookup is bounded by ``timeout``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from urllib.parse import urlsplit

from ..config import parse_dns_server

log = logging.getLogger("wsrelay.discovery")


def host_of(url: str) -> str | None:
    """The host name of ``url`` when it must be resolved; None for IP literals."""
    host = urlsplit(url).hostname
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        return host


class Resolver:
    """Resolves host names to all their addresses and remembers the last good answer."""

    def __init__(self, servers: tuple[str, ...] = (), *, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self.addresses: dict[str, list[str]] = {}      # host name -> addresses, last good answer
        self._dns = None
        if servers:
            import dns.asyncresolver
            import dns.nameserver
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(*parse_dns_server(s) or (s, 53))
                                    for s in servers]
            resolver.lifetime = timeout
            resolver.timeout = min(1.0, timeout)
            self._dns = resolver

    async def resolve(self, host: str) -> list[str]:
        """Every address of ``host`` (IPv4 first), remembered; the last good answer if this one fails."""
        try:
            async with asyncio.timeout(self.timeout):
                found = await (self._query(host) if self._dns is not None else self._system(host))
        except Exception as exc:           # NXDOMAIN, timeouts, no servers: keep what was known
            if host not in self.addresses or self.addresses[host]:
                log.warning("cannot resolve %s (%s); keeping %d known address(es)", host,
                            type(exc).__name__ if not str(exc) else str(exc)[:200],
                            len(self.addresses.get(host, [])))
            self.addresses.setdefault(host, [])
            return self.addresses[host]
        found = sorted(set(found), key=lambda a: (":" in a, ipaddress.ip_address(a).packed))
        if found != self.addresses.get(host):
            log.info("upstream %s resolves to %s", host, ", ".join(found) or "nothing")
        self.addresses[host] = found
        return found

    async def _query(self, host: str) -> list[str]:
        """A and AAAA, asked at once: one family that fails or times out loses only its own addresses."""
        import dns.resolver
        assert self._dns is not None
        tasks = [asyncio.ensure_future(self._dns.resolve(host, rdtype, search=False)) for rdtype in ("A", "AAAA")]
        try:
            _, pending = await asyncio.wait(tasks, timeout=self.timeout * 0.9)    # inside resolve()'s own bound
        finally:                                    # also when cancelled: no lookup outlives this call
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        answers: list = [TimeoutError(f"no answer within {self.timeout * 0.9:g}s") if task in pending
                         else task.exception() or task.result() for task in tasks]
        found = [record.to_text() for answer in answers if not isinstance(answer, BaseException)
                 for record in answer]
        failures = [answer for answer in answers if isinstance(answer, BaseException)]
        if found:
            return found
        for failure in failures:
            if not isinstance(failure, (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN)):
                raise failure                  # a timeout or an unreachable server: keep what was known
        if len(failures) == 2 and isinstance(failures[0], dns.resolver.NXDOMAIN):
            raise failures[0]
        return found

    async def _system(self, host: str) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
