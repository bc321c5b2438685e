"""One harness per parser of hostile input: bytes in, the parser's own contract checked.

Each ``check_<name>(data)`` feeds ``data`` to one parser and returns when the parser kept
its contract: a result, or one of the refusals it is documented to raise (a 4xx
``RequestRefused``, a ``SessionRefused`` close, a ``ConfigError``). Any other exception
escapes, and so does an ``AssertionError`` for a broken contract; the fuzzer
(``tests/fuzz/run.py``, ``make fuzz``) reports either as a crash, and libFuzzer's
``-timeout`` reports an input that takes too long. ``tests/test_fuzz_corpus.py`` runs every
file of ``tests/fuzz/corpus/`` (seeds, and each crash found, kept as a regression) through
the same harnesses without atheris.

Harnesses only import what they check: the fuzzer instruments those imports for coverage.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

from wsrelay.admission.auth import Authenticator
from wsrelay.admission.registry import StaticRegistry
from wsrelay.admission.start_api import StartRequest, handle_start
from wsrelay.config import parse_config
from wsrelay.core.frames import FrameScanner
from wsrelay.core.routing import route_provider, route_start_api, route_websocket
from wsrelay.telephony.providers import PROVIDERS, FirstMessages
from wsrelay.core.tokens import mint_token, verify_token
from wsrelay.core.upgrade import parse_upgrade
from wsrelay.edge.http import RequestReader
from wsrelay.errors import ConfigError, RequestRefused, SessionRefused
from wsrelay.pump import pure

MAX_HEAD = 8192
MAX_BODY = 8192


def _refusal(exc: RequestRefused) -> None:
    assert 400 <= exc.status < 500 or exc.status == 505, f"a refusal must be a 4xx, not {exc.status}"
    assert exc.public_reason, "a refusal says why"


def _cut(data: bytes) -> tuple[int, bytes]:
    """The input's first byte says where to cut the rest into two reads."""
    if not data:
        return 0, b""
    rest = data[1:]
    return (data[0] * len(rest)) // 256, rest


def check_request(data: bytes) -> None:
    """The gate's request reader, then the upgrade verdict on what it accepted."""
    cut, data = _cut(data)
    reader = RequestReader(MAX_HEAD, MAX_BODY)
    try:
        done = reader.feed(data[:cut]) or reader.feed(data[cut:])
    except RequestRefused as exc:
        _refusal(exc)
        return
    if not done:
        return
    request = reader.request
    assert request is not None
    try:
        upgrade = parse_upgrade(request.method, request.raw_headers, http_version=request.http_version)
    except RequestRefused as exc:
        _refusal(exc)
        return
    assert upgrade.key and "\r" not in upgrade.key and "\n" not in upgrade.key


def check_routing(data: bytes) -> None:
    """The endpoint table: a route or a 400/404, for the generic, provider and start paths."""
    target = data.decode("latin-1")
    for route in (lambda: route_websocket(target),
                  lambda: route_provider(target, "telnyx", service_host_in_query=True),
                  lambda: route_provider(target, "twilio", service_host_in_query=False)):
        try:
            route()
        except RequestRefused as exc:
            _refusal(exc)
    route_start_api(target)


KEYS = {"k1": "a signing key for the fuzzer"}
NOW = 1_800_000_000.0
SEED = mint_token("agent.org", keys=KEYS, active_key="k1", ttl=300, now=NOW)    # tests/fuzz/corpus/tokens/


def check_tokens(data: bytes) -> None:
    """Token verification: claims only for a token this key signed, else a 401/403."""
    token = data.decode("utf-8", "surrogateescape")
    try:
        claims = verify_token(token, service_host="agent.org", keys=KEYS, now=NOW, leeway=30)
    except RequestRefused as exc:
        _refusal(exc)
        return
    payload, _, signature = token.partition(".")
    mac = hmac.new(KEYS["k1"].encode(), payload.encode("ascii"), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)) == mac, "a forged token was accepted"
    assert claims.service_host == "agent.org" and claims.exp > NOW - 30


def check_telephony(data: bytes) -> None:
    """A provider's held first frames, read as the gate reads them (the held bytes growing, read
    until a verdict): a start, the client's close, not yet, or a refusal."""
    cut, data = _cut(data)
    for provider in PROVIDERS:
        messages = FirstMessages(provider, max_bytes=4096, max_frames=8)
        try:
            if messages.scan(data[:cut]) is None:
                messages.scan(data)
        except SessionRefused as exc:
            assert 1000 <= exc.code <= 4999 and exc.public_reason


class _Picows:
    """What the client stream hands bytes to: picows' buffer protocol, recording what it got."""

    def __init__(self) -> None:
        self.buffer = bytearray(4096)
        self.got = bytearray()

    def get_buffer(self, size_hint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.got += self.buffer[:nbytes]


def _stream_through(module, chunks: list[bytes]) -> bytes:
    picows = _Picows()
    stream = module.ClientStream(picows)
    for chunk in chunks:
        stream.data_received(chunk)
    return bytes(picows.got)


def check_frames(data: bytes) -> None:
    """The client stream in front of picows (both pumps) and the held-frame scanner.

    Both client streams must hand picows the same bytes: a prefix of the input that ends
    with the client's first close frame, or all of it.
    """
    cut, data = _cut(data)
    chunks = [data[:cut], data[cut:]]
    python = _stream_through(pure, chunks)
    assert data.startswith(python)
    try:
        from wsrelay.pump import _compiled
    except ImportError:
        pass
    else:
        assert _stream_through(_compiled, chunks) == python, "the two pumps' client streams disagree"
    scanner = FrameScanner(max_payload=4096)
    try:
        while scanner.next(data, want_payload=True) is not None:
            pass
    except SessionRefused as exc:
        assert exc.code in (1002, 1008)


CONFIG = parse_config('[auth]\nsecret = "s"\n[[agents]]\nname = "bot"\norganization = "org"\n'
                      'upstreams = ["ws://h/ws"]\nwebsocket_auth = "token"\npublic_keys = ["pk_live_1"]\n')
REGISTRY = StaticRegistry(CONFIG.agents)


def check_start_api(data: bytes) -> None:
    """The start API's body: an answer with a token, or a 4xx."""
    request = StartRequest(method="POST", agent_name="bot", authorization="Bearer pk_live_1", host="relay.test",
                           body=data)
    try:
        answer = handle_start(request, registry=REGISTRY, config=CONFIG, authenticator=Authenticator(CONFIG.auth),
                              secure=False)
    except RequestRefused as exc:
        _refusal(exc)
        return
    assert answer["token"] and answer["wsUrl"].startswith("ws")


def check_config(data: bytes) -> None:
    """A config file: a Config, or ConfigErrors naming a key or a line."""
    text = data.decode("utf-8", "replace")
    try:
        parse_config(text)
    except ConfigError as exc:
        assert str(exc)


HARNESSES: dict[str, Callable[[bytes], None]] = {
    "request": check_request, "routing": check_routing, "tokens": check_tokens, "telephony": check_telephony,
    "frames": check_frames, "start_api": check_start_api, "config": check_config,
}
