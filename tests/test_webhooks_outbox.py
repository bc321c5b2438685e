"""The webhook outbox's two stores: an SQLite file, and Redis shared by a fleet.

The same contract runs against both (a real file, a real ``redis-server``); then what each
is for: an SQLite outbox left by a crashed process gives its claims back at the next
start, and in a fleet a second relay delivers what a stopped or dead relay left.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest

from wsrelay.webhooks import SessionEnd, WebhookSettings, Webhooks
from wsrelay.webhooks.events import Event, Schedule, new_event
from wsrelay.webhooks.outbox import Outbox, RedisOutbox, SQLiteOutbox

from support import RedisServer, arun
from test_webhooks import END, SECRET, Receiver, until

FAST = Schedule(first=(0.2, 0.4, 0.8), cap=1.0, horizon=30.0)


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


def _event(n: int, created: float) -> Event:
    facts = SessionEnd(session_id=f"s-{n}", agent="a", organization="o", endpoint="/ws")
    return new_event("session.ended", facts, created)


def _open(kind: str, request, tmp_path, max_pending: int = 100) -> Outbox:
    if kind == "sqlite":
        return SQLiteOutbox(str(tmp_path / "spool.sqlite3"), max_pending)
    server = request.getfixturevalue("redis_server")
    return RedisOutbox(server.url, max_pending, prefix=f"test:{request.node.name}")


STORES = ["sqlite", pytest.param("redis", marks=pytest.mark.system)]


@pytest.mark.parametrize("kind", STORES)
def test_the_outbox_contract(kind, request, tmp_path):
    async def main():
        store = _open(kind, request, tmp_path, max_pending=3)
        try:
            now = time.time()
            a, b, c, d = (_event(n, now - 10 + n) for n in range(4))
            assert await store.add([a, b]) == []
            assert await store.add([a]) == []                       # the same id twice is kept once
            assert await store.pending() == 2
            # A claim leases: the same events are not claimed again until the lease ends.
            claimed = await store.claim(now, now + 0.5, 10)
            assert [e.id for e in claimed] == [a.id, b.id] and claimed[0].body == a.body
            assert await store.claim(now, now + 0.5, 10) == []
            assert {e.id for e in await store.claim(now + 0.6, now + 5, 10)} == {a.id, b.id}
            # Retry: kept with its attempts, due later; release: due now; remove: gone.
            await store.retry(msgspec_replace(a, attempts=1), now + 100)
            await store.release([b.id], now)
            assert [e.id for e in await store.claim(now + 0.7, now + 200, 10)] == [b.id]
            assert [(e.id, e.attempts) for e in await store.claim(now + 100, now + 105, 10)] == [(a.id, 1)]
            await store.remove(b.id)
            assert await store.pending() == 1
            # Bounded: past max_pending the oldest go, and are returned.
            assert await store.add([c, d]) == []
            e = _event(9, now)
            dropped = await store.add([e])
            assert [x.id for x in dropped] == [a.id]
            assert await store.pending() == 3
        finally:
            await store.close()
    arun(main())


def msgspec_replace(event: Event, **changes) -> Event:
    import msgspec
    return msgspec.structs.replace(event, **changes)


def test_sqlite_outbox_is_kept_across_reopening(tmp_path):
    async def main():
        path = str(tmp_path / "spool.sqlite3")
        store = SQLiteOutbox(path, 10)
        event = _event(1, time.time())
        await store.add([event])
        await store.close()
        reopened = SQLiteOutbox(path, 10)
        try:
            assert [e.id for e in await reopened.claim(time.time(), time.time() + 30, 10)] == [event.id]
        finally:
            await reopened.close()
        assert os.path.exists(path + "-wal") or os.path.getsize(path) > 0
    arun(main())


def test_sqlite_claims_of_a_crashed_process_are_due_at_the_next_start(tmp_path):
    """A process claims (a lease of an hour) and dies without a word: the next outbox opened
    on the file finds its claims and makes them due at once."""
    path = str(tmp_path / "spool.sqlite3")

    async def add():
        store = SQLiteOutbox(path, 10)
        await store.add([_event(1, time.time())])
        await store.close()
    arun(add())
    crash = textwrap.dedent(f"""
        import asyncio, os, time
        from wsrelay.webhooks.outbox import SQLiteOutbox
        async def main():
            store = SQLiteOutbox({path!r}, 10)
            claimed = await store.claim(time.time(), time.time() + 3600, 10)
            assert len(claimed) == 1
            os._exit(0)                   # no close, no release
        asyncio.run(main())
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", crash], check=True, env=env, timeout=60)

    async def reopen():
        store = SQLiteOutbox(path, 10)
        try:
            return await store.claim(time.time(), time.time() + 30, 10)
        finally:
            await store.close()
    assert len(arun(reopen())) == 1


