"""``max_sessions`` exact across a fleet: one lease per session in Redis, renewed in bulk.

Each capped agent has a sorted set ``wsrelay:leases:{agent}.{org}`` whose members are the
fleet's live sessions (``{relay_id}/{session uuid}``), scored by when their lease runs out
(Redis' own clock, so the relays' clocks need not agree). Taking a slot is one Lua
script, atomic in Redis: drop the expired leases, count, add if below the limit — so the
(max_sessions + 1)-th session is refused whichever relay it lands on. Every relay renews
all its live leases in one script call per ``lease_seconds / 3``; a relay that dies
(``kill -9``) stops renewing, and its leases lapse within ``lease_seconds``.

Redis away: a new session of a capped agent gets ``503`` after the link's bounded wait
(agents without ``max_sessions`` never ask Redis); live sessions go on, untouched. The
renewal re-adds every lease it holds, so when Redis returns — even empty, after a
restart — the leases of the live sessions are restored at the next renewal; while the
last renewal failed, the next comes after ``RESTORE_SECONDS`` instead of ``lease_seconds
/ 3``. Until a relay's leases are back, the others may admit past ``max_sessions`` (by
at most the leases Redis lost); docs/fleet.md gives the bound.

Leases are never left behind by a relay that lives on. An acquire given up (the link's
time limit, or the client leaving) may have run in Redis all the same (sent, or queued
behind a busy Redis): its lease is removed at once and again by each renewal until it
would have lapsed. A lease released while a renewal is in flight is removed again after
it, since that renewal's ZADD may have re-added it.

``LeaseBook`` is the bookkeeping (which leases this relay holds, whether the last renewal
reached Redis), without I/O; ``FleetCapacity`` does the talking.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from ..errors import CapacityError, CapacityUnavailable
from .redis_link import RedisDown, RedisLink

log = logging.getLogger("wsrelay.leases")

KEY_PREFIX = "wsrelay:leases:"
CAPACITY_RETRY_AFTER = "1"
RESTORE_SECONDS = 0.5          # renewal period while the last renewal failed (Redis away or back)

# KEYS[1] the agent's lease set; ARGV: limit, member, lease in ms. 1 = taken, 0 = full.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"""

