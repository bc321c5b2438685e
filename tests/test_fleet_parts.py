"""The fleet's parts one by one: balancer, lease bookkeeping, config keys, regions,
the lease script and the registry against a real redis-server, the resolver against a
real DNS server. (tests/test_fleet.py runs them together in real relay processes.)"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time

import pytest

from wsrelay.fleet.agents import AGENTS_KEY, FleetRegistry, apply_agents, decode_agents, delete_agent
from wsrelay.fleet.leases import FleetCapacity, LeaseBook, lease_key
from wsrelay.fleet.redis_link import RedisLink
from wsrelay.admission.registry import StaticRegistry
from wsrelay.admission.start_api import StartRequest, handle_start
from wsrelay.admission.auth import Authenticator
from wsrelay.config import AgentConfig, ConfigError, agent_from_dict, agent_to_dict, nonce_store_of, parse_config
from wsrelay.core.balancer import Balancer
from wsrelay.edge.discovery import Resolver
from wsrelay.errors import CapacityError, CapacityUnavailable, FleetError

from fleet_support import DnsServer, start_redis
from support import Bot, arun, free_port, raw_request, relay_config, start_relay, status_of, upgrade_head


@pytest.fixture(scope="module")
def redis_server():
    server = start_redis()
    yield server
    server.stop()


# -- the balancer (sans-I/O) ------------------------------------------------------------------

def _pool(balancer: Balancer, n: int = 3):
    balancer.update("a.o", [(f"ws://bots:80/", f"10.0.0.{i}") for i in range(1, n + 1)])
    return balancer.pools["a.o"].instances


def test_fewest_sessions_first_ties_in_rotation():
    balancer = Balancer()
    a, b, c = _pool(balancer)
    firsts = [balancer.order("a.o", 0)[0] for _ in range(3)]
    assert firsts == [a, b, c]                            # all equal: they take turns
    balancer.opened(a)
    balancer.opened(b)
    assert balancer.order("a.o", 0)[0] is c               # fewest wins whatever the cursor
    balancer.opened(c)
    balancer.opened(c)
    assert balancer.order("a.o", 0)[-1] is c
    balancer.closed(c)
    balancer.closed(c)
    balancer.closed(c)
    assert c.active == 0                                  # never below zero


def test_ejection_backs_off_exponentially_and_a_success_resets_it():
    balancer = Balancer(base_ejection=1, max_ejection=8)
    a, b, _ = _pool(balancer)
    assert [balancer.failed("a.o", a, 100.0 + i) for i in range(5)] == [1, 2, 4, 8, 8]
    assert a.ejected(104.0) and not a.ejected(112.0)
    order = balancer.order("a.o", 105.0)
    assert order[-1] is a and a not in order[:-1]         # ejected: a last resort only
    balancer.succeeded(a)
    assert not a.ejected(105.0) and balancer.failed("a.o", a, 200.0) == 1
    pool = balancer.pools["a.o"]
    assert (pool.connect_failures, pool.ejections) == (6, 6)
    assert balancer.states(200.5) == {"a.o": (2, 1)}


def test_update_keeps_the_state_of_instances_still_there():
    balancer = Balancer()
    a, b, c = _pool(balancer)
    balancer.opened(b)
    balancer.update("a.o", [("ws://bots:80/", "10.0.0.2"), ("ws://bots:80/", "10.0.0.9")])
    kept, new = balancer.pools["a.o"].instances
    assert kept is b and kept.active == 1 and new.address == "10.0.0.9" and new.active == 0
    balancer.forget(set())
    assert balancer.pools == {}


def test_core_balancer_does_no_io():
    import subprocess
    import sys
    code = ("import sys, wsrelay.core.balancer\n"
            "print(sorted(m for m in ('asyncio', 'picows', 'uvloop', 'h11', 'httptools', 'socket', 'redis') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# -- lease bookkeeping (sans-I/O) ---------------------------------------------------------------

def test_lease_book_tracks_leases_and_redis_state_changes():
    book = LeaseBook("relay-a")
    first, second = book.new_member(), book.new_member()
    assert first.startswith("relay-a/") and first != second
    book.add(first, "x.o")
    book.add(second, "y.o")
    assert book.renewal() == ([lease_key("x.o"), lease_key("y.o")], [first, second])
    assert book.remove(first) == "wsrelay:leases:x.o" and book.remove(first) is None
    assert [book.renewed(ok) for ok in (True, False, False, True, True)] == [None, "lost", None, "restored", None]


def test_lease_book_remembers_leases_released_during_a_renewal():
    book = LeaseBook("relay-a")
    ended, kept, later = book.new_member(), book.new_member(), book.new_member()
    book.add(ended, "x.o")
    book.add(kept, "x.o")
    assert book.renewal() == ([lease_key("x.o")] * 2, [ended, kept])
    book.add(later, "x.o")                                # not in the renewal in flight
    book.remove(ended)
    book.remove(later)
    assert book.renewal_over() == [(lease_key("x.o"), ended)]
    book.remove(kept)                                     # no renewal in flight
    assert book.renewal_over() == []


def test_lease_book_keeps_given_up_acquires_until_their_leases_would_lapse():
    book = LeaseBook("relay-a")
    book.abandon("relay-a/1", "y.o", lapses_at=10.0)
    book.abandon("relay-a/2", "z.o", lapses_at=20.0)
    assert book.abandoned_now(5.0) == ([lease_key("y.o"), lease_key("z.o")], ["relay-a/1", "relay-a/2"])
    assert book.abandoned_now(15.0) == ([lease_key("z.o")], ["relay-a/2"])
    book.removed(["relay-a/2"])
    assert book.abandoned_now(15.0) == ([], [])


# -- configuration ----------------------------------------------------------------------------

FLEET_FILE = """[relay]
region = "us-west"
public_url = "wss://{region}.relay.example.com"
dns_servers = ["127.0.0.1:5353", "10.0.0.2", "[fd00::53]:53"]
dns_refresh_seconds = 2

