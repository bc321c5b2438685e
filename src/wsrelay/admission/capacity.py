"""Per-agent session counts: the ``max_sessions`` limit, exact across worker processes.

``LocalCapacity`` counts in one process. ``SharedCapacity`` keeps the counts in shared
memory created *before* the worker processes fork (``--workers N``), so the limit is exact
for the whole relay, not per worker: a small open-addressing table of (key hash, count)
slots guarded by one process-shared lock. Taking and giving back a slot happens once per
session, so the lock is never on the frame path.
"""

from __future__ import annotations

import abc
import hashlib
import multiprocessing
from collections import Counter


class Capacity(abc.ABC):
    """Counts admitted sessions per service host."""

    @abc.abstractmethod
    def try_acquire(self, key: str, limit: int | None) -> bool:
        """Take a slot for ``key`` unless it already holds ``limit`` (None: no limit)."""

    @abc.abstractmethod
    def release(self, key: str) -> None:
        """Give one slot of ``key`` back."""


class LocalCapacity(Capacity):
    """Counts for one process."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def try_acquire(self, key: str, limit: int | None) -> bool:
        if limit is not None and self._counts[key] >= limit:
            return False
        self._counts[key] += 1
        return True

    def release(self, key: str) -> None:
        self._counts[key] -= 1
        if self._counts[key] <= 0:
            del self._counts[key]


class SharedCapacity(Capacity):
    """Counts shared by forked worker processes (create it before forking)."""

    def __init__(self, slots: int = 4096) -> None:
        ctx = multiprocessing.get_context("fork")
        self._slots = slots
        self._lock = ctx.Lock()
        self._keys = ctx.RawArray("q", slots)      # 0 = empty slot, else a 63-bit key hash
        self._counts = ctx.RawArray("l", slots)

    @staticmethod
    def _hash(key: str) -> int:
        digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
        return (int.from_bytes(digest, "big") >> 1) or 1

    def _slot(self, key: str, create: bool) -> int | None:
        h = self._hash(key)
        start = h % self._slots
        for i in range(self._slots):
            idx = (start + i) % self._slots
            if self._keys[idx] == h:
                return idx
            if self._keys[idx] == 0:
                if create:
                    self._keys[idx] = h
                    return idx
                return None
        raise RuntimeError("capacity table full: more than 4096 agents have had sessions")

    def try_acquire(self, key: str, limit: int | None) -> bool:
        with self._lock:
            idx = self._slot(key, True)
            if limit is not None and self._counts[idx] >= limit:
                return False
            self._counts[idx] += 1
            return True

    def release(self, key: str) -> None:
        with self._lock:
            idx = self._slot(key, False)
            if idx is not None and self._counts[idx] > 0:
                self._counts[idx] -= 1
