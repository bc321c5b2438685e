"""Where a fleet's live sessions are, for the Session API and session resume: one Redis entry per session.

A Session API request may reach any relay of a fleet; the session's bot instance is found
here and the request proxied to it directly (docs/session-api.md). For each live session
of an agent with ``session_api = true``, the relay serving it keeps
``wsrelay:session:{sessionId}`` = the instance (admission/session_api.py's
``BotInstance`` as JSON), written when the bot has answered and deleted when the session
ends. Each entry expires after ``lease_seconds``; the relay renews all of its entries in
one pipelined call every ``lease_seconds / 3`` (as fleet/leases.py renews leases), so a
killed relay's entries lapse within ``lease_seconds`` and a Redis restarted empty has them
back at the next renewal (a renewal writes, not just extends).

Writes never hold up a session: they run in tasks, bounded by the link's timeout, and a
Redis that is away costs the Session API its answers (503), never a frame. An entry
withdrawn while a renewal is in flight is deleted once more after it, since that renewal
may have written it back.

Session resume (docs/resume.md) keeps a second directory the same way, under
``wsrelay:resume:{sessionId}``: the ``internal_url`` of the relay that holds a resumable session,
so a client coming back to another relay is carried there.
"""

from __future__ import annotations

import asyncio
import logging

from ..admission.session_api import BotInstance
from .redis_link import RedisDown, RedisLink

log = logging.getLogger("wsrelay.fleet")

KEY_PREFIX = "wsrelay:session:"
RESUME_PREFIX = "wsrelay:resume:"
RESTORE_SECONDS = 0.5          # renewal period while the last renewal failed


def entry_key(session_id: str) -> str:
    return KEY_PREFIX + session_id


class SessionDirectory:
    """This relay's entries in the fleet's session directory, and lookups of everyone's."""

    def __init__(self, link: RedisLink, *, lease_seconds: float, prefix: str = KEY_PREFIX) -> None:
        self.link = link
        self.prefix = prefix
        self.ttl_ms = int(lease_seconds * 1000)
        self.interval = max(0.2, lease_seconds / 3)
        self.held: dict[str, str] = {}             # session id -> its entry's text
        self.in_redis = True                       # the last renewal reached Redis
        self._renewing: set[str] | None = None     # ids in the renewal in flight
        self._undo: list[str] = []                 # ids withdrawn while it was in flight
        self._pending: set[asyncio.Task] = set()

    def publish(self, session_id: str, instance: BotInstance) -> None:
        """The session is live at ``instance``: write its entry now (in a task) and keep it renewed."""
        self.publish_text(session_id, instance.to_text())

    def publish_text(self, session_id: str, text: str) -> None:
        """Write ``text`` as the session's entry now (in a task) and keep it renewed."""
        self.held[session_id] = text
        self._later(self._write(session_id, text))

    def withdraw(self, session_id: str) -> None:
        """The session ended: delete its entry (best effort: one Redis missed lapses alone)."""
        if self.held.pop(session_id, None) is None:
            return
        if self._renewing is not None and session_id in self._renewing:
            self._undo.append(session_id)
        self._later(self._delete(session_id))

    async def lookup(self, session_id: str) -> BotInstance | None:
        """The instance serving ``session_id`` anywhere in the fleet, or None; RedisDown if Redis
        does not answer within the link's timeout."""
        text = await self.lookup_text(session_id)
        return BotInstance.from_text(text) if text is not None else None

    async def lookup_text(self, session_id: str) -> str | None:
        """The entry of ``session_id`` anywhere in the fleet, or None; RedisDown as ``lookup``."""
        text = await self.link.call(lambda: self.link.client.get(self.prefix + session_id))
        return text.decode() if isinstance(text, bytes) else text

    def _later(self, call) -> None:
        task = asyncio.get_running_loop().create_task(call)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, session_id: str, text: str) -> None:
        try:
            await self.link.call(lambda: self.link.client.set(self.prefix + session_id, text, px=self.ttl_ms))
        except RedisDown:
            return                                 # the renewal writes it when Redis is back
        if session_id not in self.held:            # ended while the write was on its way
            await self._delete(session_id)

    async def _delete(self, session_id: str) -> None:
        try:
            await self.link.call(lambda: self.link.client.delete(self.prefix + session_id))
        except RedisDown:
            pass                                   # it lapses within lease_seconds

    async def renew(self) -> int:
        """Write every held entry again with a fresh expiry, in one pipelined call; how many."""
        ids = list(self.held)
        if not ids:
            return 0
        self._renewing, self._undo = set(ids), []
        try:
            def pipeline():
                pipe = self.link.client.pipeline(transaction=False)
                for session_id in ids:
                    pipe.set(self.prefix + session_id, self.held.get(session_id) or "", px=self.ttl_ms)
                return pipe.execute()
            await self.link.call(pipeline)
        finally:
            undo, self._renewing, self._undo = self._undo, None, []
            for session_id in undo:
                self._later(self._delete(session_id))
        return len(ids)

    async def run(self) -> None:
        """Renew every ``interval`` (every RESTORE_SECONDS while the last renewal failed) until cancelled."""
        while True:
            await asyncio.sleep(self.interval if self.in_redis else min(self.interval, RESTORE_SECONDS))
            try:
                await self.renew()
            except RedisDown as exc:
                if self.in_redis:
                    log.warning("session directory not renewed, the Session API may answer 404 on other "
                                "relays until Redis is back: %s", exc)
                self.in_redis = False
                continue
            except Exception:                      # a bug: say so, keep renewing
                log.exception("session directory renewal failed")
                self.in_redis = False
                continue
            if not self.in_redis:
                log.info("Redis is back: %d session directory entries restored", len(self.held))
            self.in_redis = True

    async def close(self) -> None:
        """At shutdown: delete what is still held, wait for the writes in flight (bounded)."""
        for session_id in list(self.held):
            self.withdraw(session_id)
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=self.link.timeout + 0.5)
