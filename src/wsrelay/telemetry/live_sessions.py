"""Live sessions for the admin port: ``GET /sessions`` (paged), ``GET|DELETE /sessions/{id}``.

The relay's book (``Relay.sessions``) is the one list of live sessions; this module only
reads it when asked, so a session costs nothing here while nobody looks.

Paging under churn: sessions are ordered by (creation time, id), which never changes for
a session, and a cursor names the last one returned. A page holds the next sessions after
the cursor that are still alive, so a session alive from the first page to the last is
returned exactly once, one that ended is simply absent, and one that started meanwhile
comes on a later page (it sorts after every cursor handed out before it existed).
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from typing import Any, Awaitable, Callable, Iterable

from ..core.session_machine import BOT, CLIENT, Outcome, SideState

MAX_PAGE = 1000
OPERATOR_CLOSE = (1008, "ended by the operator")


class BadCursor(ValueError):
    """A cursor this relay did not hand out (or a limit out of range)."""


def session_view(session: Any, now: float | None = None) -> dict:
    """The JSON of one live session: who, what, how long, and the pump's figures."""
    now = time.monotonic() if now is None else now
    sides = session.machine.sides
    return {
        "id": session.id,
        "agent": session.agent.name,
        "organization": session.agent.organization,
        "client": session.client_address,
        "age_s": round(now - session.created_at, 3),
        "subprotocol": session.subprotocol,
        "state": _state(sides[CLIENT].state, sides[BOT].state),
        **session.timing(),
        **({"resumes": session.resume.resumes, "detached_s": round(session.resume.away(now), 3)}
           if getattr(session, "resume", None) is not None else {}),
    }


def _state(client: SideState, bot: SideState) -> str:
    if bot is SideState.CONNECTING:
        return "connecting"
    if client is SideState.OPEN and bot is SideState.OPEN:
        return "open"
    if client is SideState.DETACHED:
        return "detached"
    return "closing"


def _key(session: Any) -> tuple[float, str]:
    return (session.created_at, session.id)


def _encode(created: float, sid: str) -> str:
    return base64.urlsafe_b64encode(f"{created!r}|{sid}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    if len(cursor) > 200:
        raise BadCursor("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, sid = raw.split("|", 1)
        after = float(created)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("not a cursor from this relay: start again without one") from None
    if not math.isfinite(after):          # nan would match nothing and inf end every walk: never handed out
        raise BadCursor("not a cursor from this relay (its time is not a finite number): start again without one")
    return after, sid


class LiveSessions:
    """Reads the relay's book of sessions for the admin endpoints, and ends one on request.

    With ``--workers N`` the admin port is worker 0's: ``remote`` lists the other workers'
    sessions and ``remote_end`` ends one of theirs (telemetry/metrics_group.py asks them over
    their Unix sockets), each with the number of workers that did not answer in time
    (``incomplete`` in the answers). Creation times are CLOCK_MONOTONIC, one clock for the
    whole machine, so every worker's sessions share one order.
    """

    def __init__(self, sessions: Callable[[], Iterable[Any]], *,
                 remote: Callable[[], Awaitable[tuple[list[dict], int]]] | None = None,
                 remote_end: Callable[[str], Awaitable[tuple[bool, int]]] | None = None) -> None:
        self._sessions = sessions
        self._remote = remote
        self._remote_end = remote_end

    def local_views(self) -> list[dict]:
        """This process's live sessions, each with its ``_order`` key (for merging)."""
        now = time.monotonic()
        return [dict(session_view(s, now), _order=list(_key(s))) for s in self._sessions() if not s.ended]

    async def _all_views(self) -> tuple[list[dict], int]:
        """Every live session in order, and how many workers did not answer."""
        views = self.local_views()
        missing = 0
        if self._remote is not None:
            remote, missing = await self._remote()
            views += remote
        views.sort(key=lambda v: (v["_order"][0], v["_order"][1]))
        return views, missing

    async def page(self, cursor: str | None = None, limit: int = MAX_PAGE) -> dict:
        """``{"sessions": [...], "next": cursor or None, "total": live count, "incomplete": n}``,
        ``n`` the workers left out because they did not answer (0 without ``--workers``)."""
        if not 1 <= limit <= MAX_PAGE:
            raise BadCursor(f"limit must be from 1 to {MAX_PAGE}")
        after = decode_cursor(cursor) if cursor else None
        live, missing = await self._all_views()
        rest = [v for v in live if after is None or (v["_order"][0], v["_order"][1]) > after]
        chosen = rest[:limit]
        next_cursor = _encode(*chosen[-1]["_order"]) if len(rest) > limit else None
        return {"sessions": [_public(v) for v in chosen], "next": next_cursor, "total": len(live),
                "incomplete": missing}

    async def view(self, session_id: str) -> tuple[dict | None, int]:
        """The session, or None; and how many workers did not answer (it may be on one of them)."""
        views, missing = await self._all_views()
        for v in views:
            if v["id"] == session_id:
                return _public(v), missing
        return None, missing

    def end_local(self, session_id: str) -> bool:
        for session in self._sessions():
            if session.id == session_id and not session.ended:
                session.close(*OPERATOR_CLOSE, Outcome.ENDED_BY_OPERATOR)
                return True
        return False

    async def end(self, session_id: str) -> tuple[bool, int]:
        """Close one session with 1008 to both sides: (ended, workers that did not answer);
        not ended when no worker that answered has it live."""
        if self.end_local(session_id):
            return True, 0
        if self._remote_end is None:
            return False, 0
        return await self._remote_end(session_id)


def _public(view: dict) -> dict:
    return {k: v for k, v in view.items() if k != "_order"}
