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
import time
from typing import Any, Callable, Iterable

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
    }


def _state(client: SideState, bot: SideState) -> str:
    if bot is SideState.CONNECTING:
        return "connecting"
    if client is SideState.OPEN and bot is SideState.OPEN:
        return "open"
    return "closing"


def _key(session: Any) -> tuple[float, str]:
    return (session.created_at, session.id)


def encode_cursor(session: Any) -> str:
    created, sid = _key(session)
    return base64.urlsafe_b64encode(f"{created!r}|{sid}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    if len(cursor) > 200:
        raise BadCursor("cursor too long")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, sid = raw.split("|", 1)
        return float(created), sid
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("not a cursor from this relay: start again without one") from None


class LiveSessions:
    """Reads the relay's book of sessions for the admin endpoints, and ends one on request."""

    def __init__(self, sessions: Callable[[], Iterable[Any]]) -> None:
        self._sessions = sessions

    def page(self, cursor: str | None = None, limit: int = MAX_PAGE) -> dict:
        """``{"sessions": [...], "next": cursor or None, "total": live count}``."""
        if not 1 <= limit <= MAX_PAGE:
            raise BadCursor(f"limit must be from 1 to {MAX_PAGE}")
        after = decode_cursor(cursor) if cursor else None
        live = sorted((s for s in self._sessions() if not s.ended), key=_key)
        rest = [s for s in live if after is None or _key(s) > after]
        chosen = rest[:limit]
        now = time.monotonic()
        return {
            "sessions": [session_view(s, now) for s in chosen],
            "next": encode_cursor(chosen[-1]) if len(rest) > limit else None,
            "total": len(live),
        }

    def find(self, session_id: str) -> Any | None:
        for session in self._sessions():
            if session.id == session_id and not session.ended:
                return session
        return None

    def end(self, session_id: str) -> bool:
        """Close one session with 1008 to both sides; False when there is no such live session."""
        session = self.find(session_id)
        if session is None:
            return False
        session.close(*OPERATOR_CLOSE, Outcome.ENDED_BY_OPERATOR)
        return True
