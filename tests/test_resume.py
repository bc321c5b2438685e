"""Session resume through real sockets (docs/resume.md): a bot streams numbered messages at
50 a second, the client's connection is cut by a TCP proxy (a reset, or a silent drop the relay
learns of from its keepalive), and the client comes back with wsrelay.client.ResumingClient.
Every message arrives exactly once and in order, the bot's connection is never closed, and
each refusal is an HTTP status before any upgrade. Both pumps."""

from __future__ import annotations

import asyncio

import pytest
from picows import WSMsgType

from resume_support import RESET, SILENT, CuttingProxy, StreamingBot, numbers, resume_relay
from support import arun, connect_client, raw_request, relay_config, start_relay, status_of, upgrade_head
from wsrelay.client import ResumingClient
from wsrelay.telemetry.live_sessions import session_view

KEEPALIVE = {"keepalive_interval": 0.3, "keepalive_timeout": 0.3}


async def _wait(predicate, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.01)


async def _drops(pump: str, how: str, drops: int, away: float) -> None:
    bot = await StreamingBot().start()
    relay = await resume_relay(bot, pump, **KEEPALIVE)
    proxy = await CuttingProxy(relay.port).start()
    got: list[bytes] = []
    client = ResumingClient(f"ws://127.0.0.1:{proxy.port}/ws/generic/echo.demo", lambda op, m: got.append(m),
                            first_delay=away)
    try:
        await client.connect()
        bot_rec = await bot.session()
        for drop in range(drops):
            await _wait(lambda: len(got) >= 15 * (drop + 1))
            proxy.cut(how)
            await _wait(lambda: client.resumes == drop + 1 or client.closed.is_set())
            assert client.error is None, client.error
        await _wait(lambda: len(got) >= 15 * (drops + 1))
        # the bot kept one connection, was never closed, and saw nothing of the drops
        assert len(bot.sessions) == 1 and not bot_rec.disconnected.is_set() and not bot_rec.close_frames()
        await client.close()
        await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
        assert [f.payload[:2] for f in bot_rec.close_frames()] == [b"\x03\xe8"]     # only the client's 1000
        assert numbers(got) == list(range(1, len(got) + 1)), numbers(got)          # once each, in order
        line = relay.metrics.resumes
        assert line == {("echo", "demo"): drops}
    finally:
        bot.stop()
        proxy.close()
        await relay.stop()
        bot.close()


@pytest.mark.parametrize("how", [RESET, SILENT])
@pytest.mark.parametrize("drops", [2, 3])
def test_every_message_arrives_once_and_in_order_across_drops(pump, how, drops):
    arun(_drops(pump, how, drops, away=0.5))


def test_a_client_back_after_resume_seconds_finds_the_session_ended(pump):
    async def main() -> None:
        bot = await StreamingBot().start()
        relay = await resume_relay(bot, pump, resume_seconds=1.0)
        proxy = await CuttingProxy(relay.port).start()
        got: list[bytes] = []
        client = ResumingClient(f"ws://127.0.0.1:{proxy.port}/ws/generic/echo.demo", lambda op, m: got.append(m),
                                first_delay=2.0)                      # resume_seconds + 1
        try:
            await client.connect()
            bot_rec = await bot.session()
            await _wait(lambda: len(got) >= 5)
            proxy.cut(RESET)
            await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
            assert bot_rec.close_frames()[0].payload == b"\x03\xe9client lost"        # 1001, as a lost client
            await asyncio.wait_for(client.closed.wait(), 10)
            assert client.error is not None and client.error.status == 404
            assert relay.metrics.ended_detached == {("echo", "demo"): 1}
            assert relay.metrics.resume_failures == {"session gone": 1}
        finally:
            bot.stop()
            proxy.close()
            await relay.stop()
            bot.close()

    arun(main())


async def _detached_session(pump: str, first: int = 5, **relay_options):
    """A relay, a streaming bot and a session whose client was reset after ``first`` messages:
    (bot, relay, bot recorder, the client's resume token, messages it got)."""
    bot = await StreamingBot().start()
    relay = await resume_relay(bot, pump, **relay_options)
    proxy = await CuttingProxy(relay.port).start()
    client, rec = await connect_client(f"ws://127.0.0.1:{proxy.port}/ws/generic/echo.demo")
    token = client.response.headers["X-Wsrelay-Resume"]
    bot_rec = await bot.session()
    await rec.wait_for(lambda: len(rec.frames) >= first)
    proxy.cut(RESET)
    await _wait(lambda: all(s.machine.detached for s in relay.sessions))
    proxy.close()
    return bot, relay, bot_rec, token, len(rec.frames)