[fleet]
redis_url = "rediss://relay:s3cret@redis.internal:6380/1"
relay_id = "pod-a"
lease_seconds = 5

[[agents]]
name = "a"
organization = "o"
upstreams = ["ws://bots.default.svc:8080/ws"]
regions = ["us-west", "eu-central"]
"""


def test_fleet_keys_parse():
    cfg = parse_config(FLEET_FILE)
    assert cfg.fleet.redis_url.startswith("rediss://relay:s3cret@") and cfg.fleet.enabled
    assert (cfg.fleet.relay_id, cfg.fleet.lease_seconds) == ("pod-a", 5.0)
    assert cfg.relay.dns_servers == ("127.0.0.1:5353", "10.0.0.2", "[fd00::53]:53")
    assert (cfg.relay.region, cfg.relay.dns_refresh_seconds) == ("us-west", 2.0)
    assert cfg.agents[0].regions == ("us-west", "eu-central")
    assert nonce_store_of(cfg) == ("redis", cfg.fleet.redis_url)          # a fleet shares nonces
    defaults = parse_config("[fleet]\nredis_url = 'redis://127.0.0.1:6379/0'\n").fleet
    assert (defaults.relay_id, defaults.lease_seconds) == (None, 10.0)
    assert nonce_store_of(parse_config("")) == ("memory", None)
    legacy = parse_config("[relay]\nnonce_store = 'redis'\nredis_url = 'redis://n:6379/0'\n"
                          "[fleet]\nredis_url = 'redis://f:6379/0'\n")
    assert nonce_store_of(legacy) == ("redis", "redis://n:6379/0")      # the old key keeps working


@pytest.mark.parametrize("text,key,line,words", [
    ("[fleet]\nredis_url = 'http://x:1/'\n", "fleet.redis_url", 2, "rediss://"),
    ("[fleet]\nlease_seconds = 5\n", "fleet", 1, "needs redis_url"),
    ("[fleet]\nredis_url = 'redis://x:1/0'\nlease_seconds = 0\n", "fleet.lease_seconds", 3, "from 1"),
    ("[fleet]\nredis_url = 'redis://x:1/0'\nrelay_id = 'a b'\n", "fleet.relay_id", 3, "hostname:pid"),
    ("[fleet]\nredis_url = 'redis://x:1/0'\nlease_second = 3\n", "fleet.lease_second", 3, "did you mean 'lease_seconds'"),
    ("[relay]\nregion = 'US West'\n", "relay.region", 2, "us-west"),
    ("[relay]\ndns_servers = ['dns.example:53']\n", "relay.dns_servers[0]", 2, "IP address"),
    ("[relay]\ndns_servers = '10.0.0.2'\n", "relay.dns_servers", 2, "list"),
    ("[relay]\ndns_refresh_seconds = 0\n", "relay.dns_refresh_seconds", 2, "seconds"),
    ("[relay]\npublic_url = 'wss://{region}.x.com'\n", "relay.public_url", 2, "relay.region"),
    ("[[agents]]\nname='a'\norganization='o'\nupstreams=['ws://x/']\nregions=['EU']\n",
     "agents[0].regions[0]", 5, "region name"),
])
def test_fleet_key_errors_name_key_and_line(text, key, line, words):
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    errors = info.value.errors
    assert [(e.key, e.line) for e in errors] == [(key, line)], errors
    assert words in errors[0].message


def test_agents_round_trip_through_their_stored_form():
    agent = parse_config(FLEET_FILE).agents[0]
    again = agent_from_dict(json.loads(json.dumps(agent_to_dict(agent))), "redis")
    assert dataclasses.replace(again, line=None) == dataclasses.replace(agent, line=None)
    with pytest.raises(ConfigError) as info:
        agent_from_dict({"name": "a", "organization": "o", "upstreams": ["http://x/"]}, "redis wsrelay:agents[a.o]")
    assert "agents[0].upstreams[0]" in str(info.value)


def test_decode_agents_skips_what_is_not_an_agent():
    good = json.dumps(agent_to_dict(AgentConfig("a", "o", ("ws://x/",))))
    deep = b"[" * 100_000 + b"]" * 100_000            # RecursionError in json, not a ValueError
    agents, problems = decode_agents({b"a.o": good, b"b.o": good, b"c.o": b"{not json", b"d.o": b'{"name": 1}',
                                      b"e.o": deep})
    assert list(agents) == ["a.o"]
    assert len(problems) == 4 and any("holds agent a.o" in p for p in problems)


# -- regions ----------------------------------------------------------------------------------

def test_a_regional_relay_serves_only_its_regions_agents(pump):
    async def main():
        bot = await Bot(echo=True).start()
        cfg = relay_config({"west.o": [bot.url], "east.o": [bot.url], "everywhere.o": [bot.url]},
                           region="us-west")
        west, east, anywhere = cfg.agents
        cfg = dataclasses.replace(cfg, agents=(dataclasses.replace(west, regions=("us-west",)),
                                               dataclasses.replace(east, regions=("us-east",)), anywhere))
        relay = await start_relay(cfg, pump)
        try:
            statuses = [status_of(await raw_request(relay.port, upgrade_head(f"/ws/generic/{sh}")))
                        for sh in ("west.o", "east.o", "everywhere.o", "nobody.o")]
            assert statuses == [101, 404, 101, 404]        # another region's agent: as unknown
        finally:
            await relay.stop()
            bot.close()
    arun(main())


def test_start_api_builds_wsurl_from_the_regions_public_url():
    cfg = parse_config(FLEET_FILE.replace('upstreams = ["ws://bots.default.svc:8080/ws"]',
                                          'upstreams = ["ws://bots.default.svc:8080/ws"]\npublic_keys = ["pk"]'))
    registry = StaticRegistry(cfg.agents, region="us-west")
    answer = handle_start(StartRequest("POST", "a", "Bearer pk", "ignored", b"{}"), registry=registry,
                          config=cfg, authenticator=Authenticator(cfg.auth), secure=True)
    assert answer["wsUrl"] == "wss://us-west.relay.example.com/ws/generic/a.o"
    assert StaticRegistry(cfg.agents, region="ap-south").find_by_name("a") == []


# -- the lease script and the registry against a real Redis ---------------------------------------

@pytest.mark.system                  # a real redis-server from Debian's packages
def test_leases_are_exact_under_concurrency_and_lapse_without_renewal(redis_server):
    async def main():
        links = [RedisLink(redis_server.url) for _ in range(3)]
        relays = [FleetCapacity(link, relay_id=f"r{i}", lease_seconds=1) for i, link in enumerate(links)]
        try:
            async def take(i):
                try:
                    return await relays[i % 3].acquire("exact.o", 7)
                except CapacityError as exc:
                    return exc
            results = await asyncio.gather(*(take(i) for i in range(40)))
            taken = [r for r in results if isinstance(r, str)]
            assert len(taken) == 7
            assert all(type(r) is CapacityError and r.status == 429 for r in results if not isinstance(r, str))
            assert await relays[0].renew() + await relays[1].renew() + await relays[2].renew() == 7
            await asyncio.sleep(1.3)                          # nobody renewed: every lease lapsed
            assert isinstance(await relays[0].acquire("exact.o", 1), str)
            member = await relays[1].acquire("released.o", 1)
            relays[1].release(member)
            await relays[1].close()
            assert isinstance(await relays[2].acquire("released.o", 1), str)
        finally:
            for link in links:
                await link.close()
    arun(main())


def test_leases_answer_503_quickly_when_redis_is_unreachable():
    async def main():
        link = RedisLink(f"redis://:pw@127.0.0.1:{free_port()}/0", timeout=1.0)
        capacity = FleetCapacity(link, relay_id="r", lease_seconds=2)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(CapacityUnavailable) as info:
            await capacity.acquire("a.o", 1)
        assert loop.time() - started < 2.5
        assert info.value.status == 503 and info.value.headers == {"Retry-After": "1"}
        assert "pw" not in str(info.value) and "***@127.0.0.1" in str(info.value)
        await link.close()
    arun(main())


# A slow Lua script on another connection stops Redis for ``seconds``: commands sent meanwhile
# wait in their sockets and run afterwards, even those whose caller has given up by then.
STALL = """
local t = redis.call('TIME')
local until_us = (tonumber(t[1]) * 1000000 + tonumber(t[2])) + tonumber(ARGV[1])
repeat t = redis.call('TIME') until tonumber(t[1]) * 1000000 + tonumber(t[2]) >= until_us
return 1
"""


async def _stall_redis(url: str, seconds: float) -> asyncio.Task:
    """Redis busy for ``seconds`` from now (returns once the stall has begun)."""
    async def stall():
        link = RedisLink(url, timeout=seconds + 5)
        try:
            await link.call(lambda: link.client.eval(STALL, 0, int(seconds * 1_000_000)))
        finally:
            await link.close()
    task = asyncio.get_running_loop().create_task(stall())
    await asyncio.sleep(0.1)
    return task


async def _lease_count(link: RedisLink, service_host: str, *, settle: float = 3.0) -> int:
    """The members of ``service_host``'s lease set once the removals in flight had ``settle`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle
    while True:
        count = await link.client.zcard(lease_key(service_host))
        if count == 0 or loop.time() > deadline:
            return count
        await asyncio.sleep(0.05)


