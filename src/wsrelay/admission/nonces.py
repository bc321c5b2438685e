"""Single-use nonces: a token verifies once for as long as it could be valid.

``NonceStore`` is an interface with an async ``claim``. ``MemoryNonceStore`` serves one
process: entries expire with their tokens, so memory is bounded by the tokens minted
within one lifetime, and a hard ``max_entries`` bound refuses claims beyond it — refusing
(403) is the safe side of a full store. ``RedisNonceStore`` serves several ``--workers``
or a fleet of relays: one ``SET key 1 NX PX ttl`` per claim, so a token is single use
across every relay that shares the Redis. A store that cannot answer within its timeout
refuses the session with 503 rather than letting a token through unchecked.
"""

from __future__ import annotations

import abc
import heapq
import time
from typing import Callable

from ..errors import NonceStoreUnavailable
from .redis_link import RedisDown, RedisLink


class NonceStore(abc.ABC):
    @abc.abstractmethod
    async def claim(self, nonce: str, ttl: float) -> bool:
        """True the first time ``nonce`` is claimed within ``ttl`` seconds; False on a replay."""

    async def close(self) -> None:
        """Release connections, if any."""


class MemoryNonceStore(NonceStore):
    """Nonces of one process, forgotten when their tokens expire."""

    def __init__(self, *, max_entries: int = 1_000_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._max = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._expiry)

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, nonce = heapq.heappop(heap)
            if self._expiry.get(nonce) == deadline:
                del self._expiry[nonce]

    async def claim(self, nonce: str, ttl: float) -> bool:
        now = self._clock()
        self._expire(now)
        if nonce in self._expiry or len(self._expiry) >= self._max:
            return False
        deadline = now + ttl
        self._expiry[nonce] = deadline
        heapq.heappush(self._heap, (deadline, nonce))
        return True


class RedisNonceStore(NonceStore):
    """Nonces shared by every relay using the same Redis (``[fleet] redis_url`` or ``relay.redis_url``).

    Keys are ``wsrelay:nonce:<nonce>`` and expire in Redis with their tokens, so Redis
    holds no more than the tokens of one lifetime. Every call is bounded by ``timeout``.
    A fleet relay passes its ``RedisLink``, so nonces, leases and agents share one pool.
    """

    KEY_PREFIX = "wsrelay:nonce:"

    def __init__(self, url: str, *, timeout: float = 2.0, link: RedisLink | None = None) -> None:
        self._owned = link is None
        self._link = link or RedisLink(url, timeout=timeout)

    async def claim(self, nonce: str, ttl: float) -> bool:
        client = self._link.client
        try:
            stored = await self._link.call(lambda: client.set(self.KEY_PREFIX + nonce, b"1", nx=True,
                                                              px=max(1, int(ttl * 1000))))
        except RedisDown as exc:
            raise NonceStoreUnavailable(f"the nonce store: {exc}") from None
        return bool(stored)

    async def close(self) -> None:
        if self._owned:
            await self._link.close()


def make_nonce_store(kind: str, redis_url: str | None, link: RedisLink | None = None) -> NonceStore:
    """The store ``relay.nonce_store`` names: "memory" or "redis" (at ``redis_url``, or over ``link``)."""
    if kind == "redis":
        if link is not None and (redis_url is None or redis_url == link.url):
            return RedisNonceStore(link.url, link=link)
        return RedisNonceStore(redis_url or "")
    return MemoryNonceStore()
