"""The start API (``POST /v1/public/{agent}/start``), sans-I/O: every answer and every refusal.

The body is untrusted: whatever it holds, ``handle_start`` answers or raises
RequestRefused with a 4xx status (hypothesis), never another exception (a 500).
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsrelay.admission.auth import Authenticator
from wsrelay.config import parse_config
from wsrelay.errors import RequestRefused
from wsrelay.admission.registry import StaticRegistry
from wsrelay.admission.start_api import MAX_BODY_JSON, StartRequest, handle_start
from wsrelay.core.tokens import verify_token

CONFIG = parse_config('''
[relay]
public_url = "https://relay.example.com/"
[auth]
secret = "s3cret"
[[agents]]
name = "bot"
organization = "org"
upstreams = ["ws://h/ws"]
websocket_auth = "token"
public_keys = ["pk_live_1", "pk_live_2"]
[[agents]]
name = "open"
organization = "org"
upstreams = ["ws://h/ws"]
public_keys = ["pk_open"]
''')
STATUSES = {400, 401, 403, 404, 405, 413}


def _start(body: bytes = b"", *, method: str = "POST", agent: str = "bot",
           authorization: str | None = "Bearer pk_live_1", host: str | None = "relay.test", config=CONFIG) -> dict:
    request = StartRequest(method=method, agent_name=agent, authorization=authorization, host=host, body=body)
    return handle_start(request, registry=StaticRegistry(config.agents), config=config,
                        authenticator=Authenticator(config.auth), secure=False)


def _refused(body: bytes = b"", **kwargs) -> RequestRefused:
    with pytest.raises(RequestRefused) as info:
        _start(body, **kwargs)
    return info.value


def test_answer_with_token_and_body():
    answer = _start(json.dumps({"transport": "websocket", "body": {"caller": "+15550100"}}).encode())
    assert answer["wsUrl"] == "wss://relay.example.com/ws/generic/bot.org"
    assert json.loads(base64.b64decode(answer["body"])) == {"caller": "+15550100"}
    claims = verify_token(answer["token"], service_host="bot.org", keys={"default": "s3cret"}, now=time.time(),
                          leeway=0)
    assert claims.session_id == answer["sessionId"]
    assert set(_start(b"", agent="open", authorization="Bearer pk_open")) == {"wsUrl", "sessionId"}


REFUSALS = [
    # (kwargs, body, status, words in the public reason)
    ({"method": "GET"}, b"", 405, "POST"),
    ({"agent": "nobody"}, b"", 404, "unknown agent"),
    ({"authorization": None}, b"", 401, "Bearer"),
    ({"authorization": "Basic pk_live_1"}, b"", 401, "Bearer"),
    ({"authorization": "Bearer "}, b"", 401, "Bearer"),
    ({"authorization": "Bearer pk_open"}, b"", 403, "invalid public key"),
    ({"authorization": "Bearer pk_live_1\udcff"}, b"", 403, "invalid public key"),
    ({}, b"{", 400, "not valid JSON"),
    ({}, b"\xff\xfe\x00", 400, "not valid JSON"),
    ({}, b"[1]", 400, "JSON object"),
    ({}, b'{"transport": "webrtc"}', 400, "websocket"),
    ({}, b'{"body": NaN}', 400, "not valid JSON"),
    ({}, b'{"body": -Infinity}', 400, "not valid JSON"),
    ({}, b'{"body": ' + b"1" * 5000 + b"}", 400, "not valid JSON"),
    ({}, b"[" * 5000 + b"]" * 5000, 413, "Too Large"),
    ({}, b"[" * 4000 + b"]" * 4000, 400, "nested too deeply"),
    ({}, b'{"body": ' + b"[" * 4000 + b"]" * 4000 + b"}", 400, "nested too deeply"),
    ({}, b'{"body": ' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}", 400, "nested too deeply"),
    ({}, b'{"body": ' + b'[' * 64 + b"]" * 64 + b"}", 400, "nested too deeply"),        # 65 levels
    ({}, b'{"body": "' + b"x" * (MAX_BODY_JSON + 1) + b'"}', 413, "body over"),
    ({"agent": "open", "authorization": "Bearer pk_open"}, b'{"body": {}}', 400, "websocket_auth"),
]


@pytest.mark.parametrize("kwargs,body,status,words", REFUSALS, ids=[f"{r[2]}-{i}" for i, r in enumerate(REFUSALS)])
def test_refusals(kwargs, body, status, words):
    refused = _refused(body, **kwargs)
    assert refused.status == status and words in refused.public_reason


def test_nesting_5000_deep_is_400_not_500():
    """5,000 opening brackets fit the 8 KiB request limit; the parser recursed until Python's
    limit and the RecursionError became a 500. Closed, the deepest body that fits is 4,096."""
    for body in (b"[" * 5000, b'{"a":' * 1600, b"[" * 4096 + b"]" * 4096):
        refused = _refused(body)
        assert refused.status == 400 and refused.public_reason == "Bad Request: the JSON body is nested too deeply"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
payloads = st.dictionaries(st.sampled_from(["transport", "body", "extra"]), json_values | st.just("websocket"))
deep = st.builds(lambda n, open_, close_, inside: (open_ * n + inside + close_ * n).encode(),
                 st.integers(100, 6000), st.sampled_from(["[", '{"a":', '{"body":']),
                 st.sampled_from(["]", "}"]), st.sampled_from(["", "1", "NaN", "]"]))
bodies = (st.binary(max_size=300) | payloads.map(lambda p: json.dumps(p).encode()) | deep
          | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
          | st.sampled_from([b"NaN", b"Infinity", b'{"body": NaN}', b"\xef\xbb\xbf{}", b'"\\ud800"', b"{}" * 3000]))
authorizations = (st.none() | st.sampled_from(["Bearer pk_live_1", "Bearer pk_open", "bearer  pk_live_2 "])
                  | st.text(max_size=40))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies, st.sampled_from(["POST", "GET", "OPTIONS", "post", ""]) | st.text(max_size=8),
       st.sampled_from(["bot", "open", "nobody", ""]) | st.text(max_size=8), authorizations,
       st.none() | st.text(max_size=30))
def test_hostile_requests_only_ever_refuse_with_4xx(body, method, agent, authorization, host):
    try:
        answer = _start(body, method=method, agent=agent, authorization=authorization, host=host)
    except RequestRefused as refused:
        assert refused.status in STATUSES, refused
        assert refused.public_reason and "\n" not in refused.public_reason and "\r" not in refused.public_reason
        return
    assert method == "POST" and {"wsUrl", "sessionId"} <= set(answer)
    json.dumps(answer, allow_nan=False)            # the answer itself is valid JSON
    if "body" in answer:
        assert len(base64.b64decode(answer["body"])) <= MAX_BODY_JSON
        json.loads(base64.b64decode(answer["body"]), parse_constant=pytest.fail)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies, st.sampled_from([("bot", "Bearer pk_live_1"), ("open", "Bearer pk_open")]))
def test_hostile_bodies_from_an_authorised_caller_only_ever_refuse_with_4xx(body, caller):
    agent, authorization = caller
    try:
        answer = _start(body, agent=agent, authorization=authorization)
    except RequestRefused as refused:
        assert refused.status in {400, 413}, refused
        return
    json.dumps(answer, allow_nan=False)
    assert ("token" in answer) == (agent == "bot")