@pytest.mark.system                  # a real redis-server from Debian's packages
@pytest.mark.parametrize("how", ["timeout", "cancelled"])
def test_an_acquire_given_up_after_the_script_ran_leaves_no_lease(redis_server, how):
    """The 2 s cut (503) or the client leaving lands while Redis is busy: the ACQUIRE script
    still runs after, in Redis; its lease must be taken back, not block a slot for lease_seconds."""
    async def main():
        link = RedisLink(redis_server.url, timeout=0.3)
        capacity = FleetCapacity(link, relay_id="r", lease_seconds=30)
        host = f"given-up-{how}.o"
        try:
            capacity.release(await capacity.acquire(host, 1))    # a pooled connection, the script loaded
            assert await _lease_count(link, host) == 0
            stall = await _stall_redis(redis_server.url, 1.0)
            if how == "timeout":
                with pytest.raises(CapacityUnavailable):
                    await capacity.acquire(host, 1)
            else:
                link.timeout = 5.0
                attempt = asyncio.get_running_loop().create_task(capacity.acquire(host, 1))
                await asyncio.sleep(0.2)
                attempt.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await attempt
            await stall
            await capacity.renew()                        # as the relay does every lease_seconds / 3
            assert await _lease_count(link, host) == 0
            assert capacity.book.held == {} and capacity.book.abandoned == {}
        finally:
            await capacity.close()
            await link.close()
    arun(main())


