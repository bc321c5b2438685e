"""Capacity, session time limit, idle timeout and the relay's own keepalive pings."""

from __future__ import annotations

import asyncio
import dataclasses
import struct

from picows import WSMsgType, ws_connect

from support import (Bot, Recorder, arun, connect_client, raw_request, relay_config, start_relay,
                     status_of, upgrade_head)


def _with_agent(config, **agent_fields):
    agents = tuple(dataclasses.replace(a, **agent_fields) for a in config.agents)
    return dataclasses.replace(config, agents=agents)


def _code(frame) -> int:
    return struct.unpack("!H", frame.payload[:2])[0]


def test_max_sessions_answers_429_with_retry_after_and_frees_slots(pump):
    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(_with_agent(relay_config({"echo.demo": [bot.url]}), max_sessions=2), pump)
        url = f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo"
        first = await connect_client(url)
        second = await connect_client(url)
        response = await raw_request(relay.port, upgrade_head("/ws/generic/echo.demo"))
        assert status_of(response) == 429
        assert b"Retry-After: " in response
        assert len(bot.requests) == 2                  # the refused one never reached the bot
        first[0].send_close(1000)
        await first[1].disconnected.wait()
        await asyncio.sleep(0.05)
        third, rec = await connect_client(url)         # the slot is free again
        third.send(WSMsgType.TEXT, b"in")
        await rec.wait_frames(1)
        assert rec.frames[0].payload == b"in"
        bot.close()
    arun(main())


def test_max_session_seconds_closes_both_sides_with_1008(pump):
    async def main():
        bot = await Bot().start()
        relay = await start_relay(_with_agent(relay_config({"echo.demo": [bot.url]}),
                                              max_session_seconds=0.4), pump)
        client, client_rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
        bot_rec = await bot.session()
        await client_rec.wait_frames(1, timeout=5)
        await bot_rec.wait_frames(1, timeout=5)
        for rec in (client_rec, bot_rec):
            frame = rec.close_frames()[0]
            assert _code(frame) == 1008
            assert b"time limit" in frame.payload
        await asyncio.wait_for(client_rec.disconnected.wait(), 5)
        bot.close()
    arun(main())


def test_idle_timeout_closes_quiet_sessions_only(pump):
    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(_with_agent(relay_config({"echo.demo": [bot.url]}), idle_timeout=0.3), pump)
        url = f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo"
        busy, busy_rec = await connect_client(url)
        quiet, quiet_rec = await connect_client(url)
        for _ in range(10):                             # 1 s of traffic on one session
            busy.send(WSMsgType.BINARY, b"x")
            await asyncio.sleep(0.1)
        await asyncio.wait_for(quiet_rec.disconnected.wait(), 2)
        assert _code(quiet_rec.close_frames()[0]) == 1001
        assert b"idle" in quiet_rec.close_frames()[0].payload
        assert not busy_rec.disconnected.is_set()
        assert busy_rec.close_frames() == []
        bot.close()
    arun(main())


def test_keepalive_pings_are_answered_and_never_relayed(pump):
    async def main():
        bot = await Bot(auto_pong=True).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, keepalive_interval=0.2,
                                               keepalive_timeout=0.2), pump)
        rec = Recorder()
        # A client that answers pings (picows auto-pong) keeps its session ...
        client, _ = await ws_connect(lambda: rec, f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo",
                                     enable_auto_pong=True, use_aiofastnet=False)
        bot_rec = await bot.session()
        await asyncio.sleep(1.0)
        assert not rec.disconnected.is_set()
        client.send(WSMsgType.TEXT, b"alive")
        await bot_rec.wait_for(lambda: any(f.payload == b"alive" for f in bot_rec.frames))
        # ... and the client's pongs to the relay's pings never reach the bot.
        assert not [f for f in bot_rec.frames if f.msg_type == WSMsgType.PONG]
        bot.close()
    arun(main())


