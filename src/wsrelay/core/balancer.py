"""Choosing a bot instance: fewest active sessions, passive health checks, sans-I/O.

What Envoy's ``LEAST_REQUEST`` with outlier detection and nginx's ``least_conn`` with
``max_fails``/``fail_timeout`` do, reduced to what a relay of long sessions needs:

- An agent's instances are its upstream URLs, each host name expanded to every address
  it resolves to (edge/discovery.py feeds ``update``). Instances that disappear from
  DNS are dropped; sessions still on them keep running and are simply not counted.
- ``order`` lists the instances to try for the next session: healthy ones by fewest
  active sessions, ties broken by a rotating cursor (so equal instances take turns),
  then the ejected ones, soonest back first — a last resort, so a client gets ``502``
  only when no instance at all could be reached (Envoy's panic mode).
- An instance that fails to connect is ejected for ``base * 2**(n-1)`` seconds after its
  n-th consecutive failure, up to ``max_ejection``; one success makes it healthy again.

Time is passed in (``now``), so every rule is tested without a clock or a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BASE_EJECTION = 1.0              # seconds, after the first failure
MAX_EJECTION = 30.0              # the backoff stops doubling here


@dataclass(eq=False)
class Instance:
    """One place a session of an agent can go: a URL, and the address to connect to.

    ``address`` is None when the URL's host is an IP literal or could not be resolved
    (the connector then lets the system connect to the URL's host as written).
    """

    url: str
    address: str | None = None
    active: int = 0                       # sessions relayed to it now
    failures: int = 0                     # consecutive connect failures
    ejected_until: float = 0.0
    ejections: int = 0                    # how often it was ejected (metrics)

    @property
    def key(self) -> tuple[str, str | None]:
        return self.url, self.address

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def describe(self) -> str:
        return self.url if self.address is None else f"{self.url} at {self.address}"


@dataclass
class Pool:
    """The instances of one agent, with its rotation cursor and failure counters."""

    instances: list[Instance] = field(default_factory=list)
    cursor: int = 0
    connect_failures: int = 0
    ejections: int = 0


class Balancer:
    """Per-agent instance pools; the relay's connector asks it where to go."""

    def __init__(self, *, base_ejection: float = BASE_EJECTION, max_ejection: float = MAX_EJECTION) -> None:
        self.base_ejection = base_ejection
        self.max_ejection = max_ejection
        self.pools: dict[str, Pool] = {}

    def update(self, service_host: str, targets: list[tuple[str, str | None]]) -> None:
        """Set the agent's instances to ``targets`` ((url, address) pairs), keeping known ones' state."""
        pool = self.pools.setdefault(service_host, Pool())
        known = {inst.key: inst for inst in pool.instances}
        fresh: list[Instance] = []
        seen: set[tuple[str, str | None]] = set()
        for url, address in targets:
            if (url, address) in seen:
                continue
            seen.add((url, address))
            fresh.append(known.get((url, address)) or Instance(url, address))
        pool.instances = fresh

    def forget(self, keep: set[str]) -> None:
        """Drop the pools of agents not in ``keep`` (removed from the registry)."""
        for host in [h for h in self.pools if h not in keep]:
            del self.pools[host]

    def order(self, service_host: str, now: float) -> list[Instance]:
        """The instances to try for the next session, best first."""
        pool = self.pools.get(service_host)
        if pool is None or not pool.instances:
            return []
        count = len(pool.instances)
        start = pool.cursor % count
        pool.cursor += 1
        rotated = pool.instances[start:] + pool.instances[:start]
        healthy = [inst for inst in rotated if not inst.ejected(now)]
        ejected = [inst for inst in rotated if inst.ejected(now)]
        healthy.sort(key=lambda inst: inst.active)           # stable: ties keep the rotation
        ejected.sort(key=lambda inst: inst.ejected_until)
        return healthy + ejected

    def failed(self, service_host: str, instance: Instance, now: float) -> float:
        """A connect to ``instance`` failed: eject it; returns for how many seconds."""
        instance.failures += 1
        seconds = min(self.max_ejection, self.base_ejection * 2 ** min(instance.failures - 1, 30))
        instance.ejected_until = now + seconds
        instance.ejections += 1
        pool = self.pools.get(service_host)
        if pool is not None:
            pool.connect_failures += 1
            pool.ejections += 1
        return seconds

    @staticmethod
    def succeeded(instance: Instance) -> None:
        """A connect worked: the instance is healthy, its backoff starts over."""
        instance.failures = 0
        instance.ejected_until = 0.0

    @staticmethod
    def opened(instance: Instance) -> None:
        instance.active += 1

    @staticmethod
    def closed(instance: Instance) -> None:
        instance.active = max(0, instance.active - 1)

    def states(self, now: float) -> dict[str, tuple[int, int]]:
        """(healthy, ejected) instance counts per agent, for /metrics."""
        answer = {}
        for host, pool in self.pools.items():
            ejected = sum(1 for inst in pool.instances if inst.ejected(now))
            answer[host] = (len(pool.instances) - ejected, ejected)
        return answer