# KEYS: a lease set per lease; ARGV[1] the lease in ms, ARGV[2] how many leases to renew
# (the first ones), ARGV[i + 2] the member of KEYS[i]; the leases after those are removed
# (acquires given up). ZADD without XX: a lease Redis lost (restart, expiry during an
# outage) is put back. Returns the (1-based) indexes of the renewed leases that were not there.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local renewed = tonumber(ARGV[2])
local missing = {}
for i, key in ipairs(KEYS) do
  if i > renewed then
    redis.call('ZREM', key, ARGV[i + 2])
  else
    if redis.call('ZADD', key, now + ttl, ARGV[i + 2]) == 1 then missing[#missing + 1] = i end
    redis.call('PEXPIRE', key, ttl * 2)
  end
end
return missing
"""


def lease_key(service_host: str) -> str:
    return KEY_PREFIX + service_host


class LeaseBook:
    """The leases this relay holds, and whether Redis has them (pure bookkeeping)."""

    def __init__(self, relay_id: str) -> None:
        self.relay_id = relay_id
        self.held: dict[str, str] = {}          # member -> lease set key
        self.in_redis = True                    # the last renewal reached Redis
        self._renewing: set[str] | None = None  # the members of the renewal in flight
        self._undo: list[tuple[str, str]] = []  # (key, member) released while it was in flight
        self.abandoned: dict[str, tuple[str, float]] = {}   # member -> (key, when it lapses): acquires given up

    def new_member(self) -> str:
        return f"{self.relay_id}/{uuid.uuid4()}"

    def add(self, member: str, service_host: str) -> None:
        self.held[member] = lease_key(service_host)

    def remove(self, member: str) -> str | None:
        """The lease set ``member`` was in, or None if it was not held."""
        key = self.held.pop(member, None)
        if key is not None and self._renewing is not None and member in self._renewing:
            self._undo.append((key, member))
        return key

    def renewal(self) -> tuple[list[str], list[str]]:
        """(keys, members) for one RENEW call covering every held lease; ``renewal_over`` after it."""
        members = list(self.held)
        self._renewing, self._undo = set(members), []
        return [self.held[m] for m in members], members

    def abandon(self, member: str, service_host: str, lapses_at: float) -> None:
        """An acquire given up: its lease may be in Redis all the same, until ``lapses_at``."""
        self.abandoned[member] = (lease_key(service_host), lapses_at)

    def abandoned_now(self, now: float) -> tuple[list[str], list[str]]:
        """(keys, members) of the given-up leases that may still be in Redis at ``now``."""
        for member in [m for m, (_, lapses_at) in self.abandoned.items() if lapses_at <= now]:
            del self.abandoned[member]
        members = list(self.abandoned)
        return [self.abandoned[m][0] for m in members], members

    def removed(self, members: list[str]) -> None:
        """Given-up leases Redis has removed."""
        for member in members:
            self.abandoned.pop(member, None)

    def renewal_over(self) -> list[tuple[str, str]]:
        """The (key, member) leases released while the renewal was in flight: its ZADD may have
        put them back after their ZREM, so they are removed once more."""
        undo, self._renewing, self._undo = self._undo, None, []
        return undo

    def renewed(self, ok: bool) -> str | None:
        """Record a renewal's outcome; the state change to log, if any ("lost" / "restored")."""
        was, self.in_redis = self.in_redis, ok
        if was and not ok:
            return "lost"
        if ok and not was:
            return "restored"
        return None


class FleetCapacity:
    """Session leases in the fleet's Redis; one per relay process."""

    def __init__(self, link: RedisLink, *, relay_id: str, lease_seconds: float) -> None:
        self.link = link
        self.lease_seconds = lease_seconds
        self.lease_ms = int(lease_seconds * 1000)
        self.interval = max(0.2, lease_seconds / 3)
        self.book = LeaseBook(relay_id)
        self._acquire = link.client.register_script(ACQUIRE)
        self._renew = link.client.register_script(RENEW)
        self._pending: set[asyncio.Task] = set()

    async def acquire(self, service_host: str, limit: int) -> str:
        """Take a slot of ``service_host``; its lease id, or CapacityError (429) / CapacityUnavailable (503).

        Given up — the link's time limit, or cancelled (the client left) — the script may
        still have run in Redis (it was sent, or is queued behind a busy Redis): its lease is
        removed now, and by each renewal until it would have lapsed anyway.
        """
        member = self.book.new_member()
        key = lease_key(service_host)
        try:
            taken = await self.link.call(lambda: self._acquire(keys=[key], args=[limit, member, self.lease_ms]))
        except BaseException as exc:              # RedisDown, or cancelled: the client left
            self.book.abandon(member, service_host, asyncio.get_running_loop().time() + self.lease_seconds)
            self._remove_later(key, member)       # a task: the cancellation cannot skip it
            if isinstance(exc, RedisDown):
                raise CapacityUnavailable(f"{service_host}: max_sessions cannot be checked: {exc}") from None
            raise
        if not taken:
            raise CapacityError(f"{service_host} is at max_sessions={limit} across the fleet",
                                headers={"Retry-After": CAPACITY_RETRY_AFTER})
        self.book.add(member, service_host)
        return member

    def release(self, member: str) -> None:
        """Give a slot back now (best effort: a lease Redis does not hear about lapses alone)."""
        key = self.book.remove(member)
        if key is not None:
            self._remove_later(key, member)

    def _remove_later(self, key: str, member: str) -> None:
        """ZREM in a task of its own (nothing the caller suffers can cancel it); ``close`` waits for it."""
        task = asyncio.get_running_loop().create_task(self._remove(key, member))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _remove(self, key: str, member: str) -> None:
        client = self.link.client
        try:
            if await self.link.call(lambda: client.zrem(key, member)):
                self.book.removed([member])
        except RedisDown:
            pass                                 # it expires within lease_seconds

    async def renew(self) -> int:
        """Renew every held lease in one call; how many (RedisDown when Redis did not answer).

        A lease Redis did not have is put back (logged: Redis lost it); one released while
        the call was in flight is removed again after it; given-up acquires' leases are removed.
        """
        keys, members = self.book.renewal()
        gone_keys, gone = self.book.abandoned_now(asyncio.get_running_loop().time())
        try:
            if not keys and not gone:
                return 0
            missing = await self.link.call(lambda: self._renew(
                keys=keys + gone_keys, args=[self.lease_ms, len(keys), *members, *gone]))
        finally:
            for key, member in self.book.renewal_over():
                self._remove_later(key, member)
        self.book.removed(gone)
        lost = sum(1 for i in missing if members[int(i) - 1] in self.book.held)
        if lost and self.book.in_redis:
            log.warning("%d session lease(s) were missing in Redis (restarted empty?) and are put back; "
                        "until now other relays could admit past max_sessions", lost)
        return len(keys)

    async def run(self) -> None:
        """Renew every ``interval`` (every RESTORE_SECONDS while the last renewal failed) until
        cancelled; log when Redis is lost and when it returns."""
        while True:
            await asyncio.sleep(self.interval if self.book.in_redis else min(self.interval, RESTORE_SECONDS))
            try:
                count = await self.renew()
                change = self.book.renewed(True)
            except RedisDown as exc:
                count = len(self.book.held)
                change = self.book.renewed(False)
                if change:
                    log.warning("session leases not renewed, live sessions go on: %s", exc)
                continue
            except Exception:                        # a bug: say so, keep renewing (a dead loop lets every lease lapse)
                log.exception("session lease renewal failed")
                self.book.renewed(False)
                continue
            if change == "restored":
                log.info("Redis is back: %d session lease(s) restored", count)

    async def close(self) -> None:
        """At shutdown: give back what is still held, and wait for the removals in flight (bounded)."""
        for member in list(self.book.held):
            self.release(member)
        for key, member in zip(*self.book.abandoned_now(asyncio.get_running_loop().time())):
            self._remove_later(key, member)
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=self.link.timeout + 0.5)

