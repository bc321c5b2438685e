"""Voice telemetry: the pump times every data frame's arrival, and both pumps agree.

Sans sockets: ``Side.observe_arrivals`` runs the per-frame timing code on given times, so
the compiled and pure-Python pumps are compared on the same (hypothesis) arrival times.
Over sockets: bots pace real frames through the relay, and the session's log line,
/metrics and the admin API report what the pacing was.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from picows import WSMsgType

from support import Bot, arun, connect_client, relay_config, start_relay
from wsrelay import pump as pump_selector

MS = 1_000_000
PAYLOAD = bytes(160)                       # 20 ms of 8 kHz mu-law


def figures(side) -> tuple[int, int, int, int]:
    return side.first_frame_ns, side.max_gap_ns, side.gaps, side.jitter_ns


@pytest.mark.parametrize("name", ["cython", "python"])
def test_known_arrivals_give_the_rfc3550_figures(name):
    side = pump_selector.load(name).Side(None, False)
    assert figures(side) == (0, 0, 0, 0)
    # 20 ms, 20 ms, 300 ms, 20 ms: D = 0, 280 ms, 280 ms -> J16 = 0, 280, 280 + 280 - 17.5
    side.observe_arrivals([1000 * MS, 1020 * MS, 1040 * MS, 1340 * MS, 1360 * MS])
    first, max_gap, gaps, jitter = figures(side)
    assert (first, max_gap, gaps) == (1000 * MS, 300 * MS, 1)
    j16 = 0
    for d in (0, 280 * MS, 280 * MS):
        j16 += d - ((j16 + 8) >> 4)
    assert jitter == j16 >> 4 and 30 * MS < jitter < 40 * MS


@pytest.mark.parametrize("name", ["cython", "python"])
def test_a_steady_stream_has_no_jitter_and_no_gap(name):
    side = pump_selector.load(name).Side(None, True)
    side.observe_arrivals(range(5 * MS, 5 * MS + 500 * 20 * MS, 20 * MS))
    assert figures(side) == (5 * MS, 20 * MS, 0, 0)


@pytest.mark.parametrize("name", ["cython", "python"])
def test_the_gap_threshold_is_per_side_and_strict(name):
    side = pump_selector.load(name).Side(None, False)
    side.gap_threshold_ns = 50 * MS
    side.observe_arrivals([MS, 51 * MS, 102 * MS])          # 50 ms is not over 50 ms; 51 ms is
    assert side.gaps == 1


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 10**15), st.lists(st.integers(0, 10**10), max_size=200), st.integers(1, 10**9))
def test_both_pumps_compute_the_same_integers(start, intervals, threshold):
    times = [start]
    for interval in intervals:
        times.append(times[-1] + interval)
    sides = [pump_selector.load(name).Side(None, False) for name in ("cython", "python")]
    for side in sides:
        side.gap_threshold_ns = threshold
        side.observe_arrivals(times)
    assert figures(sides[0]) == figures(sides[1])
    assert sides[0].max_gap_ns == max(intervals, default=0)
    assert sides[0].gaps == sum(1 for i in intervals if i > threshold)


# -- real frames through the relay ----------------------------------------------------------------

async def paced(transport, count: int, period: float, *, delay: float = 0.0,
                stall_after: int | None = None, stall: float = 0.0) -> None:
    """Send ``count`` frames every ``period`` s on an absolute schedule (no drift); after frame
    ``stall_after`` the next one comes ``stall`` s later instead of ``period``."""
    loop = asyncio.get_running_loop()
    due = loop.time() + delay
    for i in range(count):
        await asyncio.sleep(max(0.0, due - loop.time()))
        transport.send(WSMsgType.BINARY, PAYLOAD)
        due += stall if stall_after is not None and i == stall_after else period


def session_line(caplog) -> dict:
    lines = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "session_end"]
    assert len(lines) == 1, lines
    return lines[0]


async def relayed_call(pump: str, *, bot_plan: dict, client_frames: int = 50) -> bytes:
    """One session: the bot paces ``bot_plan`` once connected while the client sends 20 ms
    frames; returns the relay's /metrics once the session has ended (and been logged)."""
    started = asyncio.Event()
    bot = await Bot(on_connect=lambda transport: started.set()).start()
    relay = await start_relay(relay_config({"voice.acme": [bot.url]}), pump)
    try:
        transport, rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/voice.acme")
        bot_side = await bot.session()
        await asyncio.wait_for(started.wait(), 5)
        await asyncio.gather(paced(bot_side.transport, **bot_plan), paced(transport, client_frames, 0.02))
        await rec.wait_frames(bot_plan["count"], timeout=10)
        transport.send_close(1000)
        await asyncio.wait_for(rec.disconnected.wait(), 10)
        for _ in range(250):                 # the relay ends the session once both sides are gone
            if not relay.sessions:
                break
            await asyncio.sleep(0.02)
        assert not relay.sessions
        body, _ = relay.metrics.render()
    finally:
        await relay.stop()
        bot.close()
    return body


