"""The event loop's side of the sessions' deadline wheel (core/deadline_wheel.py).

One ``Deadlines`` per relay: every session's timers (close, watch, time limit, idle)
go through it, and the loop holds a single timer, for the earliest pending tick. A
deadline's owner gets ``deadline_passed(name)`` once its time has passed (at most one
``resolution`` late); a callback's error is logged and does not stop the others.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from ..core.deadline_wheel import DeadlineWheel

log = logging.getLogger("wsrelay.deadlines")

RESOLUTION = 0.05          # seconds: how late a deadline may fire; the loop wakes at most this often for them


class Owner(Protocol):
    def deadline_passed(self, name: Any) -> None: ...


class Deadlines:
    """Schedules ``(owner, name)`` deadlines on one loop timer."""

    __slots__ = ("_wheel", "_handle", "_armed_at", "_loop")

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self._wheel: DeadlineWheel[tuple[Owner, Any]] = DeadlineWheel(resolution)
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        # The loop, from the first deadline on: on Python 3.11 every get_running_loop() is a
        # getpid() system call (its fork check), and a session adds a few deadlines.
        self._loop: asyncio.AbstractEventLoop | None = None

    def __len__(self) -> int:
        return len(self._wheel)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, looked up once: what a session's other loop calls use too."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def add(self, seconds: float, owner: Owner, name: Any) -> int:
        """Call ``owner.deadline_passed(name)`` in ``seconds``; returns the handle for ``remove``."""
        loop = self.loop
        tick = self._wheel.add(loop.time(), seconds, (owner, name))
        self._arm(loop)
        return tick

    def remove(self, handle: int, owner: Owner, name: Any) -> None:
        """Forget a deadline (nothing if it has passed already). The loop timer stays armed:
        waking once for nothing is cheaper than re-arming on every cancel."""
        self._wheel.remove(handle, (owner, name))

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        when = self._wheel.next_deadline()
        if when is None or (self._armed_at is not None and self._armed_at <= when):
            return
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = self._armed_at = None
        loop = self._loop
        assert loop is not None                # armed by add(), which set it
        for owner, name in self._wheel.due(loop.time()):
            try:
                owner.deadline_passed(name)
            except Exception:                  # a bug in one session must not stop the others' deadlines
                log.exception("a session's deadline handler failed")
        self._arm(loop)

    def close(self) -> None:
        """Stop the loop timer (the relay has stopped)."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._armed_at = self._loop = None
