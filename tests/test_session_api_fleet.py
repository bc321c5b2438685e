"""The Session API in a fleet (docs/session-api.md, "In a fleet"): any relay finds a session
through Redis and proxies to its instance directly.

Real processes only: Debian's redis-server, two ``wsrelay serve`` relays sharing it, two bot
instances (aiohttp, tests/session_api_support.py) that name themselves in every answer. A
session opened on one relay is reached through the other; its entry in Redis expires unless
renewed, is renewed while the session lives, is gone once it ends, and lapses when its relay
is killed. Redis away: the other relay answers 503, the session's own relay still answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import pytest

from fleet_support import redis_command, start_redis, wait_until
from session_api_support import SessionBot
from support import RelayProcess, arun, connect_client, free_port

pytestmark = pytest.mark.system      # a real redis-server from Debian's packages

LEASE_SECONDS = 2
KEY = "pk_fleet_session_api"


def _relay_toml(index: int, port: int, redis_url: str, bots) -> str:
    upstreams = ", ".join(f'"{b.url}"' for b in bots)
    return f"""
[relay]
host = "127.0.0.1"
port = {port}
admin_port = 0
drain_seconds = 0.5
close_timeout = 1

[fleet]
redis_url = "{redis_url}"
relay_id = "relay-{index}"
lease_seconds = {LEASE_SECONDS}

[[agents]]
name = "bot"
organization = "fleet"
upstreams = [{upstreams}]
public_keys = ["{KEY}"]
session_api = true
"""


@pytest.fixture
def fleet(tmp_path, pump):
    redis = start_redis()
    bot_port = free_port()
    bots = [SessionBot("bot-a", "127.0.0.1", bot_port), SessionBot("bot-b", "127.0.0.2", bot_port)]
    ports = [free_port(), free_port()]
    relays = []
    for i, port in enumerate(ports):
        directory = tmp_path / f"relay{i}"
        directory.mkdir()
        relays.append(RelayProcess(_relay_toml(i, port, redis.url, bots), directory, pump=pump))

    async def ready():
        for relay, port in zip(relays, ports):
            await relay.wait_port(port)
    arun(ready())
    yield redis, relays, ports
    for relay in relays:
        if relay.proc.poll() is None:
            relay.stop()
    for bot in bots:
        bot.kill()
    redis.stop()


async def _session(port: int):
    transport, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/bot.fleet")
    await rec.wait_frames(1)
    greeting = json.loads(rec.frames[0].payload)
    return transport, rec, greeting["instance"], greeting["session"]


async def _get(port: int, session_id: str) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"GET /v1/public/bot/sessions/{session_id}/state?from=fleet HTTP/1.1\r\nHost: relay.test\r\n"
                  f"Authorization: Bearer {KEY}\r\n\r\n").encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def _entry(redis, session_id: str):
    return redis_command(redis, "GET", f"wsrelay:session:{session_id}")


def test_a_session_is_reached_through_any_relay_and_its_entry_goes_with_it(fleet):
    redis, relays, ports = fleet

    async def main():
        sessions = [await _session(ports[0]) for _ in range(2)]
        assert {s[2] for s in sessions} == {"bot-a", "bot-b"}
        for _, _, instance, session_id in sessions:
            for port in ports:                               # its own relay and the other one
                status, answer = await _get(port, session_id)
                assert status == 200 and answer["instance"] == instance, answer
                assert dict(answer["headers"])["X-Session-Id"] == session_id
            entry = json.loads(_entry(redis, session_id))
            assert entry["agent"] == "bot.fleet" and entry["url"].startswith("ws://127.0.0.")
            assert 0 < int(redis_command(redis, "PTTL", f"wsrelay:session:{session_id}")) <= LEASE_SECONDS * 1000
        await asyncio.sleep(LEASE_SECONDS * 1.5)             # past the first expiry: renewed
        for _, _, instance, session_id in sessions:
            assert _entry(redis, session_id) is not None
            status, answer = await _get(ports[1], session_id)
            assert status == 200 and answer["instance"] == instance
        transport, rec, _, ended = sessions[0]
        transport.send_close(1000)
        await asyncio.wait_for(rec.disconnected.wait(), 5)
        await asyncio.to_thread(wait_until, lambda: _entry(redis, ended) is None, 2)
        for port in ports:
            status, answer = await _get(port, ended)
            assert status == 404 and answer["code"] == "404"
        transport, rec, *_ = sessions[1]
        transport.send_close(1000)
        await asyncio.wait_for(rec.disconnected.wait(), 5)
    arun(main())


def test_a_killed_relays_entries_lapse_and_redis_away_is_503_elsewhere(fleet):
    redis, relays, ports = fleet

    async def main():
        transport, rec, _, on_first = await _session(ports[0])
        transport2, rec2, instance, on_second = await _session(ports[1])
        redis.stop()                                         # Redis away
        status, answer = await _get(ports[0], on_second)
        assert status == 503 and answer["code"] == "503"
        status, answer = await _get(ports[1], on_second)     # its own relay: no Redis needed
        assert status == 200 and answer["instance"] == instance
        redis.start()                                        # back, empty: the renewals write the entries again
        await asyncio.to_thread(wait_until, lambda: _entry(redis, on_first) is not None
                                and _entry(redis, on_second) is not None, LEASE_SECONDS + 1)
        os.kill(relays[0].proc.pid, signal.SIGKILL)         # its session dies with it, its entry is not deleted
        relays[0].proc.wait(10)
        killed_at = time.monotonic()
        await asyncio.to_thread(wait_until, lambda: _entry(redis, on_first) is None, LEASE_SECONDS + 1)
        assert time.monotonic() - killed_at <= LEASE_SECONDS + 1
        status, answer = await _get(ports[1], on_first)
        assert status == 404
        transport2.send_close(1000)
        await asyncio.wait_for(rec2.disconnected.wait(), 5)
    arun(main())
