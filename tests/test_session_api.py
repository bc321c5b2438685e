"""The Session API (docs/session-api.md): HTTP to the bot instance of a live session.

Everything is real: the bots are aiohttp servers in processes of their own
(tests/session_api_support.py), each serving its WebSocket at ``/ws`` and HTTP routes beside
it and naming itself in every answer; the relay is the package's, on both pumps; callers
write their requests byte for byte. Two instances of one agent, sessions spread over both,
so an answer proves which instance the request reached. The fleet's side (two relays and a
real redis-server) is in tests/test_session_api_fleet.py. Also here, the platform's limits
(docs/endpoints.md, docs/tokens.md): ``?body=`` over 4 KiB is 413 before any bot is
contacted, and a start request with a ``body`` for an agent without token auth is 400.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from dataclasses import replace

import pytest

from session_api_support import SessionBot
from support import arun, connect_client, free_port, raw_request, status_of, upgrade_head
from wsrelay.admission.session_api import BotInstance, answer_headers, bot_request, forward_headers
from wsrelay.config import AgentConfig, Config, ConfigError, RelayConfig, require_shared_nonces
from wsrelay.core.routing import SessionApiTarget, body_size, route_session_api
from wsrelay.edge.relay import Relay

KEY = "pk_session_api"


@pytest.fixture(scope="module")
def bots():
    port = free_port()
    started = [SessionBot("bot-a", "127.0.0.1", port), SessionBot("bot-b", "127.0.0.2", port)]
    yield started
    for bot in started:
        bot.kill()


def _config(bots, **relay) -> Config:
    agents = (
        AgentConfig("bot", "org", tuple(b.url for b in bots), public_keys=(KEY,), session_api=True),
        AgentConfig("other", "org", tuple(b.url for b in bots), public_keys=("pk_other",), session_api=True),
        AgentConfig("closed", "org", tuple(b.url for b in bots), public_keys=(KEY,)),
    )
    settings = dict(host="127.0.0.1", port=0, admin_port=0, cors_origins=("https://app.example",))
    settings.update(relay)
    return Config(relay=RelayConfig(**settings), agents=agents)


async def _relay(bots, pump: str, **relay) -> Relay:
    server = Relay(_config(bots, **relay), pump=pump)
    await server.start()
    return server


async def _session(relay: Relay, agent: str = "bot.org"):
    """A live session: (client transport, recorder, the instance's name, the session id)."""
    transport, rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/{agent}")
    await rec.wait_frames(1)
    greeting = json.loads(rec.frames[0].payload)
    return transport, rec, greeting["instance"], greeting["session"]


async def _end(transport, rec) -> None:
    transport.send_close(1000)
    await asyncio.wait_for(rec.disconnected.wait(), 5)


def _request(method: str, path: str, headers: list[tuple[str, str]] | None = None, body: bytes = b"",
             *, key: str | None = KEY) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: relay.test"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{k}: {v}" for k, v in headers or []]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _call(port: int, data: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request, read to the end: (status, headers as sent, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        raw = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(":") for line in lines)]
    return int(status_line.split()[1]), headers, body