class _InterleavedLink(RedisLink):
    """A RedisLink whose next call first runs ``before`` (to order two callers' commands)."""

    before = None

    async def call(self, make, *, timeout=None):
        before, self.before = self.before, None
        if before is not None:
            await before()
        return await super().call(make, timeout=timeout)


@pytest.mark.system                  # a real redis-server from Debian's packages
def test_a_release_during_a_renewal_is_not_undone_by_it(redis_server):
    """The renewal has read the leases to renew; a session ends and its ZREM reaches Redis
    first; the renewal's ZADD must not put the released lease back."""
    async def main():
        link = _InterleavedLink(redis_server.url)
        capacity = FleetCapacity(link, relay_id="r", lease_seconds=30)
        try:
            ended = await capacity.acquire("renewed.o", 2)
            kept = await capacity.acquire("renewed.o", 2)

            async def session_ends():
                capacity.release(ended)
                await asyncio.gather(*capacity._pending)
                assert await link.client.zscore(lease_key("renewed.o"), ended) is None
            link.before = session_ends
            assert await capacity.renew() == 2
            await asyncio.gather(*capacity._pending)
            members = await link.client.zrange(lease_key("renewed.o"), 0, -1)
            assert members == [kept.encode()]
        finally:
            await capacity.close()
            await link.close()
    arun(main())


