"""Single-use nonces shared by several ``--workers`` or a fleet of relays, in Redis.

One ``SET key 1 NX PX ttl`` per claim, so a token is single use across every relay that
shares the Redis. A store that cannot answer within its timeout refuses the session with
503 rather than letting a token through unchecked. One process alone uses
admission/nonces.py's ``MemoryNonceStore``.
"""

from __future__ import annotations

from ..admission.nonces import MemoryNonceStore, NonceStore
from ..errors import NonceStoreUnavailable
from .redis_link import RedisDown, RedisLink


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
