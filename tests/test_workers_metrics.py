"""``--workers N``: /metrics reports the whole process group, not worker 0 alone."""

from __future__ import annotations

import asyncio
import re

from picows import WSMsgType

from wsrelay.telemetry.metrics_group import merge

from support import Bot, RelayProcess, arun, connect_client, free_port, metrics_text


def _exposition(sessions: int, seconds: list[float], instances: int) -> str:
    """One worker's exposition, written by prometheus-client as the relay's is."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    registry = CollectorRegistry()
    Counter("wsrelay_sessions", "Sessions ended", ["agent"], registry=registry).labels("a").inc(sessions)
    histogram = Histogram("wsrelay_session_seconds", "Durations", buckets=(1, 5), registry=registry)
    for value in seconds:
        histogram.observe(value)
    Gauge("wsrelay_upstream_instances", "Instances", ["state"], registry=registry).labels("healthy").set(instances)
    return generate_latest(registry).decode()


def test_merge_adds_counters_and_histograms_and_takes_the_largest_shared_gauge():
    from prometheus_client.parser import text_string_to_metric_families
    merged = merge([_exposition(2, [0.5, 3], 3), _exposition(5, [0.2, 9, 9], 3)]).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    assert set(families) == {"wsrelay_sessions", "wsrelay_session_seconds", "wsrelay_upstream_instances"}
    assert families["wsrelay_sessions"].type == "counter"
    assert 'wsrelay_sessions_total{agent="a"} 7.0' in merged and "_created" not in merged
    assert 'wsrelay_session_seconds_bucket{le="1.0"} 2.0' in merged
    assert 'wsrelay_session_seconds_bucket{le="+Inf"} 5.0' in merged
    assert "wsrelay_session_seconds_count 5.0" in merged and "wsrelay_session_seconds_sum 21.7" in merged
    assert 'wsrelay_upstream_instances{state="healthy"} 3.0' in merged      # seen by both, not 6


def _value(metrics: str, pattern: str) -> float:
    match = re.search(re.escape(pattern) + r" ([0-9.e+]+)", metrics)
    assert match, (pattern, metrics[-2000:])
    return float(match.group(1))


async def two_workers_with_clients(bot, tmp_path, relay_extra: str = "", clients: int = 12):
    """A ``wsrelay serve`` with 2 workers in front of ``bot``, and ``clients`` sessions that have each
    relayed one frame. SO_REUSEPORT spreads them over both workers (all on one: 1 in 2**(n-1))."""
    port, admin = free_port(), free_port()
    relay = RelayProcess(f"""[relay]
host = "127.0.0.1"
port = {port}
admin_port = {admin}
workers = 2
drain_seconds = 0.5
{relay_extra}
[[agents]]
name = "echo"
organization = "demo"
upstreams = ["{bot.url}"]
""", tmp_path)
    opened = []
    try:
        await relay.wait_port(port)
        await relay.wait_port(admin)
        await asyncio.sleep(0.5)                 # both workers listening
        for _ in range(clients):
            transport, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
            transport.send(WSMsgType.TEXT, b"x")
            await rec.wait_frames(1)
            opened.append((transport, rec))
    except BaseException:
        relay.stop()
        raise
    return relay, port, admin, opened


def test_metrics_of_two_workers_are_one_exposition(tmp_path):
    async def main():
        bot = await Bot(echo=True).start()
        relay, port, admin, clients = await two_workers_with_clients(bot, tmp_path)
        try:
            # SO_REUSEPORT spreads the 12 over both workers (all on one: a chance of 1 in 2048),
            # so worker 0 alone would count fewer.
            metrics = await metrics_text(admin)
            assert _value(metrics, "wsrelay_workers_scraped") == 2
            assert _value(metrics, 'wsrelay_sessions_active{agent="echo",organization="demo"}') == 12
            assert _value(metrics, 'wsrelay_sessions_started_total{agent="echo",organization="demo"}') == 12
            assert _value(metrics, 'wsrelay_frames_total{direction="client_to_bot"}') == 12
            for transport, rec in clients:
                transport.send_close(1000)
                await rec.disconnected.wait()
            await asyncio.sleep(0.3)
            metrics = await metrics_text(admin)
            assert _value(metrics, 'wsrelay_sessions_total{agent="echo",organization="demo",outcome="closed"}') == 12
            assert _value(metrics, "wsrelay_session_seconds_count") == 12
            assert _value(metrics, 'wsrelay_sessions_started_total{agent="echo",organization="demo"}') == 12
        finally:
            assert relay.stop() == 0, relay.log()
            bot.close()
    arun(main(), timeout=60)
