"""Signed webhooks for session events: ``session.started`` and ``session.ended``.

The parts, each in its module:

- ``events``: what an event says (its JSON body, from a session's facts) and when a
  failed delivery is tried again (``Schedule``); no I/O.
- ``outbox``: where events wait until a receiver took them: an SQLite file on one relay,
  Redis in a fleet (a dead relay's events are delivered by another).
- ``sender``: ``Webhooks``, what the relay holds: ``session_started``/``session_ended``
  queue an event without waiting on anything; a task signs (Standard Webhooks) and POSTs
  them, retries, drops what is past its 24 hours, and counts all of it.
- ``settings``: ``WebhookSettings``, the ``[webhooks]`` table, checked.
"""

from __future__ import annotations

from .events import EVENT_TYPES, SESSION_ENDED, SESSION_STARTED, Direction, Schedule, SessionEnd, SessionStart
from .sender import Webhooks
from .settings import WebhookSettings

__all__ = ["EVENT_TYPES", "SESSION_ENDED", "SESSION_STARTED", "Direction", "Schedule", "SessionEnd",
           "SessionStart", "WebhookSettings", "Webhooks"]
