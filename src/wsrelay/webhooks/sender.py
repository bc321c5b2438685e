"""``Webhooks``: queue a session's events without waiting, and deliver them, signed.

What the relay calls::

    webhooks = Webhooks.open(settings, registry)      # at start-up: opens the outbox
    await webhooks.start()                            # the delivery task
    webhooks.session_started(SessionStart(...))       # sync, never waits
    webhooks.session_ended(SessionEnd.from_summary(...))
    await webhooks.close()                            # at shutdown: what is queued is kept

``session_started``/``session_ended`` build the event (its body encoded once) and append
it to a queue in memory; the delivery task moves the queue into the outbox (the SQLite
file's own thread, or Redis) and wakes at once. So no session ever waits on a disk or a
network. Events still in memory when the process is killed (not stopped) are lost; once
in the outbox they survive restarts.

The task claims due events from the outbox (a lease of the timeout and a margin: no
other relay takes them meanwhile), signs each attempt with the ``standardwebhooks``
package (``webhook-id`` the event's, ``webhook-timestamp`` the attempt's, so a receiver's
five-minute tolerance holds for a retry hours later) and POSTs it; a 2xx ends the event,
anything else (another status, a refused connection, no answer within ``timeout``) has it
tried again on the ``Schedule``; past its 24 hours it is dropped. It looks at the outbox
at least every second, so events due (a restart's backlog, another relay's abandoned
claims) go within a second or two.

Counted: delivered, retried (attempts that failed and will be tried again), dropped (by
reason: ``max_pending``, ``expired``, ``outbox_unavailable``) and pending, as attributes and, on the registry
given to ``open``, as ``wsrelay_webhooks_*`` series read when scraped. One log line per
dropped event, and one when the outbox fails and when it works again; none per delivery.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterator

import msgspec
from standardwebhooks import Webhook

from .. import __version__
from ..errors import ConfigError
from .events import (DEFAULT_SCHEDULE, SESSION_ENDED, SESSION_STARTED, Event, Schedule, SessionEnd, SessionStart,
                     new_event)
from .outbox import Outbox, RedisOutbox, SQLiteOutbox
from .settings import WebhookSettings

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("wsrelay.webhooks")

CONNECTIONS = 8          # attempts in flight at once, and the HTTP client's connection bound
POLL = 1.0               # seconds at most between two looks at the outbox
LEASE_MARGIN = 5.0       # a claim outlives the attempt's timeout by this much
CLOSE_GRACE = 1.0        # seconds ``close`` lets attempts in flight finish
RESPONSE_READ = 65536    # bytes of a receiver's answer read (and ignored) so the connection is reused

DROPPED_OVERFLOW = "max_pending"
DROPPED_EXPIRED = "expired"
DROPPED_UNSAVED = "outbox_unavailable"      # in memory at shutdown with the outbox failing, or after close()


class Webhooks:
    """Session events to one receiver, through an outbox; see the module's docstring."""

    def __init__(self, settings: WebhookSettings, outbox: Outbox, *, registry: Any = None,
                 schedule: Schedule = DEFAULT_SCHEDULE, clock: Callable[[], float] = time.time,
                 poll: float = POLL) -> None:
        self.settings = settings
        self.outbox = outbox
        self.schedule = schedule
        self._clock = clock
        self._poll = poll
        self._signer = Webhook(settings.secret)
        self._incoming: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._inflight: dict[str, asyncio.Task] = {}
        self._http: "aiohttp.ClientSession | None" = None
        self._failures: tuple[type[BaseException], ...] = (TimeoutError, OSError)
        self._closed = False
        self._store_down = False
        self._pending_stored = 0
        self._pending_read_at = 0.0
        self.delivered = 0
        self.retried = 0
        self.dropped_by_reason = {DROPPED_OVERFLOW: 0, DROPPED_EXPIRED: 0, DROPPED_UNSAVED: 0}
        if registry is not None:
            registry.register(WebhookCollector(self))

    @classmethod
    def open(cls, settings: WebhookSettings, registry: Any = None, *,
             schedule: Schedule = DEFAULT_SCHEDULE) -> "Webhooks":
        """The relay's webhooks: the outbox in Redis with ``redis_url``, else the SQLite ``spool``
        (created if missing; its waiting events are delivered once started)."""
        outbox: Outbox
        if settings.redis_url is not None:
            outbox = RedisOutbox(settings.redis_url, settings.max_pending)
        else:
            try:
                outbox = SQLiteOutbox(settings.spool, settings.max_pending)
            except sqlite3.Error as exc:
                raise ConfigError(f"the webhook spool {settings.spool!r} cannot be opened as an SQLite file ({exc}): "
                                  "name a file in a directory the relay can write to", key="webhooks.spool") from None
        return cls(settings, outbox, registry=registry, schedule=schedule)

    # -- counters -------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    @property
    def pending(self) -> int:
        """Events waiting: in the outbox (as read at most a second ago while running, and
        kept up to date with this relay's own additions and removals) and queued in memory."""
        return self._pending_stored + len(self._incoming)

    # -- the session's calls: never wait ---------------------------------------------------

    def session_started(self, facts: SessionStart) -> None:
        """Queue ``session.started`` (when enabled); call once both sides are upgraded."""
        if SESSION_STARTED in self.settings.events:
            self._enqueue(new_event(SESSION_STARTED, facts, self._clock()))

    def session_ended(self, facts: SessionEnd) -> None:
        """Queue ``session.ended`` (when enabled); call once the session is over."""
        if SESSION_ENDED in self.settings.events:
            self._enqueue(new_event(SESSION_ENDED, facts, self._clock()))

    def _enqueue(self, event: Event) -> None:
        if self._closed:                 # a session that ended after close(): nowhere to keep it
            self._dropped(event, DROPPED_UNSAVED)
            return
        self._incoming.append(event)
        if len(self._incoming) > self.settings.max_pending:
            self._dropped(self._incoming.popleft(), DROPPED_OVERFLOW)
        if self._task is not None:
            self._wake.set()

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start delivering: what is due in the outbox goes at once."""
        if self._task is not None or self._closed:
            return
        import aiohttp                   # here: a relay without webhooks never imports it (0.2 s)

        self._failures = (aiohttp.ClientError, TimeoutError, OSError)
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            headers={"User-Agent": f"wsrelay/{__version__}"})
        self._task = asyncio.create_task(self._run(), name="wsrelay-webhooks")

    async def close(self) -> None:
        """Stop: attempts in flight get a second to finish, the rest are handed back to the
        outbox, and what is queued in memory is written to it; then the outbox is closed.
        Call it once the last session has ended: an event queued after it is dropped (counted
        as ``outbox_unavailable``, logged)."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(list(self._inflight.values()), timeout=CLOSE_GRACE)
            unfinished = dict(self._inflight)
            for task in unfinished.values():
                task.cancel()
            await asyncio.gather(*unfinished.values(), return_exceptions=True)
            try:
                await self.outbox.release(list(unfinished), self._clock())
            except Exception as exc:      # their lease runs out instead
                self._store_failed(exc)
        try:
            await self._flush()
        except Exception as exc:
            self._store_failed(exc)
            while self._incoming:
                self._dropped(self._incoming.popleft(), DROPPED_UNSAVED)
        try:
            self._pending_stored = await self.outbox.pending()
        except Exception as exc:
            self._store_failed(exc)
        if self._http is not None:
            await self._http.close()
        await self.outbox.close()

    # -- the delivery task ----------------------------------------------------------------

    async def _run(self) -> None:
        while not self._closed:
            self._wake.clear()
            try:
                await self._flush()
                free = CONNECTIONS - len(self._inflight)
                if free > 0:
                    now = self._clock()
                    lease = now + self.settings.timeout + LEASE_MARGIN
                    for event in await self.outbox.claim(now, lease, free):
                        self._inflight[event.id] = asyncio.create_task(self._deliver(event))
                if self._clock() - self._pending_read_at >= self._poll:
                    self._pending_stored = await self.outbox.pending()
                    self._pending_read_at = self._clock()
                self._store_ok()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._store_failed(exc)
            # asyncio.timeout, not wait_for: 3.11's wait_for returns, swallowing a cancel,
            # when its awaitable is done at the same moment (an event queued as close() runs).
            try:
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _flush(self) -> None:
        """Move the queue in memory into the outbox (back to the queue if the outbox fails)."""
        if not self._incoming:
            return
        batch = list(self._incoming)
        self._incoming.clear()
        try:
            dropped = await self.outbox.add(batch)
        except BaseException:
            self._incoming.extendleft(reversed(batch))
            while len(self._incoming) > self.settings.max_pending:
                self._dropped(self._incoming.popleft(), DROPPED_OVERFLOW)
            raise
        self._pending_stored += len(batch) - len(dropped)
        for event in dropped:
            self._dropped(event, DROPPED_OVERFLOW)

    async def _deliver(self, event: Event) -> None:
        try:
            ok = await self._attempt(event)
            now = self._clock()
            if ok:
                await self.outbox.remove(event.id)
                self.delivered += 1
                self._pending_stored = max(0, self._pending_stored - 1)
                return
            failed = msgspec.structs.replace(event, attempts=event.attempts + 1)
            due = self.schedule.next_try(event.created, failed.attempts, now)
            if due is None:
                await self.outbox.remove(event.id)
                self._pending_stored = max(0, self._pending_stored - 1)
                self._dropped(failed, DROPPED_EXPIRED)
            else:
                await self.outbox.retry(failed, due)
                self.retried += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:           # the outbox failed: the claim runs out and it is tried again
            self._store_failed(exc)
        finally:
            self._inflight.pop(event.id, None)
            self._wake.set()

    async def _attempt(self, event: Event) -> bool:
        """One POST of ``event``, signed now: True when the receiver answered 2xx."""
        assert self._http is not None
        now = self._clock()
        headers = {
            "webhook-id": event.id,
            "webhook-timestamp": str(int(now)),
            "webhook-signature": self._signer.sign(event.id, datetime.fromtimestamp(now, timezone.utc), event.body),
            "content-type": "application/json",
        }
        try:
            async with self._http.post(self.settings.url, data=event.body, headers=headers,
                                       allow_redirects=False) as response:
                await response.content.read(RESPONSE_READ)
                return 200 <= response.status < 300
        except self._failures:
            return False

    # -- what is logged -------------------------------------------------------------------

    def _dropped(self, event: Event, reason: str) -> None:
        self.dropped_by_reason[reason] += 1
        try:
            session_id = msgspec.json.decode(event.body)["data"]["sessionId"]
        except (msgspec.DecodeError, KeyError, TypeError):
            session_id = None
        log.warning("webhook dropped", extra={"fields": {
            "event": "webhook_dropped", "reason": reason, "webhook_id": event.id, "type": event.type,
            "session_id": session_id, "attempts": event.attempts,
            "age_s": round(self._clock() - event.created, 3)}})

    def _store_failed(self, exc: BaseException) -> None:
        if not self._store_down:
            self._store_down = True
            log.error("webhook outbox failed", extra={"fields": {
                "event": "webhook_outbox_failed", "store": type(self.outbox).__name__,
                "reason": f"{type(exc).__name__}: {exc}"}})

    def _store_ok(self) -> None:
        if self._store_down:
            self._store_down = False
            log.warning("webhook outbox works again", extra={"fields": {
                "event": "webhook_outbox_recovered", "store": type(self.outbox).__name__}})


class WebhookCollector:
    """``wsrelay_webhooks_*``: the counters of one ``Webhooks``, turned into series when scraped."""

    def __init__(self, webhooks: Webhooks) -> None:
        self._w = webhooks

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        w = self._w
        yield CounterMetricFamily("wsrelay_webhooks_delivered", "Webhook events a receiver accepted (2xx)",
                                  value=w.delivered)
        yield CounterMetricFamily("wsrelay_webhooks_retried",
                                  "Webhook attempts that failed and were scheduled again", value=w.retried)
        dropped = CounterMetricFamily("wsrelay_webhooks_dropped",
                                      "Webhook events given up: past max_pending (the oldest), past 24 hours, "
                                      "or unsaved at shutdown with the outbox failing",
                                      labels=["reason"])
        for reason, count in sorted(w.dropped_by_reason.items()):
            dropped.add_metric([reason], count)
        yield dropped
        yield GaugeMetricFamily("wsrelay_webhooks_pending",
                                "Webhook events waiting in the outbox (in a fleet: the fleet's, shared)",
                                value=w.pending)
