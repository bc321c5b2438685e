"""Session resume in a fleet (docs/resume.md): two relays sharing a real redis-server. A client
whose session is on relay A loses its connection and comes back through relay B, which finds
A in Redis (``wsrelay:resume:{sessionId}``) and carries the connection there (edge/hop.py):
every message once and in order, the bot's one connection kept. A resume for a session that
has ended is 404 on any relay. Both pumps."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from fleet_support import start_redis
from resume_support import RESET, CuttingProxy, StreamingBot, numbers
from support import arun, free_port, raw_request, relay_config, start_relay, status_of, upgrade_head
from wsrelay.client import ResumingClient
from wsrelay.config import AuthConfig, FleetConfig

pytestmark = pytest.mark.system      # Debian's redis-server, installed by the test when missing


async def _wait(predicate, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def _fleet_relay(bot, pump: str, redis_url: str, name: str):
    port = free_port()
    config = relay_config({"echo.demo": [bot.url]}, port=port)
    config = replace(config, agents=tuple(replace(a, resume_seconds=5.0) for a in config.agents),
                     auth=AuthConfig(keys={"k": "fleet-secret-" * 3}, active_key="k"),
                     fleet=FleetConfig(redis_url=redis_url, relay_id=name, lease_seconds=3.0,
                                       internal_url=f"ws://127.0.0.1:{port}"))
    return await start_relay(config, pump)


def test_a_resume_that_reaches_the_other_relay_is_carried_to_the_session(pump):
    redis = start_redis()

    async def main() -> None:
        bot = await StreamingBot().start()
        a = await _fleet_relay(bot, pump, redis.url, "relay-a")
        b = await _fleet_relay(bot, pump, redis.url, "relay-b")
        proxy = await CuttingProxy(a.port).start()
        got: list[bytes] = []
        client = ResumingClient(f"ws://127.0.0.1:{proxy.port}/ws/generic/echo.demo", lambda op, m: got.append(m),
                                first_delay=0.5)
        try:
            await client.connect()
            bot_rec = await bot.session()
            await _wait(lambda: len(got) >= 15)
            (session,) = a.sessions
            proxy.target = b.port                    # the client's next connection reaches relay B
            proxy.cut(RESET)
            await _wait(lambda: client.resumes == 1 or client.closed.is_set())
            assert client.error is None, client.error
            await _wait(lambda: len(got) >= 40)
            assert b.metrics.resumes_carried == 1 and not b.sessions and len(b._hops) == 1
            assert a.metrics.resumes == {("echo", "demo"): 1} and session.resume.resumes == 1
            assert len(bot.sessions) == 1 and not bot_rec.disconnected.is_set()
            await client.close()
            await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
            assert numbers(got) == list(range(1, len(got) + 1))
            await _wait(lambda: not b._hops)                  # the hop ended with the session
            # the session has ended: a resume is 404 on either relay
            await _wait(lambda: not a.sessions)
            token = client.resume_token
            for relay in (a, b):
                head = upgrade_head(f"/ws/generic/echo.demo?resume={token}")
                assert status_of(await raw_request(relay.port, head)) == 404
        finally:
            bot.stop()
            proxy.close()
            await b.stop()
            await a.stop()
            bot.close()

    try:
        arun(main())
    finally:
        redis.stop()


def test_a_relay_that_stops_drops_its_hops_and_the_client_resumes_on_the_holder(pump):
    redis = start_redis()

    async def main() -> None:
        bot = await StreamingBot().start()
        a = await _fleet_relay(bot, pump, redis.url, "relay-a")
        b = await _fleet_relay(bot, pump, redis.url, "relay-b")
        proxy = await CuttingProxy(a.port).start()
        got: list[bytes] = []
        client = ResumingClient(f"ws://127.0.0.1:{proxy.port}/ws/generic/echo.demo", lambda op, m: got.append(m),
                                first_delay=0.3)
        try:
            await client.connect()
            bot_rec = await bot.session()
            await _wait(lambda: len(got) >= 10)
            proxy.target = b.port
            proxy.cut(RESET)
            await _wait(lambda: client.resumes == 1 or client.closed.is_set())
            await _wait(lambda: len(got) >= 25)
            proxy.target = a.port                    # B goes away: the client's next connection reaches A
            await b.stop()
            assert not b._hops
            await _wait(lambda: client.resumes == 2 or client.closed.is_set())
            assert client.error is None, client.error
            await _wait(lambda: len(got) >= 45)
            assert numbers(got) == list(range(1, len(got) + 1))
            assert len(bot.sessions) == 1 and not bot_rec.disconnected.is_set()
            await client.close()
        finally:
            bot.stop()
            proxy.close()
            await b.stop()
            await a.stop()
            bot.close()

    try:
        arun(main())
    finally:
        redis.stop()
