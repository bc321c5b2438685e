"""Token auth and the start API over real sockets (docs/tokens.md)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
import uuid

import pytest
import websockets
from picows import WSMsgType

from wsrelay.config import AuthConfig
from wsrelay.core.tokens import mint_token

from support import Bot, arun, connect_client, raw_request, relay_config, start_relay, status_of, upgrade_head

KEYS = {"k1": "old-secret-0123456789", "k2": "new-secret-9876543210"}
PUBLIC_KEY = "pk_test_123"


def _config(bot_url: str, *, auth: str = "token", keys=None, active="k2", **relay):
    config = relay_config({"echo.demo": [bot_url], "open.demo": [bot_url]}, **relay)
    agents = (dataclasses.replace(config.agents[0], websocket_auth=auth, public_keys=(PUBLIC_KEY,)),
              dataclasses.replace(config.agents[1], public_keys=(PUBLIC_KEY,)))
    return dataclasses.replace(config, agents=agents,
                               auth=AuthConfig(keys=dict(keys or KEYS), active_key=active, token_ttl=300,
                                               clock_skew=30))


def _token(service_host="echo.demo", *, kid="k2", ttl=300, now=None, session_id=None):
    return mint_token(service_host, keys=KEYS, active_key=kid, ttl=ttl, now=now or time.time(),
                      session_id=session_id)


async def _setup(pump, **kw):
    bot = await Bot(echo=True).start()
    relay = await start_relay(_config(bot.url, **kw), pump)
    return bot, relay


async def _echo_ok(url, **kwargs) -> None:
    async with websockets.connect(url, **kwargs) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"


@pytest.mark.parametrize("where", ["header", "query", "path", "path_with_serviceHost"])
def test_valid_token_is_accepted_from_each_place_and_never_reaches_the_bot(pump, where):
    async def main():
        bot, relay = await _setup(pump)
        token = _token()
        base = f"ws://127.0.0.1:{relay.port}/ws/generic"
        kwargs = {}
        if where == "header":
            url, kwargs = f"{base}/echo.demo?x=1", {"additional_headers": {"Authorization": f"Bearer {token}"}}
        elif where == "query":
            url = f"{base}/echo.demo?x=1&token={token}"
        elif where == "path":
            url = f"{base}/echo.demo/{token}?x=1"
        else:
            url = f"{base}/{token}?serviceHost=echo.demo&x=1"
        await _echo_ok(url, **kwargs)
        request = bot.requests[0]
        assert token not in request.path.decode()
        assert request.path.decode().endswith("?x=1")
        assert all(token not in v for v in request.headers.values())
        bot.close()
    arun(main())


REFUSED = [
    ("missing", lambda: None, 401),
    ("garbage", lambda: "garbage", 403),
    ("tampered signature", lambda: _token()[:-2] + ("AA" if not _token().endswith("AA") else "BB"), 403),
    ("other agent", lambda: _token("open.demo"), 403),
    ("unknown kid", lambda: mint_token("echo.demo", keys={"k9": "x" * 20}, active_key="k9", ttl=300,
                                       now=time.time()), 403),
    ("expired beyond leeway", lambda: _token(ttl=1, now=time.time() - 40), 403),
    ("oversized", lambda: "a" * 3000 + "." + "b" * 100, 403),
    # Unsigned, deeply nested JSON (RecursionError inside json.loads) must still be a 403.
    ("nested json", lambda: base64.urlsafe_b64encode(b"[" * 1400).rstrip(b"=").decode() + ".AAAA", 403),
    ("non-canonical signature", lambda: _noncanonical(_token()), 403),
]


def _noncanonical(token: str) -> str:
    """The same signature bytes spelled with other unused low bits in the last character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    return token[:-1] + alphabet[last ^ 1]