@pytest.mark.system                  # a real redis-server from Debian's packages
def test_leases_lost_by_redis_are_put_back_soon_after_it_returns(caplog):
    """Redis restarted empty: until this relay's leases are back, another relay could admit
    past max_sessions. A relay that saw the outage renews every RESTORE_SECONDS until Redis
    answers, not every lease_seconds / 3; one that did not see it says so at its next renewal."""
    redis = start_redis()
    async def main():
        link = RedisLink(redis.url, timeout=0.5)
        capacity = FleetCapacity(link, relay_id="r", lease_seconds=6)        # renewals 2 s apart
        renewing = asyncio.get_running_loop().create_task(capacity.run())
        loop = asyncio.get_running_loop()
        try:
            member = await capacity.acquire("restored.o", 1)
            redis.stop()
            started = loop.time()
            while capacity.book.in_redis:
                assert loop.time() - started < 5
                await asyncio.sleep(0.05)
            start_redis(redis.port)                                          # back, and empty
            back = loop.time()
            while await link.client.zscore(lease_key("restored.o"), member) is None:
                assert loop.time() - back < 1.2, "the lease was not restored soon after Redis returned"
                await asyncio.sleep(0.05)
            with pytest.raises(CapacityError):
                await FleetCapacity(link, relay_id="other", lease_seconds=6).acquire("restored.o", 1)

            await link.client.flushall()                   # a restart between two renewals
            caplog.clear()
            with caplog.at_level("WARNING", logger="wsrelay.leases"):
                assert await capacity.renew() == 1
            assert await link.client.zscore(lease_key("restored.o"), member) is not None
            assert [r.getMessage() for r in caplog.records] == [
                "1 session lease(s) were missing in Redis (restarted empty?) and are put back; "
                "until now other relays could admit past max_sessions"]
        finally:
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
            await capacity.close()
            await link.close()
    try:
        arun(main())
    finally:
        redis.stop()


