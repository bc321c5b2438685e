"""Where webhook events wait until a receiver took them: the outbox, and its two stores.

An event is added once, due at once. A sender *claims* the events that are due: each is
leased to it (its due time moved to the lease's end), so no other sender takes it
meanwhile, and a sender that died leaves it due again when the lease runs out. Then the
event is removed (delivered, or given up) or given a new due time (``retry``). A sender
that stops hands back what it had claimed (``release``): due again at once.

Bounded: past ``max_pending`` events, ``add`` removes the oldest and returns them, for
the caller to count and log.

``SQLiteOutbox``: a file (WAL) on one relay; every call runs on one thread of its own,
never on the event loop's. A lease names the process that holds it: a relay restarted
after a crash finds its predecessor's leases (a process no longer alive) and makes those
events due at once.

``RedisOutbox``: a fleet's outbox, in three keys (a sorted set of ids by due time, one
of ids by creation time for the bound, a hash of the events); each operation is one Lua
script, so claiming, bounding and adding are atomic in Redis. A dead relay's claims come
due when their lease runs out and any other relay delivers them.
"""

from __future__ import annotations

import abc
import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence, TypeVar

import msgspec

from .events import Event

T = TypeVar("T")


class Outbox(abc.ABC):
    """The operations a sender needs; times are Unix times (seconds, float)."""

    @abc.abstractmethod
    async def add(self, events: Sequence[Event]) -> list[Event]:
        """Keep ``events``, due at once; return those dropped to stay within the bound (oldest first)."""

    @abc.abstractmethod
    async def claim(self, now: float, lease_until: float, limit: int) -> list[Event]:
        """At most ``limit`` events due by ``now``, earliest first, each leased until ``lease_until``."""

    @abc.abstractmethod
    async def remove(self, event_id: str) -> None:
        """Forget an event (delivered, or given up)."""

    @abc.abstractmethod
    async def retry(self, event: Event, due: float) -> None:
        """Keep ``event`` (its failed ``attempts`` counted) and make it due at ``due``."""

    @abc.abstractmethod
    async def release(self, event_ids: Sequence[str], now: float) -> None:
        """Hand back claimed events not finished: due at ``now``."""

    @abc.abstractmethod
    async def pending(self) -> int:
        """How many events wait (claimed ones included)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of the file or the connection; the events stay."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- order of arrival: the oldest go first past the bound
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,                       -- when it may be tried; a claim moves it to its lease's end
    owner INTEGER                            -- the process id holding a claim on it, or NULL
);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (due);
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:              # someone else's process: alive
        return True
    return True


class SQLiteOutbox(Outbox):
    """The outbox of a single relay: one SQLite file (WAL), used from one thread of its own."""

    def __init__(self, path: str, max_pending: int) -> None:
        self.path = path
        self.max_pending = max_pending
        self._pid = os.getpid()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="wsrelay-webhooks-spool")
        # isolation_level=None: autocommit; each operation writes in its own BEGIN IMMEDIATE.
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")     # WAL: durable across a process crash
        self._db.executescript(_SCHEMA)
        self._release_dead_owners()

    def _release_dead_owners(self) -> None:
        """Events claimed by a process that is gone (a relay that crashed) are due at once."""
        import time
        owners = [row[0] for row in self._db.execute(
            "SELECT DISTINCT owner FROM webhook_outbox WHERE owner IS NOT NULL")]
        dead = [owner for owner in owners if owner != self._pid and not _pid_alive(owner)]
        if dead:
            marks = ",".join("?" * len(dead))
            self._db.execute(f"UPDATE webhook_outbox SET due = ?, owner = NULL WHERE owner IN ({marks})",
                             (time.time(), *dead))

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _write(self, fn: Callable[..., T], *args: Any) -> T:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(*args)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result

    # -- the operations, each on the store's thread ----------------------------------------

    def _add(self, events: Sequence[Event]) -> list[Event]:
        self._db.executemany(
            "INSERT OR IGNORE INTO webhook_outbox (id, type, body, created, attempts, due) VALUES (?, ?, ?, ?, ?, ?)",
            [(e.id, e.type, e.body, e.created, e.attempts, e.created) for e in events])
        (count,) = self._db.execute("SELECT COUNT(*) FROM webhook_outbox").fetchone()
        if count <= self.max_pending:
            return []
        rows = self._db.execute(
            "DELETE FROM webhook_outbox WHERE seq IN (SELECT seq FROM webhook_outbox ORDER BY seq LIMIT ?) "
            "RETURNING seq, id, type, body, created, attempts", (count - self.max_pending,)).fetchall()
        rows.sort()
        return [Event(id=r[1], type=r[2], body=r[3], created=r[4], attempts=r[5]) for r in rows]

    def _claim(self, now: float, lease_until: float, limit: int) -> list[Event]:
        rows = self._db.execute(
            "UPDATE webhook_outbox SET due = ?, owner = ? WHERE seq IN "
            "(SELECT seq FROM webhook_outbox WHERE due <= ? ORDER BY due, seq LIMIT ?) "
            "RETURNING due, seq, id, type, body, created, attempts", (lease_until, self._pid, now, limit)).fetchall()
        rows.sort(key=lambda r: r[1])
        return [Event(id=r[2], type=r[3], body=r[4], created=r[5], attempts=r[6]) for r in rows]

    def _remove(self, event_id: str) -> None:
        self._db.execute("DELETE FROM webhook_outbox WHERE id = ?", (event_id,))

    def _retry(self, event: Event, due: float) -> None:
        self._db.execute("UPDATE webhook_outbox SET attempts = ?, due = ?, owner = NULL WHERE id = ?",
                         (event.attempts, due, event.id))

    def _release(self, event_ids: Sequence[str], now: float) -> None:
        self._db.executemany("UPDATE webhook_outbox SET due = ?, owner = NULL WHERE id = ? AND owner = ?",
                             [(now, i, self._pid) for i in event_ids])

    def _pending(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM webhook_outbox").fetchone()[0])

    # -- the interface ----------------------------------------------------------------------

    async def add(self, events: Sequence[Event]) -> list[Event]:
        return await self._run(self._write, self._add, events)

    async def claim(self, now: float, lease_until: float, limit: int) -> list[Event]:
        return await self._run(self._write, self._claim, now, lease_until, limit)

    async def remove(self, event_id: str) -> None:
        await self._run(self._remove, event_id)

    async def retry(self, event: Event, due: float) -> None:
        await self._run(self._retry, event, due)

    async def release(self, event_ids: Sequence[str], now: float) -> None:
        if event_ids:
            await self._run(self._write, self._release, event_ids, now)

    async def pending(self) -> int:
        return await self._run(self._pending)

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)


# Redis: KEYS[1] due (zset id -> due), KEYS[2] age (zset id -> created), KEYS[3] events (hash id -> msgpack).
_ADD = """
local max = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[3], ARGV[i], ARGV[i + 2]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
    redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
  end