def _resume_head(token: str, received: int | None = None) -> bytes:
    query = f"resume={token}" + (f"&received={received}" if received is not None else "")
    return upgrade_head(f"/ws/generic/echo.demo?{query}")


def test_a_token_is_single_use_and_each_101_carries_a_new_one(pump):
    async def main() -> None:
        bot, relay, bot_rec, token, got = await _detached_session(pump)
        try:
            url = f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo"
            client, rec = await connect_client(f"{url}?resume={token}&received={got}")
            fresh = client.response.headers["X-Wsrelay-Resume"]
            assert fresh and fresh != token
            await rec.wait_for(lambda: len(rec.frames) >= 3)
            assert numbers([f.payload for f in rec.frames])[0] == got + 1
            for used in (token, token):
                assert status_of(await raw_request(relay.port, _resume_head(used, got))) == 403
            # the header works as the query does, and a garbled token is 403 too
            head = upgrade_head("/ws/generic/echo.demo", extra="X-Wsrelay-Resume: abc.def\r\n")
            assert status_of(await raw_request(relay.port, head)) == 403
            assert not bot_rec.close_frames()
            assert relay.metrics.resume_failures == {"token": 3}
            client.send_close(1000, b"")
            await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
        finally:
            bot.stop()
            await relay.stop()
            bot.close()

    arun(main())