def _header(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


def _error(status: int, body: bytes) -> str:
    """The platform's refusal: JSON with the sentence and the status as ``code``."""
    answer = json.loads(body)
    assert answer["code"] == str(status), answer
    return answer["error"]


# -- reaching the right instance ------------------------------------------------------------

def test_each_session_reaches_its_own_instance_with_path_query_and_body(bots, pump):
    async def main():
        relay = await _relay(bots, pump)
        try:
            sessions = [await _session(relay) for _ in range(4)]
            assert {s[2] for s in sessions} == {"bot-a", "bot-b"}       # spread over both instances
            for _, _, instance, session_id in sessions:
                status, headers, body = await _call(relay.port, _request(
                    "POST", f"/v1/public/bot/sessions/{session_id}/state/deep/er?x=1&y=a%2Bb+c",
                    [("Content-Type", "application/json")], b'{"say": "hello"}'))
                assert status == 200, body
                answer = json.loads(body)
                assert answer["instance"] == instance and _header(headers, "X-Instance") == [instance]
                assert (answer["method"], answer["path"], answer["query"], answer["body"]) == \
                    ("POST", "/state/deep/er", "x=1&y=a%2Bb+c", '{"say": "hello"}')
                got = dict(answer["headers"])
                assert got["X-Session-Id"] == got["X-Daily-Session-Id"] == session_id
            for transport, rec, *_ in sessions:
                await _end(transport, rec)
        finally:
            await relay.stop()
    arun(main())


def test_headers_to_the_bot_are_the_callers_less_host_length_authorization_and_hop_by_hop(bots, pump):
    async def main():
        relay = await _relay(bots, pump)
        try:
            transport, rec, instance, session_id = await _session(relay)
            bot = next(b for b in bots if b.name == instance)
            status, _, body = await _call(relay.port, _request(
                "PUT", f"/v1/public/bot/sessions/{session_id}/state", [
                    ("X-Custom", "one"), ("x-lower-case", "two"), ("Cookie", "c=1"), ("Connection", "X-Private"),
                    ("X-Private", "hop"), ("Keep-Alive", "timeout=5"), ("TE", "trailers"),
                    ("X-Session-Id", "forged"), ("X-Daily-Session-Id", "forged"), ("Transfer-Encoding", "chunked")],
                b"5\r\nhello\r\n0\r\n\r\n"))
            assert status == 200, body
            answer = json.loads(body)
            sent = [(k, v) for k, v in answer["headers"]]
            names = [k.lower() for k, _ in sent]
            assert ("X-Custom", "one") in sent and ("x-lower-case", "two") in sent and ("Cookie", "c=1") in sent
            for gone in ("authorization", "x-private", "keep-alive", "te", "transfer-encoding"):
                assert gone not in names, sent
            assert dict(sent)["Host"] == f"{bot.host}:{bot.port}"           # the instance's, not relay.test
            assert dict(sent)["Content-Length"] == "5" and answer["body"] == "hello"   # chunked in, length out
            assert [v for k, v in sent if k.lower() == "x-session-id"] == [session_id]
            assert not {"user-agent", "accept", "accept-encoding"} & set(names)   # nothing the caller did not send
            await _end(transport, rec)
        finally:
            await relay.stop()
    arun(main())


def test_the_bots_answer_comes_back_less_hop_by_hop_headers_and_byte_for_byte(bots, pump):
    async def main():
        relay = await _relay(bots, pump)
        try:
            transport, rec, _, session_id = await _session(relay)
            base = f"/v1/public/bot/sessions/{session_id}"
            status, headers, body = await _call(relay.port, _request("GET", f"{base}/headers"))
            assert (status, body) == (200, b"cookies")
            assert _header(headers, "Set-Cookie") == ["a=1", "b=2"]
            assert not _header(headers, "X-Hop") and not _header(headers, "Keep-Alive")
            assert _header(headers, "Access-Control-Allow-Origin") == ["https://bot.example"]   # no Origin: the bot's
            assert _header(headers, "Connection") == ["close"] and _header(headers, "Content-Length") == ["7"]
            status, headers, body = await _call(relay.port, _request("GET", f"{base}/gzip"))
            assert status == 200 and _header(headers, "Content-Encoding") == ["gzip"]
            assert gzip.decompress(body) == b"squeezed"
            status, headers, body = await _call(relay.port, _request("HEAD", f"{base}/state"))
            assert status == 200 and body == b"" and int(_header(headers, "Content-Length")[0]) > 0
            status, _, body = await _call(relay.port, _request("DELETE", f"{base}/state", body=b"gone"))
            assert status == 200 and json.loads(body)["method"] == "DELETE" and json.loads(body)["body"] == "gone"
            status, _, body = await _call(relay.port, _request("GET", f"{base}/no-such-route"))
            assert status == 404 and b"error" not in body             # the bot's own 404, passed on
            status, _, body = await _call(relay.port, _request("OPTIONS", f"{base}/state"))
            assert status == 200 and json.loads(body)["method"] == "OPTIONS"   # not a preflight: the bot's
            await _end(transport, rec)
        finally:
            await relay.stop()
    arun(main())


# -- refusals ---------------------------------------------------------------------------------

def test_refusals_are_json_with_the_status(bots, pump):
    async def main():
        relay = await _relay(bots, pump, max_session_api_body=2048)
        try:
            transport, rec, _, session_id = await _session(relay)
            base = f"/v1/public/bot/sessions/{session_id}"
            cases = [
                (_request("GET", f"{base}/state", key=None), 401, "Authorization: Bearer"),
                (_request("GET", f"{base}/state", key="pk_other"), 403, "not one of the agent's public keys"),
                (_request("GET", f"/v1/public/nobody/sessions/{session_id}/state"), 404, "no such agent"),
                (_request("GET", f"/v1/public/closed/sessions/{session_id}/state"), 404, "session_api = true"),
                (_request("GET", "/v1/public/bot/sessions/6f1c0a52-0000-4000-8000-000000000000/state"), 404,
                 "no live session"),
                (_request("GET", f"/v1/public/other/sessions/{session_id}/state", key="pk_other"), 404,
                 "no live session"),                            # another agent's session
                (_request("GET", "/v1/public/bot/sessions/not%20an%20id/state"), 404, "no live session"),
                (_request("PROPFIND", f"{base}/state"), 405, "use one of GET"),
                (_request("POST", f"{base}/state", body=b"x" * 2049), 413, "over 2048 bytes"),
                (_request("POST", f"{base}/state", [("Transfer-Encoding", "chunked")],
                          b"800\r\n" + b"x" * 2048 + b"\r\n1\r\nx\r\n0\r\n\r\n"), 413, "over 2048 bytes"),
                (_request("GET", f"{base}/big?n=2049"), 502, "over 2048 bytes"),
            ]
            for data, status, words in cases:
                got, headers, body = await _call(relay.port, data)
                assert got == status, (data[:80], got, body)
                assert _header(headers, "Content-Type") == ["application/json"]
                assert words in _error(status, body), body
            status, _, body = await _call(relay.port, _request("GET", f"{base}/big?n=2048"))
            assert status == 200 and body == b"x" * 2048                 # at the bound: passed on
            assert relay.rejections[404] >= 4 and relay.rejections[413] == 2
            await _end(transport, rec)
            await asyncio.sleep(0.1)
            status, _, body = await _call(relay.port, _request("GET", f"{base}/state"))
            assert status == 404 and "no live session" in _error(404, body)     # ended: gone at once
            assert not relay.session_api().book
        finally:
            await relay.stop()
    arun(main())


def test_a_413_does_not_wait_for_the_body(bots):
    """The gate refuses on the head's Content-Length: the caller is answered before sending it."""
    async def main():
        relay = await _relay(bots, "cython", max_session_api_body=1024)
        try:
            head = _request("POST", "/v1/public/bot/sessions/x/state", [("Content-Length", str(1 << 30))])
            assert status_of(await raw_request(relay.port, head, read_timeout=5)) == 413
        finally:
            await relay.stop()
    arun(main())


def test_a_silent_bot_is_504_within_session_api_timeout(bots, pump):
    async def main():
        relay = await _relay(bots, pump, session_api_timeout=0.5)
        try:
            transport, rec, _, session_id = await _session(relay)
            started = asyncio.get_running_loop().time()
            status, _, body = await _call(relay.port, _request("GET", f"/v1/public/bot/sessions/{session_id}/slow"))
            assert status == 504 and "did not answer within 0.5 s" in _error(504, body)
            assert asyncio.get_running_loop().time() - started < 2
            await _end(transport, rec)
        finally:
            await relay.stop()
    arun(main())


def test_an_unreachable_bot_is_502(pump):
    """The session's bot stops listening (its WebSocket lives on): the next request cannot connect."""
    async def main():
        bot = SessionBot("lonely", "127.0.0.1", free_port())
        try:
            relay = Relay(Config(relay=RelayConfig(host="127.0.0.1", port=0, admin_port=0), agents=(
                AgentConfig("bot", "org", (bot.url,), public_keys=(KEY,), session_api=True),)), pump=pump)
            await relay.start()
            try:
                transport, rec, _, session_id = await _session(relay)
                base = f"/v1/public/bot/sessions/{session_id}"
                status, _, _ = await _call(relay.port, _request("POST", f"{base}/stop-listening"))
                assert status == 200
                status, _, body = await _call(relay.port, _request("GET", f"{base}/state"))
                assert status == 502 and "could not be reached" in _error(502, body)
                transport.send(1, b"still here")                      # the session itself goes on
                await rec.wait_frames(2)
                assert rec.frames[1].payload == b"still here"
                await _end(transport, rec)
            finally:
                await relay.stop()
        finally:
            bot.kill()
    arun(main())


# -- CORS -------------------------------------------------------------------------------------

def test_cors_as_for_the_start_api(bots, pump):
    async def main():
        relay = await _relay(bots, pump)
        try:
            transport, rec, _, session_id = await _session(relay)
            base = f"/v1/public/bot/sessions/{session_id}"
            preflight = [("Origin", "https://app.example"), ("Access-Control-Request-Method", "PATCH"),
                         ("Access-Control-Request-Headers", "authorization, content-type")]
            status, headers, _ = await _call(relay.port, _request("OPTIONS", f"{base}/state", preflight, key=None))
            assert status == 204
            assert _header(headers, "Access-Control-Allow-Origin") == ["https://app.example"]
            assert _header(headers, "Access-Control-Allow-Methods") == ["GET, POST, PUT, PATCH, DELETE, HEAD"]
            status, headers, body = await _call(relay.port, _request(
                "OPTIONS", f"{base}/state", [("Origin", "https://evil.example"), *preflight[1:]], key=None))
            assert status == 403 and "origin not allowed" in _error(403, body)
            status, headers, body = await _call(relay.port, _request(
                "GET", f"{base}/headers", [("Origin", "https://app.example")]))
            assert status == 200
            assert _header(headers, "Access-Control-Allow-Origin") == ["https://app.example"]   # the relay's only
            assert _header(headers, "Vary") == ["Origin"]
            status, headers, body = await _call(relay.port, _request(
                "GET", f"{base}/state", [("Origin", "https://app.example")], key="wrong"))
            assert status == 403 and _header(headers, "Access-Control-Allow-Origin") == ["https://app.example"]
            await _end(transport, rec)
        finally:
            await relay.stop()
    arun(main())


# -- the platform's limits (item 3) -------------------------------------------------------------

def test_a_body_over_4_kib_is_413_before_any_bot_is_contacted(bots, pump):
    async def main():
        unreachable = f"ws://127.0.0.1:{free_port()}/ws"        # contacted, it would be a 502
        relay = Relay(Config(relay=RelayConfig(host="127.0.0.1", port=0, admin_port=0), agents=(
            AgentConfig("nowhere", "org", (unreachable,)),
            AgentConfig("bot", "org", tuple(b.url for b in bots)))), pump=pump)
        await relay.start()
        try:
            largest = base64.b64encode(b"x" * 4096).decode()
            assert len(largest) == 5464 and body_size(largest) == 4096
            for body in (base64.b64encode(b"x" * 4097).decode(), "A" * 5463, "A" * 6000):
                response = await raw_request(relay.port, upgrade_head(f"/ws/generic/nowhere.org?body={body}"))
                assert status_of(response) == 413, response[:200]
                assert b"over 4096 bytes" in response
            assert relay.rejections[413] == 3
            # The largest a start API body can become passes, and reaches the bot byte for byte.
            transport, rec = await connect_client(
                f"ws://127.0.0.1:{relay.port}/ws/generic/bot.org?body={largest.replace('+', '%2B')}")
            await rec.wait_frames(1)
            await _end(transport, rec)
        finally:
            await relay.stop()
    arun(main())


def test_a_start_request_with_a_body_for_an_agent_without_token_auth_is_400(bots):
    async def main():
        relay = await _relay(bots, "cython")
        try:
            body = json.dumps({"transport": "websocket", "body": {"caller": "+15550100"}}).encode()
            data = (f"POST /v1/public/bot/start HTTP/1.1\r\nHost: relay.test\r\nAuthorization: Bearer {KEY}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
            response = await raw_request(relay.port, data)
            assert status_of(response) == 400 and b"websocket_auth" in response
            plain = json.dumps({"transport": "websocket"}).encode()
            response = await raw_request(relay.port, data.replace(body, plain).replace(
                f"Content-Length: {len(body)}".encode(), f"Content-Length: {len(plain)}".encode()))
            assert status_of(response) == 200
        finally:
            await relay.stop()
    arun(main())


# -- the parts, sans-I/O ------------------------------------------------------------------------

def test_the_path_names_agent_session_and_the_bots_path():
    assert route_session_api("/v1/public/bot/sessions/abc/state/x") == SessionApiTarget("bot", "abc", "/state/x")
    assert route_session_api("/v1/public/bot/sessions/abc") == SessionApiTarget("bot", "abc", "/")
    assert route_session_api("/v1/public/bot/sessions/abc/") == SessionApiTarget("bot", "abc", "/")
    assert route_session_api("/v1/public/bot/sessions//x") is None
    assert route_session_api("/v1/public/bot/start") is None


def test_the_target_is_the_instances_origin_and_address():
    def url(instance: BotInstance) -> tuple[str, str | None, str]:
        request = bot_request(instance, path="/p", query="q=1", session_id="s", headers=[])
        return request.url, request.server_hostname, dict(request.headers)["Host"]

    assert url(BotInstance("a.b", "ws://bots.svc:8080/ws")) == ("http://bots.svc:8080/p?q=1", None, "bots.svc:8080")
    assert url(BotInstance("a.b", "ws://bots.svc:8080/ws", "10.0.0.7")) == \
        ("http://10.0.0.7:8080/p?q=1", None, "bots.svc:8080")
    assert url(BotInstance("a.b", "wss://bots.example/ws", "fd00::7")) == \
        ("https://[fd00::7]:443/p?q=1", "bots.example", "bots.example")
    assert url(BotInstance("a.b", "ws://10.0.0.5/ws")) == ("http://10.0.0.5:80/p?q=1", None, "10.0.0.5")
    entry = BotInstance("a.b", "ws://h:1/ws", "10.0.0.1")
    assert BotInstance.from_text(entry.to_text()) == entry
    assert BotInstance.from_text("not json") is None and BotInstance.from_text('{"url": 1}') is None


def test_header_filters():
    sent = [(b"Host", b"x"), (b"Connection", b"keep-alive, X-Mine"), (b"X-Mine", b"1"), (b"authorization", b"k"),
            (b"Content-Length", b"3"), (b"Proxy-Connection", b"k"), (b"X-Ok", b"2"), (b"Upgrade", b"h2c")]
    assert forward_headers(sent) == [("X-Ok", "2")]
    answered = [(b"Content-Length", b"3"), (b"Access-Control-Allow-Origin", b"*"), (b"Set-Cookie", b"a"),
                (b"Transfer-Encoding", b"chunked"), (b"Set-Cookie", b"b")]
    assert answer_headers(answered, relay_cors=True) == [("Set-Cookie", "a"), ("Set-Cookie", "b")]
    assert answer_headers(answered, relay_cors=False)[0] == ("Access-Control-Allow-Origin", "*")


def test_session_api_with_workers_needs_a_fleet(bots):
    config = _config(bots)
    config = replace(config, relay=replace(config.relay, workers=2))
    with pytest.raises(ConfigError, match="session_api = true with 2 workers.*set \\[fleet\\] redis_url"):
        require_shared_nonces(config)


def test_a_body_that_does_not_arrive_is_408_within_handshake_timeout(bots):
    async def main():
        relay = await _relay(bots, "cython", handshake_timeout=0.5)
        try:
            head = _request("POST", "/v1/public/bot/sessions/x/state", [("Content-Length", "100")]) + b"only ten.."
            started = asyncio.get_running_loop().time()
            status, _, body = await _call(relay.port, head)
            assert status == 408 and _error(408, body)
            assert asyncio.get_running_loop().time() - started < 2
        finally:
            await relay.stop()
    arun(main())