@contextlib.asynccontextmanager
async def _following(registry: FleetRegistry, link: RedisLink):
    """``registry`` following Redis for the block; then stopped, the test's agents removed, the link closed."""
    runner = asyncio.get_running_loop().create_task(registry.run())
    try:
        yield
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await link.client.delete(AGENTS_KEY)
        await link.close()


@pytest.mark.system                  # a real redis-server from Debian's packages
def test_registry_follows_apply_and_delete_and_the_file_wins(redis_server):
    async def main():
        link = RedisLink(redis_server.url)
        file_agent = AgentConfig("filed", "o", ("ws://file/",))
        registry = FleetRegistry([file_agent], link, region="eu-central")
        async with _following(registry, link):
            await asyncio.sleep(0.2)
            live = AgentConfig("new", "o", ("ws://redis/",), max_sessions=3)
            elsewhere = AgentConfig("far", "o", ("ws://redis/",), regions=("ap-south",))
            shadow = AgentConfig("filed", "o", ("ws://redis/",))
            await apply_agents(link, [live, elsewhere, shadow])
            for _ in range(40):
                if registry.lookup("new.o") is not None:
                    break
                await asyncio.sleep(0.025)
            assert registry.lookup("new.o").max_sessions == 3
            assert registry.lookup("far.o") is None                      # not deployed in this region
            assert registry.lookup("filed.o").upstreams == ("ws://file/",)
            session_agent = registry.lookup("new.o")
            assert await delete_agent(link, "new.o") is True
            assert await delete_agent(link, "new.o") is False
            for _ in range(40):
                if registry.lookup("new.o") is None:
                    break
                await asyncio.sleep(0.025)
            assert registry.lookup("new.o") is None
            assert session_agent.max_sessions == 3                       # what a live session holds
    arun(main())


@pytest.mark.system                  # a real redis-server from Debian's packages
def test_registry_rereads_redis_periodically_even_without_a_message(redis_server):
    """A change whose message was missed (a relay reconnecting) is found by the full refresh."""
    async def main():
        link = RedisLink(redis_server.url)
        registry = FleetRegistry([], link, refresh_seconds=0.5)
        async with _following(registry, link):
            await asyncio.sleep(0.2)
            table = json.dumps(agent_to_dict(AgentConfig("quiet", "o", ("ws://x/",))))
            await link.client.hset(AGENTS_KEY, "quiet.o", table)          # no PUBLISH
            loop = asyncio.get_running_loop()
            started = loop.time()
            while registry.lookup("quiet.o") is None:
                assert loop.time() - started < 2.5
                await asyncio.sleep(0.05)
    arun(main())


