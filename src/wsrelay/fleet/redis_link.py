"""One Redis client per relay process, with every call bounded in time.

The fleet's parts (session leases, the agent registry, shared nonces) all talk to the
same Redis (``[fleet] redis_url``; ``redis://`` or ``rediss://``, ``user:password@``
supported). A Redis that went away must cost a session a bounded wait, never a hang:
redis-py retries once at most and each call is cut at ``timeout``, so the
caller decides what an unanswered call means (503, keep the last known agents, ...).
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")


class RedisDown(Exception):
    """A Redis call failed or did not answer within the link's timeout (internal: callers translate it)."""


class RedisLink:
    """The relay's connection pool to one Redis, and the one place its errors are caught."""

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        import redis.asyncio             # only relays configured for Redis need the client
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.shown = redacted(url)
        self.timeout = timeout
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, TimeoutError)
        # One immediate retry: a pooled connection that died with a restarted Redis is
        # replaced at once instead of failing one session per stale connection. The whole
        # call, retry included, is still cut at ``timeout``.
        self.client: Any = redis.asyncio.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1))

    async def call(self, make: Callable[[], Awaitable[T]], *, timeout: float | None = None) -> T:
        """``await make()`` within the timeout; any failure is one RedisDown with a sentence."""
        try:
            async with asyncio.timeout(timeout or self.timeout):
                return await make()
        except self._errors as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {timeout or self.timeout:g}s"
            raise RedisDown(f"Redis at {self.shown} did not answer: {reason}") from None

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except self._errors:            # closing a pool whose server is gone
            pass


def redacted(url: str) -> str:
    """``url`` without a password, for log lines and messages."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