end
local dropped = {}
local over = redis.call('ZCARD', KEYS[2]) - max
if over > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do
    local event = redis.call('HGET', KEYS[3], id)
    if event then table.insert(dropped, event) end
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return dropped
"""

_CLAIM = """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))) do
  local event = redis.call('HGET', KEYS[3], id)
  if event then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    table.insert(out, event)
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
"""

_RETRY = """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
end
return 0
"""

_RELEASE = """
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
end
return 0
"""

_REMOVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 0
"""

_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(Event).decode


class RedisOutbox(Outbox):
    """A fleet's outbox in Redis: every relay adds to it and delivers from it.

    The keys share one hash tag (``{prefix}``), so the scripts also run on a Redis Cluster.
    """

    def __init__(self, url: str, max_pending: int, *, prefix: str = "wsrelay:webhooks",
                 timeout: float = 5.0) -> None:
        import redis.asyncio

        self.max_pending = max_pending
        self.client: Any = redis.asyncio.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.keys = [f"{{{prefix}}}:due", f"{{{prefix}}}:age", f"{{{prefix}}}:events"]
        self._add = self.client.register_script(_ADD)
        self._claim = self.client.register_script(_CLAIM)
        self._retry = self.client.register_script(_RETRY)
        self._release = self.client.register_script(_RELEASE)
        self._remove = self.client.register_script(_REMOVE)

    async def add(self, events: Sequence[Event]) -> list[Event]:
        args: list[Any] = [self.max_pending]
        for e in events:
            args += [e.id, repr(e.created), _pack(e)]
        dropped = await self._add(keys=self.keys, args=args)
        return sorted((_unpack(d) for d in dropped), key=lambda e: e.created)

    async def claim(self, now: float, lease_until: float, limit: int) -> list[Event]:
        return [_unpack(e) for e in await self._claim(keys=self.keys, args=[repr(now), repr(lease_until), limit])]

    async def remove(self, event_id: str) -> None:
        await self._remove(keys=self.keys, args=[event_id])

    async def retry(self, event: Event, due: float) -> None:
        await self._retry(keys=self.keys, args=[event.id, repr(due), _pack(event)])

    async def release(self, event_ids: Sequence[str], now: float) -> None:
        if event_ids:
            await self._release(keys=self.keys, args=[repr(now), *event_ids])

    async def pending(self) -> int:
        return int(await self.client.zcard(self.keys[1]))

    async def close(self) -> None:
        await self.client.aclose()
