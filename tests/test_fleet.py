"""A fleet on 127.0.0.1: one redis-server, three ``wsrelay serve`` processes, a DNS server, bots.

Everything is a real process or a real server: the relays are the ``wsrelay`` command,
Redis is Debian's ``redis-server``, the DNS server is dnslib's, the bots listen on
127.0.0.2, .3 and .4. The tests run in file order on one fleet (module scope); the last
ones take Redis away and kill a relay with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import pytest
from picows import WSMsgType

from fleet_support import BotProcess, DnsServer, redis_command, start_redis, wait_until
from support import RelayProcess, arun, connect_client, free_port, metrics_text, raw_request, status_of, upgrade_head

pytestmark = pytest.mark.system      # a real redis-server from Debian's packages

LEASE_SECONDS = 2
DNS_NAME = "bots.fleet.test"


def _relay_toml(index: int, port: int, admin: int, redis_url: str, dns_port: int, bot_port: int) -> str:
    return f"""
[relay]
host = "127.0.0.1"
port = {port}
admin_port = {admin}
drain_seconds = 0.5
close_timeout = 1
upstream_connect_timeout = 2
dns_servers = ["127.0.0.1:{dns_port}"]
dns_refresh_seconds = 0.5

[fleet]
redis_url = "{redis_url}"
relay_id = "relay-{index}"
lease_seconds = {LEASE_SECONDS}

[[agents]]
name = "capped"
organization = "fleet"
upstreams = ["ws://127.0.0.2:{bot_port}/ws"]
max_sessions = 4

[[agents]]
name = "down"
organization = "fleet"
upstreams = ["ws://127.0.0.2:{bot_port}/ws"]
max_sessions = 2

[[agents]]
name = "free"
organization = "fleet"
upstreams = ["ws://127.0.0.2:{bot_port}/ws"]

[[agents]]
name = "killed"
organization = "fleet"
upstreams = ["ws://127.0.0.2:{bot_port}/ws"]
max_sessions = 2