@pytest.mark.parametrize("name,make,status", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_tokens_are_refused_before_upgrade_without_contacting_a_bot(pump, name, make, status):
    async def main():
        bot, relay = await _setup(pump)
        token = make()
        extra = f"Authorization: Bearer {token}\r\n" if token else ""
        response = await raw_request(relay.port, upgrade_head("/ws/generic/echo.demo", extra=extra))
        assert status_of(response) == status
        assert bot.requests == []
        assert token is None or token.encode() not in response      # nothing about it echoed back
        bot.close()
    arun(main())


def test_expiry_leeway_boundary(pump):
    async def main():
        bot, relay = await _setup(pump)
        url = f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo?token="
        await _echo_ok(url + _token(ttl=1, now=time.time() - 20))        # expired 19 s ago: inside 30 s
        response = await raw_request(relay.port, upgrade_head(
            "/ws/generic/echo.demo?token=" + _token(ttl=1, now=time.time() - 35)))
        assert status_of(response) == 403                                # 34 s ago: outside
        bot.close()
    arun(main())


def test_a_token_is_single_use(pump):
    async def main():
        bot, relay = await _setup(pump)
        token = _token()
        await _echo_ok(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo?token={token}")
        response = await raw_request(relay.port, upgrade_head(f"/ws/generic/echo.demo?token={token}"))
        assert status_of(response) == 403
        assert len(bot.requests) == 1
        bot.close()
    arun(main())


def test_rotated_keys_old_tokens_verify_until_their_key_is_removed(pump):
    async def main():
        bot, relay = await _setup(pump)
        old = _token(kid="k1")
        await _echo_ok(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo?token={old}")
        relay.reload(dataclasses.replace(relay.config, auth=AuthConfig(keys={"k2": KEYS["k2"]},
                                                                       active_key="k2")))
        response = await raw_request(relay.port, upgrade_head(f"/ws/generic/echo.demo?token={_token(kid='k1')}"))
        assert status_of(response) == 403
        await _echo_ok(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo?token={_token(kid='k2')}")
        bot.close()
    arun(main())


def test_agent_without_auth_needs_no_token(pump):
    async def main():
        bot, relay = await _setup(pump)
        await _echo_ok(f"ws://127.0.0.1:{relay.port}/ws/generic/open.demo")
        bot.close()
    arun(main())


async def _post(port: int, path: str, body: bytes | None, *, key: str | None = PUBLIC_KEY,
                method: str = "POST", host: str = "relay.test") -> tuple[int, bytes]:
    headers = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
    if key is not None:
        headers += f"Authorization: Bearer {key}\r\n"
    if body is not None:
        headers += f"Content-Length: {len(body)}\r\n"
    response = await raw_request(port, headers.encode() + b"\r\n" + (body or b""))
    return status_of(response), response.split(b"\r\n\r\n", 1)[1]


def test_start_api_returns_a_token_whose_session_id_reaches_the_bot(pump):
    async def main():
        bot, relay = await _setup(pump, public_url="wss://relay.example.com")
        body = json.dumps({"transport": "websocket", "body": {"caller": "+15550100"}}).encode()
        status, raw = await _post(relay.port, "/v1/public/echo/start", body)
        assert status == 200, raw
        answer = json.loads(raw)
        assert answer["wsUrl"] == "wss://relay.example.com/ws/generic/echo.demo"
        assert uuid.UUID(answer["sessionId"])
        assert json.loads(base64.b64decode(answer["body"])) == {"caller": "+15550100"}
        # The client connects as the platform's clients do: token and body appended.
        url = (f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo?token={answer['token']}"
               f"&body={answer['body']}")
        await _echo_ok(url)
        request = bot.requests[0]
        assert request.headers["X-Session-Id"] == answer["sessionId"]
        assert request.path.decode().endswith(f"?body={answer['body']}")
        bot.close()
    arun(main())


def test_start_api_wsurl_from_host_header_without_public_url(pump):
    async def main():
        bot, relay = await _setup(pump)
        status, raw = await _post(relay.port, "/v1/public/echo/start", b'{"transport": "websocket"}',
                                  host="voice.example.org:8443")
        assert status == 200
        assert json.loads(raw)["wsUrl"] == "ws://voice.example.org:8443/ws/generic/echo.demo"
        bot.close()
    arun(main())


START_REFUSED = [
    ("no key", dict(key=None), 401),
    ("wrong key", dict(key="pk_wrong"), 403),
    ("unknown agent", dict(path="/v1/public/nobody/start"), 404),
    ("GET", dict(method="GET", body=None), 405),
    ("malformed JSON", dict(body=b"{not json"), 400),
    ("JSON list", dict(body=b"[1, 2]"), 400),
    ("body on a none agent", dict(path="/v1/public/open/start",
                                  body=b'{"transport": "websocket", "body": {"a": 1}}'), 400),
    ("body over 4 KiB", dict(body=json.dumps({"transport": "websocket", "body": {"a": "x" * 4100}}).encode()), 413),
    ("request over 8 KiB", dict(body=b"{" + b" " * 9000 + b"}"), 413),
    ("other transport", dict(body=b'{"transport": "webrtc"}'), 400),
]


@pytest.mark.parametrize("name,kw,status", START_REFUSED, ids=[r[0] for r in START_REFUSED])
def test_start_api_refusals(pump, name, kw, status):
    kw = dict(kw)

    async def main():
        bot, relay = await _setup(pump)
        path = kw.pop("path", "/v1/public/echo/start")
        body = kw.pop("body", b'{"transport": "websocket"}')
        got, raw = await _post(relay.port, path, body, **kw)
        assert got == status, raw
        refusal = json.loads(raw)              # as the platform's API writes its errors
        assert set(refusal) == {"error", "code"} and refusal["code"] == str(status) and refusal["error"]
        assert bot.requests == []
        bot.close()
    arun(main())
