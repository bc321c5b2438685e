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
    """Nonces shared by every relay using the same Redis (``relay.redis_url``).

    Keys are ``wsrelay:nonce:<nonce>`` and expire in Redis with their tokens, so Redis
    holds no more than the tokens of one lifetime. Every call is bounded by ``timeout``.
    """

    KEY_PREFIX = "wsrelay:nonce:"

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        import redis.asyncio      # only relays configured for Redis need the client

        self._errors = (redis.RedisError, OSError, TimeoutError)
        self._url = url
        self._client = redis.asyncio.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout)

    async def claim(self, nonce: str, ttl: float) -> bool:
        try:
            stored = await self._client.set(self.KEY_PREFIX + nonce, b"1", nx=True,
                                            px=max(1, int(ttl * 1000)))
        except self._errors as exc:
            raise NonceStoreUnavailable(
                f"the nonce store at {_redacted(self._url)} did not answer: {exc}") from None
        return bool(stored)

    async def close(self) -> None:
        await self._client.aclose()


def make_nonce_store(kind: str, redis_url: str | None) -> NonceStore:
    """The store ``relay.nonce_store`` names: "memory" or "redis" (at ``relay.redis_url``)."""
    if kind == "redis":
        return RedisNonceStore(redis_url or "")
    return MemoryNonceStore()


def _redacted(url: str) -> str:
    """``url`` without a password, for log lines."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
