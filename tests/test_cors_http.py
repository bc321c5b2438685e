"""The start API from a browser page: CORS preflight and response headers, over sockets."""

from __future__ import annotations

import json

import pytest

from support import arun, raw_request, status_of
from test_auth import PUBLIC_KEY, _setup

PAGE = "https://app.example.com"


def _headers(response: bytes) -> dict[str, str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head)}


async def _preflight(port: int, origin: str | None, method: str = "POST",
                     headers: str = "authorization, content-type") -> bytes:
    lines = ["OPTIONS /v1/public/echo/start HTTP/1.1", "Host: relay.test"]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    lines.append(f"Access-Control-Request-Method: {method}")
    if headers:
        lines.append(f"Access-Control-Request-Headers: {headers}")
    return await raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


async def _post(port: int, origin: str | None, key: str = PUBLIC_KEY) -> bytes:
    body = b'{"transport": "websocket"}'
    head = (f"POST /v1/public/echo/start HTTP/1.1\r\nHost: relay.test\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n")
    if origin is not None:
        head += f"Origin: {origin}\r\n"
    return await raw_request(port, head.encode() + b"\r\n" + body)


@pytest.mark.parametrize("configured,allowed", [((PAGE,), PAGE), (("*",), "*")])
def test_preflight_and_post_from_an_allowed_origin(configured, allowed):
    async def main():
        bot, relay = await _setup("cython", cors_origins=configured)
        response = await _preflight(relay.port, PAGE)
        assert status_of(response) == 204, response
        h = _headers(response)
        assert h["access-control-allow-origin"] == allowed
        assert "POST" in h["access-control-allow-methods"]
        assert "authorization" in h["access-control-allow-headers"].lower()
        assert int(h["access-control-max-age"]) > 0
        assert "content-length" not in h                   # a 204 has no body
        answer = await _post(relay.port, PAGE)
        assert status_of(answer) == 200
        assert _headers(answer)["access-control-allow-origin"] == allowed
        assert "token" in json.loads(answer.split(b"\r\n\r\n", 1)[1])
        refused = await _post(relay.port, PAGE, key="pk_wrong")
        assert status_of(refused) == 403                   # and the page may read why
        assert _headers(refused)["access-control-allow-origin"] == allowed
        assert bot.requests == []
        bot.close()
    arun(main())


@pytest.mark.parametrize("configured,origin,method,headers", [
    ((), PAGE, "POST", "authorization"),                       # CORS off
    ((PAGE,), "https://evil.example.com", "POST", "authorization"),
    ((PAGE,), PAGE + ".evil.com", "POST", "authorization"),
    ((PAGE,), "null", "POST", "authorization"),
    ((PAGE,), PAGE, "DELETE", "authorization"),
    ((PAGE,), PAGE, "POST", "x-secret"),
])
def test_preflight_refusals_are_403_and_counted(configured, origin, method, headers):
    async def main():
        bot, relay = await _setup("cython", cors_origins=configured)
        response = await _preflight(relay.port, origin, method, headers)
        assert status_of(response) == 403, response
        h = _headers(response)
        assert h.get("access-control-allow-origin") in (None, "")
        assert relay.rejections[403] == 1
        answer = await _post(relay.port, origin)         # a non-browser caller still works ...
        assert status_of(answer) == 200
        if origin not in configured:                     # ... but no page of it may read it
            assert "access-control-allow-origin" not in _headers(answer)
        bot.close()
    arun(main())