def test_keepalive_drops_a_peer_that_stops_answering(pump):
    async def main():
        bot = await Bot(auto_pong=False).start()        # this bot never answers pings
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, keepalive_interval=0.2,
                                               keepalive_timeout=0.2), pump)
        client, client_rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo",
                                                  auto_pong=True)
        bot_rec = await bot.session()
        await asyncio.wait_for(bot_rec.disconnected.wait(), 3)
        pings = [f for f in bot_rec.frames if f.msg_type == WSMsgType.PING]
        assert pings and pings[0].payload == b"wsrelay-keepalive"
        await asyncio.wait_for(client_rec.disconnected.wait(), 3)
        assert _code(client_rec.close_frames()[0]) == 1011          # bot lost
        bot.close()
    arun(main())


def test_a_capacity_check_that_fails_unexpectedly_answers_500(pump, caplog):
    """Not a CapacityError (here: the shared table of --workers is full) must still answer."""
    from wsrelay.admission.capacity import SharedCapacity
    from wsrelay.edge.relay import Relay

    async def main():
        bot = await Bot(echo=True).start()
        cfg = relay_config({"first.demo": [bot.url], "second.demo": [bot.url]})
        cfg = _with_agent(cfg, max_sessions=5)
        relay = Relay(cfg, pump=pump, capacity=SharedCapacity(slots=1))      # room for one agent
        await relay.start()
        try:
            first, _ = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/first.demo")
            try:
                response = await raw_request(relay.port, upgrade_head("/ws/generic/second.demo"), read_timeout=5)
            except TimeoutError:
                raise AssertionError("the client got no answer") from None
            assert status_of(response) == 500
            assert len(bot.requests) == 1
            failures = [r for r in caplog.records if r.getMessage() == "capacity check failed unexpectedly"]
            assert len(failures) == 1 and "capacity table full" in str(failures[0].exc_info[1])
            first.disconnect()
        finally:
            await relay.stop()
            bot.close()
    arun(main())


def test_an_upstream_that_cannot_even_be_dialled_is_502_and_gives_its_slot_back(pump, caplog):
    """A host label over 63 bytes makes the IDNA codec raise (not an OSError) inside the connect:
    each client still gets 502, and the slot comes back (max_sessions = 1 lets the next one try)."""
    async def main():
        cfg = relay_config({"long.demo": ["ws://" + "a" * 64 + ".test:80/"]})
        relay = await start_relay(_with_agent(cfg, max_sessions=1), pump)
        try:
            for _ in range(3):
                try:
                    response = await raw_request(relay.port, upgrade_head("/ws/generic/long.demo"), read_timeout=5)
                except TimeoutError:
                    raise AssertionError("the client got no answer") from None
                assert status_of(response) == 502, response[:80]
            assert not relay.sessions
        finally:
            await relay.stop()
    arun(main())


def test_a_reload_names_every_relay_key_that_waits_for_a_restart(pump, caplog):
    """Only cors_origins follows a reload; a new admin_token (a rotation!) or any other [relay]
    key must be named in the warning, not dropped without a word."""
    import dataclasses
    import logging

    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        try:
            new = dataclasses.replace(relay.config.relay, admin_token="x" * 32, provider_start_timeout=3.0,
                                      gap_threshold_ms=50, cors_origins=("https://app.example",))
            with caplog.at_level(logging.WARNING, logger="wsrelay"):
                relay.reload(dataclasses.replace(relay.config, relay=new))
            warnings = [r.getMessage() for r in caplog.records if "after a restart" in r.getMessage()]
            assert len(warnings) == 1, warnings
            for key in ("relay.admin_token", "relay.provider_start_timeout", "relay.gap_threshold_ms"):
                assert key in warnings[0]
            assert "cors_origins" not in warnings[0]
            assert relay.config.relay.cors_origins == ("https://app.example",)
            assert relay.config.relay.admin_token != "x" * 32
        finally:
            await relay.stop()
            bot.close()
    arun(main())