@pytest.mark.system                  # a real redis-server from Debian's packages
def test_a_token_agent_from_redis_on_a_relay_without_a_signing_key_is_refused_in_one_line(
        redis_server, pump, caplog):
    """The file's token agents need a key for the relay to start; Redis' agents arrive later."""
    from wsrelay.config import FleetConfig
    from wsrelay.core.tokens import mint_token
    async def main():
        bot = await Bot(echo=True).start()
        cfg = dataclasses.replace(relay_config({}), fleet=FleetConfig(redis_url=redis_server.url))
        link = RedisLink(redis_server.url)
        await apply_agents(link, [AgentConfig("keyless", "o", (bot.url,), websocket_auth="token",
                                              public_keys=("pk",))])
        relay = await start_relay(cfg, pump)
        try:
            assert relay.registry.lookup("keyless.o") is not None
            head = (b"POST /v1/public/keyless/start HTTP/1.1\r\nHost: relay.test\r\n"
                    b"Authorization: Bearer pk\r\nContent-Length: 2\r\n\r\n{}")
            start = await raw_request(relay.port, head)
            token = mint_token("keyless.o", keys={"k": "s"}, active_key="k", ttl=60, now=time.time())
            upgrade = await raw_request(relay.port, upgrade_head(f"/ws/generic/keyless.o?token={token}"))
            assert (status_of(start), status_of(upgrade)) == (503, 503), (start, upgrade)
            assert b"cannot issue tokens" in start and b"cannot check tokens" in upgrade
            assert not bot.requests
            assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
        finally:
            await relay.stop()
            await link.client.delete(AGENTS_KEY)
            await link.close()
            bot.close()
    arun(main())


def test_agents_commands_say_one_line_when_redis_is_away():
    async def main():
        link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
        with pytest.raises(FleetError) as info:
            await apply_agents(link, [AgentConfig("a", "o", ("ws://x/",))])
        assert "did not answer" in str(info.value) and "[fleet] redis_url" in str(info.value)
        await link.close()
    arun(main())


# -- the resolver against a real DNS server ----------------------------------------------------

def test_resolver_asks_the_given_servers_and_keeps_the_last_good_answer():
    dns = DnsServer({"bots.test": ["127.0.0.2", "127.0.0.3"]}).start()
    try:
        async def main():
            resolver = Resolver((f"127.0.0.1:{dns.port}",), timeout=1.0)
            assert await resolver.resolve("bots.test") == ["127.0.0.2", "127.0.0.3"]
            dns.records["bots.test"] = ["fd00::7", "127.0.0.4", "127.0.0.2"]        # A and AAAA
            assert await resolver.resolve("bots.test") == ["127.0.0.2", "127.0.0.4", "fd00::7"]
            del dns.records["bots.test"]                                   # NXDOMAIN: keep the last
            assert await resolver.resolve("bots.test") == ["127.0.0.2", "127.0.0.4", "fd00::7"]
            assert await resolver.resolve("never.test") == []
            system = Resolver()
            assert "127.0.0.1" in await system.resolve("localhost")
        arun(main())
    finally:
        dns.stop()


def test_an_unanswered_aaaa_query_does_not_lose_the_a_addresses():
    """A resolver that drops AAAA queries (seen in the field) must not empty the pool."""
    dns = DnsServer({"bots.test": ["127.0.0.2", "127.0.0.3"]})
    dns.unanswered.add("AAAA")
    dns.start()
    try:
        async def main():
            resolver = Resolver((f"127.0.0.1:{dns.port}",), timeout=1.0)
            assert await resolver.resolve("bots.test") == ["127.0.0.2", "127.0.0.3"]
        arun(main())
    finally:
        dns.stop()


def test_agents_command_with_redis_away_is_one_line_and_exit_1(tmp_path):
    import subprocess
    import sys
    config = tmp_path / "relay.toml"
    config.write_text(f"[fleet]\nredis_url = 'redis://relay:hunter2@127.0.0.1:{free_port()}/0'\n")
    for verb in (["list"], ["delete", "a.o"]):
        result = subprocess.run([sys.executable, "-m", "wsrelay", "agents", *verb, "--config", str(config)],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("wsrelay: Redis at redis://***@127.0.0.1:"), result.stderr
        assert "hunter2" not in result.stderr
    no_fleet = tmp_path / "plain.toml"
    no_fleet.write_text("")
    result = subprocess.run([sys.executable, "-m", "wsrelay", "agents", "list", "--config", str(no_fleet)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "fleet.redis_url" in result.stderr