def run_call(pump, caplog, **kw) -> tuple[dict, str]:
    caplog.set_level(logging.INFO, logger="wsrelay.session")
    metrics = arun(relayed_call(pump, **kw))
    return session_line(caplog), metrics.decode()


def test_a_steady_20ms_stream_has_jitter_under_2ms_and_no_gap(pump, caplog):
    line, metrics = run_call(pump, caplog, bot_plan=dict(count=100, period=0.02))
    for direction in ("up", "down"):
        assert line[f"jitter_ms_{direction}"] < 2.0, line
        assert line[f"gaps_{direction}"] == 0, line
        assert line[f"max_gap_ms_{direction}"] < 60, line
    assert 'wsrelay_session_jitter_seconds_count{direction="bot_to_client"} 1.0' in metrics
    assert 'wsrelay_frame_gaps_total{direction="bot_to_client"}' not in metrics


def test_one_300ms_stall_is_one_gap_in_that_direction_only(pump, caplog):
    line, metrics = run_call(pump, caplog, bot_plan=dict(count=60, period=0.02, stall_after=30, stall=0.3))
    assert 270 <= line["max_gap_ms_down"] <= 330, line
    assert line["gaps_down"] == 1, line
    assert line["gaps_up"] == 0 and line["max_gap_ms_up"] < 100, line
    assert 'wsrelay_frame_gaps_total{direction="bot_to_client"} 1.0' in metrics
    assert 'wsrelay_frame_gaps_total{direction="client_to_bot"}' not in metrics
    # one session observed, its longest gap in the (0.2, 0.35] bucket
    assert 'wsrelay_session_max_gap_seconds_bucket{direction="bot_to_client",le="0.2"} 0.0' in metrics
    assert 'wsrelay_session_max_gap_seconds_bucket{direction="bot_to_client",le="0.35"} 1.0' in metrics


def test_first_frame_time_is_the_bots_delay_after_the_clients_101(pump, caplog):
    line, metrics = run_call(pump, caplog, bot_plan=dict(count=10, period=0.02, delay=0.25), client_frames=10)
    assert 200 <= line["first_frame_ms_down"] <= 300, line
    assert line["first_frame_ms_up"] < 100, line
    assert 'wsrelay_session_first_frame_seconds_bucket{direction="bot_to_client",le="0.1"} 0.0' in metrics
    assert 'wsrelay_session_first_frame_seconds_bucket{direction="bot_to_client",le="0.5"} 1.0' in metrics


def test_a_bot_that_never_speaks_is_counted_silent_in_that_direction_only(pump, caplog):
    """No data frame down: no first-frame time to observe, so the session is counted in
    wsrelay_session_silent_total instead (the worst "first audio" case, invisible otherwise)."""
    line, metrics = run_call(pump, caplog, bot_plan=dict(count=0, period=0.02), client_frames=10)
    assert line["first_frame_ms_down"] is None and line["first_frame_ms_up"] is not None, line
    assert 'wsrelay_session_silent_total{direction="bot_to_client"} 1.0' in metrics
    assert 'wsrelay_session_silent_total{direction="client_to_bot"}' not in metrics
    assert 'wsrelay_session_first_frame_seconds_count{direction="bot_to_client"}' not in metrics
    assert 'wsrelay_session_first_frame_seconds_count{direction="client_to_bot"} 1.0' in metrics


def test_first_frame_time_on_a_telephony_endpoint_counts_from_the_gates_101(pump, caplog):
    """/ws/twilio: the gate writes the caller's 101 itself, before any bot is contacted. A bot
    slow to answer is part of the caller's wait for first audio, and the caller's first message
    (held by the gate while the bot is contacted) counts from that 101 too, not as 0."""
    from websockets.asyncio.client import connect

    from providers import Call, PipecatBot
    caplog.set_level(logging.INFO, logger="wsrelay.session")
    pause, delay = 0.1, 0.4             # the caller speaks 100 ms after its 101; the bot answers 400 ms late

    async def main():
        bot = await PipecatBot(delay=delay).start()
        relay = await start_relay(relay_config({"bot.acme": [bot.url]}), pump)
        try:
            call = Call("twilio", service_host="bot.acme")
            async with connect(f"ws://127.0.0.1:{relay.port}/ws/twilio") as ws:
                await asyncio.sleep(pause)
                for message in call.first_messages():
                    await ws.send(message)
                await ws.send(call.media(0))
                await asyncio.wait_for(ws.recv(), 10)          # the bot's first audio
            for _ in range(250):
                if not relay.sessions:
                    break
                await asyncio.sleep(0.02)
            assert not relay.sessions
        finally:
            await relay.stop()
            bot.close()
    arun(main())
    line = session_line(caplog)
    assert line["first_frame_ms_down"] >= (pause + delay) * 1000, line
    assert pause * 1000 <= line["first_frame_ms_up"] < (pause + delay) * 1000, line
