"""Single-use nonces: a token verifies once for as long as it could be valid.

``NonceStore`` is an interface with an async ``claim``. ``MemoryNonceStore`` serves one
process: entries expire with their tokens, so memory is bounded by the tokens minted
within one lifetime, and a hard ``max_entries`` bound refuses claims beyond it — refusing
(403) is the safe side of a full store. Several ``--workers`` or a fleet of relays share
one in Redis (fleet/nonces.py).
"""

from __future__ import annotations

import abc
import heapq
import time
from typing import Callable


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
