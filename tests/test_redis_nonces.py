"""Single-use tokens across processes: the Redis nonce store against a real redis-server."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from wsrelay.config import AuthConfig, ConfigError, require_shared_nonces
from wsrelay.errors import NonceStoreUnavailable
from wsrelay.admission.nonces import MemoryNonceStore, NonceStore
from wsrelay.fleet.nonces import RedisNonceStore, make_nonce_store
from wsrelay.edge.relay import Relay
from wsrelay.core.tokens import mint_token

from support import Bot, RedisServer, arun, connect_client, free_port, raw_request, relay_config, start_relay, status_of, upgrade_head

pytestmark = pytest.mark.system      # a real redis-server from Debian's packages

KEYS = {"k1": "secret-for-the-redis-tests"}


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


def _config(bot_url: str, **relay):
    config = relay_config({"echo.demo": [bot_url]}, **relay)
    agent = dataclasses.replace(config.agents[0], websocket_auth="token")
    return dataclasses.replace(config, agents=(agent,),
                               auth=AuthConfig(keys=dict(KEYS), active_key="k1"))


def _token() -> str:
    return mint_token("echo.demo", keys=KEYS, active_key="k1", ttl=60, now=time.time())


def test_a_nonce_is_single_use_across_stores_and_expires(redis_server):
    async def main():
        worker_a, worker_b = RedisNonceStore(redis_server.url), RedisNonceStore(redis_server.url)
        try:
            nonce = f"n-{time.time_ns()}"
            assert await worker_a.claim(nonce, 0.3) is True
            assert await worker_b.claim(nonce, 0.3) is False      # the other worker sees it
            assert await worker_a.claim(nonce, 0.3) is False
            await asyncio.sleep(0.5)
            assert await worker_b.claim(nonce, 0.3) is True       # forgotten with its token
        finally:
            await worker_a.close()
            await worker_b.close()
    arun(main())


def test_an_unreachable_store_refuses_with_503_within_its_timeout():
    async def main():
        store = RedisNonceStore(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
        started = time.monotonic()
        with pytest.raises(NonceStoreUnavailable) as info:
            await store.claim("n", 10)
        assert time.monotonic() - started < 5
        assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
        await store.close()
    arun(main())


def test_password_is_not_logged():
    async def main():
        store = RedisNonceStore(f"redis://user:hunter2@127.0.0.1:{free_port()}/0", timeout=0.5)
        with pytest.raises(NonceStoreUnavailable) as info:
            await store.claim("n", 10)
        assert "hunter2" not in str(info.value) and "***@127.0.0.1" in str(info.value)
        await store.close()
    arun(main())


def test_make_nonce_store_follows_the_config():
    assert isinstance(make_nonce_store("memory", None), MemoryNonceStore)
    assert isinstance(make_nonce_store("redis", "redis://127.0.0.1:1/0"), RedisNonceStore)


def test_a_token_used_on_one_relay_is_refused_by_another_sharing_the_redis(pump, redis_server):
    """Two relays (two workers, or two machines of a fleet) and one Redis: single use holds."""
    async def main():
        bot = await Bot(echo=True).start()
        cfg = _config(bot.url, nonce_store="redis", redis_url=redis_server.url)
        relay_a, relay_b = await start_relay(cfg, pump), await start_relay(cfg, pump)
        token = _token()
        transport, rec = await connect_client(
            f"ws://127.0.0.1:{relay_a.port}/ws/generic/echo.demo?token={token}")
        transport.send_close(1000)
        await rec.disconnected.wait()
        response = await raw_request(relay_b.port, upgrade_head(f"/ws/generic/echo.demo?token={token}"))
        assert status_of(response) == 403
        assert len(bot.requests) == 1                      # the replay reached no bot
        fresh = _token()                                   # a new token still works on relay B
        transport, rec = await connect_client(
            f"ws://127.0.0.1:{relay_b.port}/ws/generic/echo.demo?token={fresh}")
        transport.send_close(1000)
        await rec.disconnected.wait()
        assert len(bot.requests) == 2
        await relay_a.stop()
        await relay_b.stop()
        bot.close()
    arun(main())


def test_relay_answers_503_when_its_redis_is_down_and_contacts_no_bot(pump):
    async def main():
        bot = await Bot(echo=True).start()
        cfg = _config(bot.url, nonce_store="redis", redis_url=f"redis://127.0.0.1:{free_port()}/0")
        relay = await start_relay(cfg, pump)
        response = await raw_request(relay.port, upgrade_head(f"/ws/generic/echo.demo?token={_token()}"))
        assert status_of(response) == 503
        assert b"Retry-After: 1" in response
        assert bot.requests == []
        assert relay.rejections[503] == 1 and not relay.sessions
        await relay.stop()
        bot.close()
    arun(main())


def test_workers_with_token_agents_need_the_shared_store():
    cfg = _config("ws://127.0.0.1:1/", workers=2)
    with pytest.raises(ConfigError) as info:
        require_shared_nonces(cfg)
    assert info.value.key == "relay.nonce_store" and "redis" in str(info.value)
    require_shared_nonces(_config("ws://127.0.0.1:1/", workers=1))
    require_shared_nonces(_config("ws://127.0.0.1:1/", workers=2, nonce_store="redis",
                                  redis_url="redis://127.0.0.1:6379/0"))
    running = _config("ws://127.0.0.1:1/", workers=2).relay          # a reload is checked
    with pytest.raises(ConfigError):                                # against the running relay
        require_shared_nonces(_config("ws://127.0.0.1:1/", nonce_store="redis",
                                      redis_url="redis://x:1/0"), running)


class FailingStore(NonceStore):
    """A nonce store plugged in through ``Relay(nonces=...)`` that fails with a non-wsrelay error."""

    async def claim(self, nonce: str, ttl: float) -> bool:
        raise RuntimeError("store backend exploded")


def test_an_unexpected_store_failure_answers_500_and_keeps_nothing(pump):
    async def main():
        bot = await Bot(echo=True).start()
        cfg = _config(bot.url)
        relay = Relay(cfg, pump=pump, nonces=FailingStore())
        await relay.start()
        response = await raw_request(relay.port, upgrade_head(f"/ws/generic/echo.demo?token={_token()}"),
                                     read_timeout=5)
        assert status_of(response) == 500                  # answered, not left hanging
        assert bot.requests == [] and not relay.sessions and not relay.active
        assert relay.rejections[500] == 1
        await relay.stop()
        bot.close()
    arun(main())
