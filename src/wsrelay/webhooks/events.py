"""What a webhook says and when it is tried again: no I/O here.

A session hands over its facts once at each end of its life (``SessionStart`` when both
sides are upgraded, ``SessionEnd`` from the figures its log line already has), so a
webhook costs a session nothing per frame. ``new_event`` turns facts into an ``Event``:
an id (the ``webhook-id`` of every attempt), the JSON body, exactly as signed and sent
on every attempt, and its creation time, from which its 24 hours count.

The body::

    {"type": "session.ended", "timestamp": "2026-12-07T17:00:00.000Z",
     "data": {"sessionId": ..., "agent": ..., "organization": ..., "endpoint": ...,
              "region": ..., ...}}

``Schedule`` is the retry schedule: about 1 s, 5 s and 30 s after the first failures,
then doubling up to one try every 30 minutes, for 24 hours from the event's creation.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import msgspec

SESSION_STARTED = "session.started"
SESSION_ENDED = "session.ended"
EVENT_TYPES = (SESSION_STARTED, SESSION_ENDED)


class Direction(msgspec.Struct, frozen=True, rename="camel"):
    """One direction's figures, as the pump measured them (``up``: client to bot)."""

    frames: int = 0
    bytes: int = 0
    first_frame_ms: float | None = None    # from the client's 101; None: no data frame
    jitter_ms: float = 0.0                 # RFC 3550 interarrival jitter at the end
    max_gap_ms: float = 0.0                # the longest pause between two data frames
    gaps: int = 0                          # pauses longer than [relay] gap_threshold_ms


class CloseCodes(msgspec.Struct, frozen=True, rename="camel"):
    """The close codes each way (None: no close frame, or one without a code)."""

    from_client: int | None = None
    from_bot: int | None = None
    to_client: int | None = None
    to_bot: int | None = None


class SessionStart(msgspec.Struct, frozen=True, rename="camel"):
    """A session whose two sides are upgraded: the data of ``session.started``."""

    session_id: str
    agent: str
    organization: str
    endpoint: str                          # "generic", or the telephony provider: "twilio", "telnyx", ...
    region: str | None = None


class SessionEnd(msgspec.Struct, frozen=True, rename="camel"):
    """A session that is over: the data of ``session.ended``."""

    session_id: str
    agent: str
    organization: str
    endpoint: str
    region: str | None = None
    outcome: str = "closed"                # the session's outcome ("closed", "bot lost", ...)
    close_codes: CloseCodes = CloseCodes()
    first_closer: str | None = None        # "client", "bot" or "relay"
    duration_seconds: float = 0.0
    up: Direction = Direction()
    down: Direction = Direction()
    # Session resume (docs/resume.md), only for an agent with it on: clients that came back, and
    # the time the session spent without one (left out of other sessions' events).
    resumes: int | msgspec.UnsetType = msgspec.UNSET
    detached_seconds: float | msgspec.UnsetType = msgspec.UNSET

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any], *, endpoint: str, outcome: str,
                     region: str | None = None) -> "SessionEnd":
        """From the fields of a session's log line (``Session.summary()``), which are
        computed once at its end anyway."""
        def direction(key: str) -> Direction:
            return Direction(
                frames=summary.get(f"frames_{key}") or 0, bytes=summary.get(f"bytes_{key}") or 0,
                first_frame_ms=summary.get(f"first_frame_ms_{key}"),
                jitter_ms=summary.get(f"jitter_ms_{key}") or 0.0,
                max_gap_ms=summary.get(f"max_gap_ms_{key}") or 0.0, gaps=summary.get(f"gaps_{key}") or 0)
        return cls(
            session_id=summary["session_id"], agent=summary["agent"], organization=summary["organization"],
            endpoint=endpoint, region=region, outcome=outcome,
            close_codes=CloseCodes(from_client=summary.get("close_from_client"),
                                   from_bot=summary.get("close_from_bot"),
                                   to_client=summary.get("close_to_client"), to_bot=summary.get("close_to_bot")),
            first_closer=summary.get("first_closer"), duration_seconds=summary.get("duration_s") or 0.0,
            up=direction("up"), down=direction("down"),
            resumes=summary.get("resumes", msgspec.UNSET),
            detached_seconds=summary.get("detached_s", msgspec.UNSET))


class Event(msgspec.Struct, frozen=True):
    """One event on its way: what the outbox keeps and the sender signs and sends."""

    id: str                                # webhook-id: one per event, the same on every attempt
    type: str
    body: bytes                            # the JSON, exactly as signed and sent every time
    created: float                         # Unix time; the 24 hours count from here
    attempts: int = 0                      # attempts that failed so far


class _Envelope(msgspec.Struct, frozen=True):
    type: str
    timestamp: str
    data: Any


_encode = msgspec.json.Encoder().encode


def new_event(event_type: str, facts: SessionStart | SessionEnd, now: float) -> Event:
    """The event for ``facts`` created at ``now`` (Unix time), with a new id."""
    stamp = datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    body = _encode(_Envelope(type=event_type, timestamp=stamp, data=facts))
    return Event(id=f"msg_{uuid.uuid4().hex}", type=event_type, body=body, created=now)


@dataclass(frozen=True)
class Schedule:
    """When a failed event is tried again.

    After failed attempt ``n`` (1 = the first try) the next one is ``delay(n)`` seconds
    later: ``first[n-1]`` for the first few, then doubling from the last of them up to
    ``cap``. An event whose next try would fall more than ``horizon`` seconds after it
    was created is given up (``next_try`` is None). Tests scale it (``scaled``).
    """

    first: tuple[float, ...] = (1.0, 5.0, 30.0)
    cap: float = 1800.0
    horizon: float = 86400.0

    def __post_init__(self) -> None:
        if not self.first or any(not (0 < d <= self.cap) or not math.isfinite(d) for d in self.first):
            raise ValueError("a schedule's first delays must be positive and at most its cap")
        if any(b < a for a, b in zip(self.first, self.first[1:])):
            raise ValueError("a schedule's first delays must not decrease")
        if not (0 < self.horizon and math.isfinite(self.cap) and math.isfinite(self.horizon)):
            raise ValueError("a schedule's cap and horizon must be positive and finite")

    def delay(self, attempt: int) -> float:
        """Seconds from failed attempt ``attempt`` (1-based) to the next one."""
        if attempt < 1:
            raise ValueError("attempts are counted from 1")
        if attempt <= len(self.first):
            return self.first[attempt - 1]
        doublings = min(attempt - len(self.first), 64)        # 2**64 × any first delay is past any cap
        return min(self.cap, self.first[-1] * 2.0 ** doublings)

    def next_try(self, created: float, attempts: int, now: float) -> float | None:
        """When to try an event created at ``created`` again after its ``attempts``-th
        failure at ``now``; None once that would be past the horizon (give it up)."""
        at = now + self.delay(attempts)
        return at if at <= created + self.horizon else None

    def scaled(self, factor: float) -> "Schedule":
        """The same shape, every duration times ``factor`` (tests run hours in seconds)."""
        return Schedule(tuple(d * factor for d in self.first), self.cap * factor, self.horizon * factor)


DEFAULT_SCHEDULE = Schedule()
