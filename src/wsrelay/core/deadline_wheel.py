"""Many sessions' deadlines on one clock: a timer wheel with no I/O.

Every live session holds at least one deadline for hours (``max_session_seconds``, and
``idle_timeout`` where set). One event-loop timer per session costs about 540 bytes
(uvloop's ``TimerHandle``, its libuv timer and a copied ``Context``); here a deadline is
one entry in the dict of its *tick* (``resolution`` seconds of the clock), and only the
earliest tick needs a loop timer (edge/deadlines.py arms it). A deadline fires in the
first tick that has fully passed its time: never early, at most ``resolution`` late.

Sans-I/O: the caller passes the clock's ``now`` (seconds) in every call.
"""

from __future__ import annotations

import heapq
import math
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)


class DeadlineWheel(Generic[K]):
    """Deadlines keyed by any hashable ``key``; ``due(now)`` hands back the passed ones."""

    __slots__ = ("resolution", "_slots", "_ticks")

    def __init__(self, resolution: float = 0.05) -> None:
        if not resolution > 0:
            raise ValueError(f"resolution must be positive, not {resolution!r}")
        self.resolution = resolution
        self._slots: dict[int, dict[K, None]] = {}    # tick -> keys due at its end
        self._ticks: list[int] = []                          # heap of ticks that have (or had) a slot

    def __len__(self) -> int:
        return sum(len(slot) for slot in self._slots.values())

    def add(self, now: float, seconds: float, key: K) -> int:
        """Schedule ``key`` for ``now + seconds``; returns its tick (for ``remove``)."""
        tick = math.ceil((now + max(0.0, seconds)) / self.resolution)
        slot = self._slots.get(tick)
        if slot is None:
            slot = self._slots[tick] = {}
            heapq.heappush(self._ticks, tick)
        slot[key] = None
        return tick

    def remove(self, tick: int, key: K) -> None:
        """Forget ``key`` scheduled at ``tick`` (nothing if it has fired or was removed)."""
        slot = self._slots.get(tick)
        if slot is not None:
            slot.pop(key, None)
            if not slot:
                del self._slots[tick]        # its heap entry is dropped when reached

    def next_deadline(self) -> float | None:
        """When the earliest pending tick ends (seconds of the clock), or None when empty."""
        ticks = self._ticks
        while ticks and ticks[0] not in self._slots:
            heapq.heappop(ticks)
        return ticks[0] * self.resolution if ticks else None

    def due(self, now: float) -> list[K]:
        """Take out and return every key whose deadline is at or before ``now``, earliest first."""
        ready: list[K] = []
        ticks = self._ticks
        limit = math.floor(now / self.resolution)
        while ticks and ticks[0] <= limit:
            slot = self._slots.pop(heapq.heappop(ticks), None)
            if slot:
                ready.extend(slot)
        return ready