# -- a fleet: the outbox in Redis -------------------------------------------------------------


def _fleet_settings(url: str, server: RedisServer, **overrides) -> WebhookSettings:
    return WebhookSettings(url=url, secret=SECRET, redis_url=server.url, **overrides)


@pytest.mark.system
def test_a_second_relay_delivers_what_a_stopped_relay_left(redis_server):
    async def main():
        await _flush_redis(redis_server)
        receiver = Receiver()                                   # down while the first relay runs
        first = Webhooks.open(_fleet_settings(receiver.url, redis_server), schedule=FAST)
        await first.start()
        for n in range(3):
            first.session_ended(SessionEnd(session_id=f"s-{n}", agent="a", organization="o", endpoint="/ws"))
        await until(lambda: first.retried >= 3)
        await first.close()
        await receiver.start()
        second = Webhooks.open(_fleet_settings(receiver.url, redis_server), schedule=FAST)
        await second.start()
        try:
            await until(lambda: second.delivered == 3, timeout=5)
        finally:
            await second.close()
            await receiver.stop()
        assert sorted(v["data"]["sessionId"] for v in receiver.verified) == ["s-0", "s-1", "s-2"]
        assert second.pending == 0
    arun(main())


@pytest.mark.system
def test_a_dead_relays_claims_are_delivered_by_another_when_their_lease_ends(redis_server):
    async def main():
        await _flush_redis(redis_server)
        dead = RedisOutbox(redis_server.url, 100)
        event = new_event("session.ended", END, time.time())
        await dead.add([event])
        now = time.time()
        assert len(await dead.claim(now, now + 1.5, 10)) == 1    # then it dies, holding the claim
        await dead.close()
        receiver = await Receiver().start()
        other = Webhooks.open(_fleet_settings(receiver.url, redis_server))
        await other.start()
        try:
            await asyncio.sleep(1.0)
            assert receiver.requests == []                        # the lease still holds
            await receiver.wait_for(1, timeout=3)
            assert time.time() - now < 1.5 + 2                    # within a poll of the lease's end
        finally:
            await other.close()
            await receiver.stop()
        assert receiver.requests[0][1]["webhook-id"] == event.id
    arun(main())


def test_redis_down_never_holds_a_session():
    """A fleet's Redis that is not there: events are queued in memory, bounded, and the
    calls return at once."""
    from support import free_port

    async def main():
        hooks = Webhooks.open(WebhookSettings(url="http://127.0.0.1:9/", secret=SECRET, max_pending=10,
                                              redis_url=f"redis://127.0.0.1:{free_port()}/0"))
        await hooks.start()
        try:
            t0 = time.perf_counter()
            for _ in range(50):
                hooks.session_ended(END)
            assert time.perf_counter() - t0 < 0.05
            await asyncio.sleep(0.5)
            assert hooks.pending == 10 and hooks.dropped == 40
        finally:
            await hooks.close()
        # Still unsaved at shutdown: dropped, counted and logged, not silently lost.
        assert hooks.dropped_by_reason == {"max_pending": 40, "expired": 0, "outbox_unavailable": 10}
    arun(main())


async def _flush_redis(server: RedisServer) -> None:
    import redis.asyncio
    client = redis.asyncio.from_url(server.url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