[[agents]]
name = "dns"
organization = "fleet"
upstreams = ["ws://{DNS_NAME}:{bot_port}/ws"]
"""


class Fleet:
    def __init__(self, tmp_path_factory) -> None:
        self.redis = start_redis()
        self.bot_port = free_port()
        self.bots = {host: BotProcess(host, self.bot_port) for host in ("127.0.0.2", "127.0.0.3", "127.0.0.4")}
        self.dns = DnsServer({DNS_NAME: list(self.bots)}).start()
        self.ports = [free_port() for _ in range(3)]
        self.admin_ports = [free_port() for _ in range(3)]
        self.relays = []
        for i in range(3):
            directory = tmp_path_factory.mktemp(f"relay{i}")
            text = _relay_toml(i, self.ports[i], self.admin_ports[i], self.redis.url, self.dns.port, self.bot_port)
            self.relays.append(RelayProcess(text, directory))

        async def ready():
            for relay, port in zip(self.relays, self.ports):
                await relay.wait_port(port)
        arun(ready())

    @property
    def config_path(self) -> str:
        return str(self.relays[0].path)

    def url(self, index: int, agent: str) -> str:
        return f"ws://127.0.0.1:{self.ports[index]}/ws/generic/{agent}"

    def stop(self) -> None:
        for relay in self.relays:
            if relay.proc.poll() is None:
                relay.stop()
        for bot in self.bots.values():
            bot.kill()
        self.dns.stop()
        self.redis.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = Fleet(tmp_path_factory)
    yield fleet
    fleet.stop()


async def _status(port: int, agent: str) -> int:
    return status_of(await raw_request(port, upgrade_head(f"/ws/generic/{agent}"), read_timeout=8))


async def _open(url: str):
    """A client whose session reached a bot: (transport, recorder, the bot's greeting)."""
    transport, rec = await connect_client(url)
    await rec.wait_frames(1)
    return transport, rec, rec.frames[0].payload.decode()


async def _close(clients) -> None:
    for transport, rec, *_ in clients:
        transport.send_close(1000)
    for transport, rec, *_ in clients:
        await asyncio.wait_for(rec.disconnected.wait(), 5)


def _leases(fleet: Fleet, agent: str) -> int:
    return int(redis_command(fleet.redis, "ZCARD", f"wsrelay:leases:{agent}"))


def _wsrelay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsrelay", *args], capture_output=True, text=True, timeout=30)


def test_max_sessions_is_exact_across_three_relays(fleet):
    """12 clients at once, spread over the three relays: exactly max_sessions = 4 get in."""
    async def main():
        from picows import WSError

        async def attempt(index: int):
            try:
                return await _open(fleet.url(index % 3, "capped.fleet"))
            except (WSError, ConnectionError) as exc:
                return exc
        results = await asyncio.gather(*(attempt(i) for i in range(12)))
        admitted = [r for r in results if isinstance(r, tuple)]
        refused = [r for r in results if not isinstance(r, tuple)]
        assert len(admitted) == 4, refused
        assert all("429" in str(r) for r in refused), refused
        assert _leases(fleet, "capped.fleet") == 4
        # Whichever relay the 5th lands on: 429.
        assert [await _status(port, "capped.fleet") for port in fleet.ports] == [429, 429, 429]
        await _close(admitted[:1])
        wait_until(lambda: _leases(fleet, "capped.fleet") == 3, 3)
        again = await _open(fleet.url(2, "capped.fleet"))       # the slot came back, fleet-wide
        assert again[2] == "hello from 127.0.0.2"
        await _close(admitted[1:] + [again])
        wait_until(lambda: _leases(fleet, "capped.fleet") == 0, 3)
    arun(main())


def test_agents_apply_and_delete_reach_every_relay_within_a_second(fleet, tmp_path):
    applied = tmp_path / "agents.toml"
    applied.write_text(f"""
[[agents]]
name = "applied"
organization = "fleet"
upstreams = ["ws://127.0.0.3:{fleet.bot_port}/ws"]
max_sessions = 5
""")

    async def statuses():
        return [await _status(port, "applied.fleet") for port in fleet.ports]

    async def main():
        assert await statuses() == [404, 404, 404]
        result = _wsrelay("agents", "apply", str(applied), "--config", fleet.config_path)
        assert result.returncode == 0, result.stderr
        started = time.monotonic()
        while await statuses() != [101, 101, 101]:
            assert time.monotonic() - started < 1.0, "not routed by every relay within 1 s"
            await asyncio.sleep(0.05)
        listed = _wsrelay("agents", "list", "--config", fleet.config_path)
        assert listed.returncode == 0 and "applied.fleet\tws://127.0.0.3:" in listed.stdout
        assert "max_sessions=5" in listed.stdout
        result = _wsrelay("agents", "delete", "applied.fleet", "--config", fleet.config_path)
        assert result.returncode == 0, result.stderr
        started = time.monotonic()
        while await statuses() != [404, 404, 404]:
            assert time.monotonic() - started < 1.0, "still routed 1 s after the delete"
            await asyncio.sleep(0.05)
        again = _wsrelay("agents", "delete", "applied.fleet", "--config", fleet.config_path)
        assert again.returncode == 1 and "no agent applied.fleet" in again.stderr
    arun(main())


def test_agents_apply_is_all_or_nothing_with_key_and_line(fleet, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(f"""[[agents]]
name = "first"
organization = "fleet"
upstreams = ["ws://127.0.0.2:{fleet.bot_port}/ws"]

[[agents]]
name = "second"
organization = "fleet"
upstreams = ["http://not-a-websocket"]
""")
    result = _wsrelay("agents", "apply", str(bad), "--config", fleet.config_path)
    assert result.returncode == 2
    assert f"{bad}:9, key 'agents[1].upstreams[0]'" in result.stderr
    listed = _wsrelay("agents", "list", "--config", fleet.config_path)
    assert "first.fleet" not in listed.stdout              # nothing written
    assert redis_command(fleet.redis, "HEXISTS", "wsrelay:agents", "first.fleet") == 0


def test_the_file_wins_over_redis_and_the_conflict_is_logged_once(fleet, tmp_path):
    shadow = tmp_path / "shadow.toml"
    shadow.write_text(f"""[[agents]]
name = "capped"
organization = "fleet"
upstreams = ["ws://127.0.0.4:{fleet.bot_port}/ws"]
""")

    async def main():
        for _ in range(2):
            assert _wsrelay("agents", "apply", str(shadow), "--config", fleet.config_path).returncode == 0
        await asyncio.sleep(0.5)
        client = await _open(fleet.url(0, "capped.fleet"))
        assert client[2] == "hello from 127.0.0.2"         # the file's upstream, not Redis'
        await _close([client])
        assert _wsrelay("agents", "delete", "capped.fleet", "--config", fleet.config_path).returncode == 0
    arun(main())
    log = fleet.relays[0].log()
    assert log.count("is both in the config file and in Redis") == 1, log[-3000:]


def test_dns_name_balanced_by_fewest_sessions_and_a_dead_bot_is_ejected(fleet):
    async def main():
        url = fleet.url(0, "dns.fleet")
        first = [await _open(url) for _ in range(3)]
        assert sorted(c[2] for c in first) == ["hello from 127.0.0.2", "hello from 127.0.0.3",
                                               "hello from 127.0.0.4"]
        on_3 = next(c for c in first if c[2].endswith("127.0.0.3"))
        await _close([on_3])
        await asyncio.sleep(0.1)
        refill = await _open(url)                          # .3 has the fewest sessions now
        assert refill[2] == "hello from 127.0.0.3"
        live = [c for c in first if c is not on_3] + [refill]

        fleet.bots["127.0.0.4"].kill()
        on_4 = next(c for c in live if c[2].endswith("127.0.0.4"))
        await asyncio.wait_for(on_4[1].disconnected.wait(), 5)
        live.remove(on_4)
        await asyncio.sleep(0.1)
        more = [await _open(url) for _ in range(4)]         # never a 502 while .2 and .3 are up
        assert sorted(c[2] for c in more) == ["hello from 127.0.0.2"] * 2 + ["hello from 127.0.0.3"] * 2
        metrics = await metrics_text(fleet.admin_ports[0])
        assert 'wsrelay_upstream_instances{agent="dns",organization="fleet",state="ejected"} 1.0' in metrics
        assert re.search(r'wsrelay_upstream_ejections_total\{agent="dns",organization="fleet"\} [1-9]', metrics)
        assert re.search(r'wsrelay_upstream_connect_failures_total\{agent="dns",organization="fleet"\} [1-9]',
                         metrics)

        fleet.dns.records[DNS_NAME] = ["127.0.0.2", "127.0.0.3"]       # the pod is gone from DNS too
        started = time.monotonic()
        while 'state="ejected"} 0.0' not in (metrics := await metrics_text(fleet.admin_ports[0])):
            assert time.monotonic() - started < 3, "the instance left in DNS is still counted"
            await asyncio.sleep(0.1)
        assert 'wsrelay_upstream_instances{agent="dns",organization="fleet",state="healthy"} 2.0' in metrics
        await _close(live + more)
    arun(main())


def test_redis_down_live_sessions_go_on_capped_get_503_and_leases_return(fleet):
    async def main():
        capped = await _open(fleet.url(1, "down.fleet"))
        free = await _open(fleet.url(1, "free.fleet"))
        assert _leases(fleet, "down.fleet") == 1
        fleet.redis.stop()
        try:
            for port in fleet.ports:
                started = time.monotonic()
                response = await raw_request(port, upgrade_head("/ws/generic/down.fleet"), read_timeout=8)
                assert status_of(response) == 503 and b"Retry-After: 1" in response
                assert time.monotonic() - started < 3.5           # a bounded wait
            other = await _open(fleet.url(2, "free.fleet"))       # no limit: no Redis needed
            await asyncio.sleep(LEASE_SECONDS + 0.5)              # renewals fail meanwhile
            for transport, rec, _ in (capped, free):               # live sessions never dropped
                transport.send(WSMsgType.TEXT, b"still here")
                await rec.wait_for(lambda: rec.frames[-1].payload == b"still here", 5)
        finally:
            fleet.redis = start_redis(fleet.redis.port)            # back, and empty
        wait_until(lambda: _leases(fleet, "down.fleet") == 1, LEASE_SECONDS + 2)   # restored
        second = await _open(fleet.url(2, "down.fleet"))
        assert await _status(fleet.ports[0], "down.fleet") == 429  # the restored lease counts
        await _close([capped, free, other, second])
    arun(main(), timeout=90)
    assert "session leases not renewed, live sessions go on" in fleet.relays[1].log()


def test_a_relay_killed_with_sigkill_gives_its_slots_back_within_the_lease(fleet):
    async def main():
        held = [await _open(fleet.url(2, "killed.fleet")) for _ in range(2)]
        assert await _status(fleet.ports[0], "killed.fleet") == 429
        fleet.relays[2].proc.kill()                                # kill -9: no goodbye to Redis
        killed_at = time.monotonic()
        fleet.relays[2].proc.wait(5)
        for _, rec, _ in held:
            await asyncio.wait_for(rec.disconnected.wait(), 5)
        while await _status(fleet.ports[0], "killed.fleet") != 101:
            assert time.monotonic() - killed_at < LEASE_SECONDS + 1, "slots not back within lease_seconds + 1 s"
            await asyncio.sleep(0.1)
        assert time.monotonic() - killed_at > 0.5 * LEASE_SECONDS  # freed by the lease, not before
    arun(main())


def test_relay_logs_are_structured_and_name_the_fleet(fleet):
    lines = [json.loads(line) for line in fleet.relays[0].log().splitlines() if line.startswith("{")]
    assert any("fleet: relay relay-0" in line.get("msg", line.get("message", "")) for line in lines), lines[:5]