def test_received_beyond_what_was_sent_or_older_than_the_buffer_is_409(pump):
    async def main() -> None:
        # 2048 bytes hold 29 of these messages (6 bytes and 64 a frame): the first 40 went
        # while the client was attached, so message 1 is gone
        bot, relay, bot_rec, token, got = await _detached_session(pump, first=40, buffer=2048)
        try:
            answer = await raw_request(relay.port, _resume_head(token, 10_000))
            assert status_of(answer) == 409 and b"more than the" in answer
            answer = await raw_request(relay.port, _resume_head(token, 0))
            assert status_of(answer) == 409 and b"older than the resume buffer" in answer
            # the token was not used up by a 409: it still resumes
            client, rec = await connect_client(
                f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo?resume={token}&received={got}")
            await rec.wait_for(lambda: len(rec.frames) >= 3)
            assert numbers([f.payload for f in rec.frames])[0] == got + 1
            client.send_close(1000, b"")
            await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
        finally:
            bot.stop()
            await relay.stop()
            bot.close()

    arun(main())


def test_a_bot_that_sends_more_than_the_buffer_while_detached_gets_1011(pump):
    async def main() -> None:
        bot, relay, bot_rec, token, got = await _detached_session(pump, buffer=4096)
        try:
            bot.stop()
            for _ in range(8):
                bot_rec.transport.send(WSMsgType.BINARY, b"x" * 1000)
            await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
            assert bot_rec.close_frames()[0].payload == b"\x03\xf3resume buffer full"
            assert status_of(await raw_request(relay.port, _resume_head(token, got))) == 404
            assert relay.metrics.sessions.get(("echo", "demo", "resume buffer full")) == 1
        finally:
            await relay.stop()
            bot.close()

    arun(main())


def test_a_client_that_closes_with_a_close_frame_ends_the_session(pump):
    async def main() -> None:
        bot = await StreamingBot().start()
        relay = await resume_relay(bot, pump)
        try:
            client, rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
            token = client.response.headers["X-Wsrelay-Resume"]
            bot_rec = await bot.session()
            client.send_close(1000, b"bye")
            await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
            assert status_of(await raw_request(relay.port, _resume_head(token))) == 404
        finally:
            bot.stop()
            await relay.stop()
            bot.close()

    arun(main())


def test_sessions_without_resume_have_no_token_and_no_buffer(pump):
    async def main() -> None:
        bot = await StreamingBot().start()
        relay = await resume_relay(bot, pump, resume_seconds=0.0)
        try:
            client, rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
            assert "X-Wsrelay-Resume" not in client.response.headers
            (session,) = relay.sessions
            assert session.resume is None and not hasattr(session.bot, "replay")      # the plain Side
            client.send_close(1000, b"")
            await asyncio.wait_for(rec.disconnected.wait(), 5)
        finally:
            bot.stop()
            await relay.stop()
            bot.close()

    arun(main())


def test_the_log_line_and_metrics_count_resumes_and_time_detached(pump):
    async def main() -> None:
        bot, relay, bot_rec, token, got = await _detached_session(pump)
        try:
            await asyncio.sleep(0.2)
            (session,) = relay.sessions
            view = session_view(session)                     # what /sessions shows of it
            assert view["state"] == "detached" and view["resumes"] == 0 and view["detached_s"] >= 0.2
            client, rec = await connect_client(
                f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo?resume={token}&received={got}")
            await rec.wait_for(lambda: len(rec.frames) >= 2)
            client.send_close(1000, b"")
            await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
            await _wait(lambda: not relay.sessions)
            line = session.summary()
            assert line["resumes"] == 1 and 0.2 <= line["detached_s"] < 5
            assert line["end_reason"] == "closed" and line["dropped"] == 0
            text = await metrics_text_of(relay)
            assert 'wsrelay_session_resumes_total{agent="echo",organization="demo"} 1.0' in text
        finally:
            bot.stop()
            await relay.stop()
            bot.close()

    arun(main())


async def metrics_text_of(relay) -> str:
    body, _ = relay.metrics.render()
    return body.decode()


def test_the_start_apis_resume_token_resumes_the_session_it_names(pump):
    """A browser cannot read the 101's headers: the start API's resumeToken is the session's
    first token (the same nonce as the one in its first 101), and it resumes the session."""
    import json
    from dataclasses import replace

    from wsrelay.config import AuthConfig

    async def main() -> None:
        bot = await StreamingBot().start()
        config = relay_config({"echo.demo": [bot.url]})
        agents = tuple(replace(a, resume_seconds=5.0, websocket_auth="token", public_keys=("pk_test",))
                       for a in config.agents)
        relay = await start_relay(replace(config, agents=agents, auth=AuthConfig(keys={"k": "s" * 32},
                                                                                 active_key="k")), pump)
        proxy = await CuttingProxy(relay.port).start()
        try:
            body = b'{"transport": "websocket"}'
            answer = await raw_request(relay.port, b"POST /v1/public/echo/start HTTP/1.1\r\nHost: relay.test\r\n"
                                       b"Authorization: Bearer pk_test\r\nContent-Type: application/json\r\n"
                                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            started = json.loads(answer.partition(b"\r\n\r\n")[2])
            assert started["resumeToken"] != started["token"]
            got: list[bytes] = []
            client = ResumingClient(f"ws://127.0.0.1:{proxy.port}/ws/generic/echo.demo?token={started['token']}",
                                    lambda op, m: got.append(m), first_delay=0.2)
            await client.connect()
            client.resume_token = started["resumeToken"]         # as a browser has it: not the 101's
            bot_rec = await bot.session()
            assert bot_rec.request.headers["X-Session-Id"] == started["sessionId"]
            await _wait(lambda: len(got) >= 10)
            proxy.cut(RESET)
            await _wait(lambda: client.resumes == 1 or client.closed.is_set())
            assert client.error is None, client.error
            await _wait(lambda: len(got) >= 25)
            assert numbers(got) == list(range(1, len(got) + 1)) and len(bot.sessions) == 1
            await client.close()
        finally:
            bot.stop()
            proxy.close()
            await relay.stop()
            bot.close()

    arun(main())


def test_resume_with_several_workers_is_refused_with_a_sentence():
    """As wsrelay serve and check refuse it (cli.py: require_shared_nonces)."""
    from wsrelay.config import ConfigError, parse_config, require_shared_nonces
    text = ("[relay]\nworkers = 2\n\n[[agents]]\nname = \"a\"\norganization = \"o\"\n"
            "upstreams = [\"ws://127.0.0.1:9/\"]\nresume_seconds = 30\n")
    with pytest.raises(ConfigError, match="resume_seconds with 2 workers.*run one worker") as info:
        require_shared_nonces(parse_config(text))
    assert info.value.key == "relay.workers" and info.value.line == 2
