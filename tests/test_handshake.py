"""The life of a handshake: refusals before any upgrade, upstream choice, forwarded headers."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import uuid

import pytest
import websockets
from picows import WSMsgType

from support import (Bot, arun, connect_client, free_port, raw_request, relay_config, start_relay,
                     status_of, upgrade_head)


async def _relay_with_bot(pump, **overrides):
    bot = await Bot(echo=True).start()
    relay = await start_relay(relay_config({"echo.demo": [bot.url]}, **overrides), pump)
    return bot, relay


REFUSALS = [
    # (request bytes builder, expected status)
    ("unknown agent", lambda: upgrade_head("/ws/generic/nobody.demo"), 404),
    ("unknown organisation", lambda: upgrade_head("/ws/generic/echo.nobody"), 404),
    ("malformed service host", lambda: upgrade_head("/ws/generic/echo_demo"), 400),
    ("upper-case junk", lambda: upgrade_head("/ws/generic/ech%20o.demo"), 400),
    ("empty label", lambda: upgrade_head("/ws/generic/.demo"), 400),
    ("label too long", lambda: upgrade_head("/ws/generic/" + "a" * 64 + ".demo"), 400),
    ("no service host", lambda: upgrade_head("/ws/generic"), 400),
    ("serviceHost twice", lambda: upgrade_head("/ws/generic?serviceHost=echo.demo&serviceHost=echo.demo"), 400),
    ("host in path and query", lambda: upgrade_head("/ws/generic/echo.demo/x?serviceHost=echo.demo&a=1").replace(b"/x?", b"/a/b?"), 404),
    ("other path", lambda: upgrade_head("/ws/vonage"), 404),
    ("root", lambda: upgrade_head("/"), 404),
    ("too many segments", lambda: upgrade_head("/ws/generic/echo.demo/tok/extra"), 404),
    ("not an upgrade", lambda: b"GET /ws/generic/echo.demo HTTP/1.1\r\nHost: x\r\n\r\n", 426),
    ("wrong version", lambda: upgrade_head("/ws/generic/echo.demo").replace(b"Version: 13", b"Version: 8"), 426),
    ("bad key", lambda: upgrade_head("/ws/generic/echo.demo").replace(b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: zz"), 400),
    ("POST", lambda: upgrade_head("/ws/generic/echo.demo").replace(b"GET ", b"POST ", 1), 405),
    ("garbage", lambda: b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
    ("no Host header", lambda: upgrade_head("/ws/generic/echo.demo").replace(b"Host: relay.test\r\n", b""), 400),
    ("header without colon", lambda: upgrade_head("/ws/generic/echo.demo", extra="Broken header\r\n"), 400),
    ("absolute-form target", lambda: upgrade_head("http://evil/ws/generic/echo.demo"), 400),
    ("non-ascii target", lambda: upgrade_head("/ws/generic/echo.demo").replace(b"echo.demo", "écho.demo".encode()), 400),
    ("too many query fields", lambda: upgrade_head("/ws/generic/echo.demo?" + "&".join(f"a{i}=1" for i in range(65))), 400),
    ("oversized head", lambda: upgrade_head("/ws/generic/echo.demo", extra="X-Big: " + "a" * 9000 + "\r\n"), 431),
    ("bad bearer scheme", lambda: upgrade_head("/ws/generic/echo.demo", extra="Authorization: Basic abc\r\n"), 401),
]


@pytest.mark.parametrize("name,build,status", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_answer_before_any_upgrade_and_contact_no_bot(pump, name, build, status):
    async def main():
        bot, relay = await _relay_with_bot(pump)
        response = await raw_request(relay.port, build())
        assert status_of(response) == status, response[:200]
        assert b"Connection: close" in response
        assert bot.requests == []                     # no bot was contacted
        # ... and the relay is still fine for everyone else.
        client, rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
        client.send(WSMsgType.TEXT, b"still here")
        await rec.wait_frames(1)
        assert rec.frames[0].payload == b"still here"
        bot.close()
    arun(main())


def test_head_timeout_answers_408(pump):
    async def main():
        bot, relay = await _relay_with_bot(pump, handshake_timeout=0.3)
        response = await raw_request(relay.port, b"GET /ws/generic/echo.demo HTTP/1.1\r\nHost: x\r\n")
        assert status_of(response) == 408
        bot.close()
    arun(main())


def test_unreachable_bot_gives_502(pump):
    async def main():
        dead = f"ws://127.0.0.1:{free_port()}/"
        relay = await start_relay(relay_config({"echo.demo": [dead, dead]}), pump)
        response = await raw_request(relay.port, upgrade_head("/ws/generic/echo.demo"))
        assert status_of(response) == 502
        assert not relay.sessions and not relay.active
    arun(main())


def test_bot_that_never_answers_gives_504(pump):
    async def main():
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)                              # accepts TCP, never speaks
        relay = await start_relay(relay_config(
            {"echo.demo": [f"ws://127.0.0.1:{silent.getsockname()[1]}/"]},
            upstream_connect_timeout=0.5), pump)
        started = asyncio.get_running_loop().time()
        response = await raw_request(relay.port, upgrade_head("/ws/generic/echo.demo"))
        assert status_of(response) == 504
        assert asyncio.get_running_loop().time() - started < 3
        silent.close()
    arun(main())


def test_many_silent_instances_cost_a_client_three_connect_timeouts_at_most(pump):
    """Eight instances that accept TCP and never answer (a blackholed Service's pods): the client
    gets its 504 after 3 x upstream_connect_timeout in all, not 8 x."""
    async def main():
        silent = []
        for _ in range(8):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(16)
            silent.append(s)
        relay = await start_relay(relay_config(
            {"echo.demo": [f"ws://127.0.0.1:{s.getsockname()[1]}/" for s in silent]},
            upstream_connect_timeout=0.3), pump)
        try:
            started = asyncio.get_running_loop().time()
            response = await raw_request(relay.port, upgrade_head("/ws/generic/echo.demo"))
            elapsed = asyncio.get_running_loop().time() - started
            assert status_of(response) == 504
            assert 0.85 < elapsed < 1.8, elapsed              # 0.9 s budget; 8 x 0.3 = 2.4 s before
        finally:
            await relay.stop()
            for s in silent:
                s.close()
    arun(main())


@pytest.mark.parametrize("bot_status", [403, 404, 500, 503])
def test_bot_http_error_status_is_passed_through(pump, bot_status):
    async def main():
        bot = await Bot(status=bot_status).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        response = await raw_request(relay.port, upgrade_head("/ws/generic/echo.demo"))
        assert status_of(response) == bot_status
        bot.close()
    arun(main())


def test_dead_instance_is_skipped_for_the_next(pump):
    async def main():
        bot = await Bot(echo=True).start()
        dead = f"ws://127.0.0.1:{free_port()}/"
        relay = await start_relay(relay_config({"echo.demo": [dead, bot.url]}), pump)
        for _ in range(4):                              # whichever instance the rotation starts at
            client, rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
            client.send(WSMsgType.TEXT, b"hi")
            await rec.wait_frames(1)
            assert rec.frames[0].payload == b"hi"
            client.disconnect()
        assert len(bot.sessions) == 4
        bot.close()
    arun(main())


def test_sessions_are_balanced_across_upstreams(pump):
    async def main():
        bots = [await Bot(echo=True).start() for _ in range(3)]
        relay = await start_relay(relay_config({"echo.demo": [b.url for b in bots]}), pump)
        clients = [await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo") for _ in range(6)]
        assert [len(b.sessions) for b in bots] == [2, 2, 2]
        for t, _ in clients:
            t.disconnect()
        for b in bots:
            b.close()
    arun(main())


def test_forwarded_headers_query_and_subprotocol(pump):
    async def main():
        bot = await Bot(echo=True, subprotocol_choice=lambda offer: offer.split(",")[1].strip()).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url + "?fixed=1"]}), pump)
        url = (f"ws://127.0.0.1:{relay.port}/ws/generic?a=1&serviceHost=echo.demo"
               f"&body=eyJ4IjoxfQ%3D%3D&b=%20x")
        async with websockets.connect(url, subprotocols=["first", "second"],
                                      additional_headers={"X-Forwarded-For": "6.6.6.6"}) as ws:
            assert ws.subprotocol == "second"          # the bot's choice reaches the client
            await ws.send("ping")
            assert await ws.recv() == "ping"
        request = bot.requests[0]
        path = request.path.decode()
        assert path == "/bot?fixed=1&a=1&body=eyJ4IjoxfQ%3D%3D&b=%20x"
        h = request.headers
        assert h["X-Forwarded-For"] == "127.0.0.1"     # the client's own claim is not trusted
        assert h["X-Forwarded-Proto"] == "http"
        assert h["X-Forwarded-Host"] == f"127.0.0.1:{relay.port}"
        assert h["X-Service-Host"] == "echo.demo"
        assert uuid.UUID(h["X-Session-Id"]).version == 4
        assert h["Sec-WebSocket-Protocol"] == "first, second"
        assert "Sec-WebSocket-Extensions" not in h    # compression is never negotiated
        bot.close()
    arun(main())


def test_client_leaving_while_bot_connects_costs_nothing(pump):
    async def main():
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        relay = await start_relay(relay_config(
            {"echo.demo": [f"ws://127.0.0.1:{silent.getsockname()[1]}/"]},
            upstream_connect_timeout=1), pump)
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(upgrade_head("/ws/generic/echo.demo"))
        await asyncio.sleep(0.2)
        assert len(relay.sessions) == 1
        writer.close()
        await asyncio.sleep(0.3)
        assert not relay.sessions and not relay.active
        silent.close()
    arun(main())


# -- one verdict: what the gate accepts picows never refuses -------------------------------------

LF_HEAD = (b"GET /ws/generic/echo.demo HTTP/1.1\nHost: relay.test\nUpgrade: websocket\n"
           b"Connection: keep-alive, Upgrade\nSec-WebSocket-Version: 13\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\n\n")


def test_lf_only_heads_are_sessions_within_max_sessions(pump):
    """LF-only heads once held a socket and a bot connection each, outside max_sessions."""
    async def main():
        bot = await Bot(echo=True).start()
        config = relay_config({"echo.demo": [bot.url]})
        config = dataclasses.replace(config, agents=(dataclasses.replace(config.agents[0], max_sessions=5),))
        relay = await start_relay(config, pump)

        async def one():
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(LF_HEAD)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            return head, writer
        results = await asyncio.gather(*(one() for _ in range(40)))
        statuses = sorted(status_of(head) for head, _ in results)
        assert statuses == [101] * 5 + [429] * 35
        assert len(bot.requests) == 5                  # the refused ones never reached the bot
        assert sum(relay.active.values()) == 5
        for _, writer in results:
            writer.close()
        deadline = asyncio.get_running_loop().time() + 5
        while relay.sessions and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert not relay.sessions and not relay.active
        bot.close()
    arun(main())


def test_early_frames_do_not_count_as_head(pump):
    """20 KiB of frames written with the head: 101, and every frame reaches the bot in order."""
    async def main():
        bot = await Bot().start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        frames = b""
        payloads = [bytes([i]) * 1000 for i in range(20)]
        mask = b"\x01\x02\x03\x04"
        for p in payloads:
            masked = bytes(b ^ mask[i % 4] for i, b in enumerate(p))
            frames += bytes([0x82, 0x80 | 126]) + len(p).to_bytes(2, "big") + mask + masked
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(upgrade_head("/ws/generic/echo.demo") + frames)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        rec = await bot.session()
        await rec.wait_for(lambda: len(rec.frames) >= 20, 5)
        assert [f.payload for f in rec.frames] == payloads
        writer.close()
        bot.close()
    arun(main())


def test_client_end_to_end_headers_reach_the_bot(pump):
    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        extra = ("Origin: https://app.example\r\nUser-Agent: Mozilla/5.0 test\r\nCookie: a=1\r\n"
                 "Cookie: b=2\r\nX-Custom: yes\r\nConnection: X-Hop\r\nX-Hop: secret\r\n"
                 "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\n"
                 "X-Session-Id: forged\r\nX-Daily-Session-Id: forged\r\nX-Service-Host: other.org\r\n"
                 "Sec-WebSocket-Extensions: permessage-deflate\r\nKeep-Alive: 5\r\n")
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(upgrade_head("/ws/generic/echo.demo", extra=extra))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        h = bot.requests[0].headers
        assert h["Origin"] == "https://app.example"
        assert h["User-Agent"] == "Mozilla/5.0 test"
        assert h.getall("Cookie") == ["a=1", "b=2"]
        assert h["X-Custom"] == "yes"
        for absent in ("X-Hop", "Forwarded", "Sec-WebSocket-Extensions", "Keep-Alive"):
            assert absent not in h, absent
        assert h.getall("X-Forwarded-For") == ["127.0.0.1"]
        assert h["X-Forwarded-Host"] == "relay.test"
        assert h.getall("X-Session-Id") == h.getall("X-Daily-Session-Id")
        assert uuid.UUID(h["X-Session-Id"]).version == 4
        assert h.getall("X-Service-Host") == ["echo.demo"]
        assert h["Connection"] == "Upgrade"            # the relay's own handshake, not the client's
        writer.close()
        bot.close()
    arun(main())


@pytest.mark.parametrize("name,head,status", [
    ("HTTP/1.0", upgrade_head("/ws/generic/echo.demo").replace(b"HTTP/1.1", b"HTTP/1.0"), 400),
    ("body on GET", upgrade_head("/ws/generic/echo.demo", extra="Content-Length: 4\r\n") + b"abcd", 400),
    ("chunked GET", upgrade_head("/ws/generic/echo.demo", extra="Transfer-Encoding: chunked\r\n"), 400),
    ("folded header", upgrade_head("/ws/generic/echo.demo", extra="X-A: a\r\n b\r\n"), 400),
    ("control byte", upgrade_head("/ws/generic/echo.demo", extra="X-A: a\x01b\r\n"), 400),
    ("101 headers", upgrade_head("/ws/generic/echo.demo", extra="".join(f"X-{i}: v\r\n" for i in range(96))), 431),
    ("head over limit, frames after", upgrade_head("/ws/generic/echo.demo", extra="X-Big: " + "a" * 8300 + "\r\n"), 431),
])
def test_heads_picows_would_refuse_are_refused_before_the_bot_and_counted(pump, name, head, status):
    async def main():
        bot, relay = await _relay_with_bot(pump)
        response = await raw_request(relay.port, head)
        assert status_of(response) == status, response[:200]
        assert bot.requests == []
        assert relay.rejections[status] == 1
        assert not relay.sessions
        bot.close()
    arun(main())
