"""handshake.py, sans-I/O: is the client's upgrade request a valid WebSocket handshake."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrelay.errors import AuthError, RequestRefused
from wsrelay.core.upgrade import (MAX_HEADERS, MAX_SUBPROTOCOLS_HEADER, UpgradeRequest, bearer_token,
                               canonical_upgrade_head, check_head, declares_body, header_values,
                               parse_upgrade)

PROPERTY = settings(max_examples=250, deadline=None, derandomize=True, database=None)
KEY = base64.b64encode(bytes(range(16)))          # b"AAECAwQFBgcICQoLDA0ODw=="


def base_headers(**replace) -> list[tuple[bytes, bytes]]:
    """A valid upgrade request's headers; ``name=None`` drops one, ``name=value`` replaces it."""
    headers = {
        b"host": b"relay.example:8443",
        b"upgrade": b"websocket",
        b"connection": b"Upgrade",
        b"sec-websocket-version": b"13",
        b"sec-websocket-key": KEY,
    }
    for name, value in replace.items():
        name = name.replace("_", "-").encode()
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value if isinstance(value, bytes) else value.encode("latin-1")
    return list(headers.items())


def refused(method: bytes, headers, status: int, exc_type=RequestRefused) -> RequestRefused:
    with pytest.raises(RequestRefused) as info:
        parse_upgrade(method, headers)
    exc = info.value
    assert type(exc) is exc_type
    assert exc.status == status, (exc.status, str(exc))
    assert str(exc) and len(str(exc).split()) >= 3
    assert exc.public_reason[0].isupper()
    return exc


# -- accepted -------------------------------------------------------------------------------------

def test_a_valid_upgrade_request_is_accepted():
    assert parse_upgrade(b"GET", base_headers()) == UpgradeRequest(
        host="relay.example:8443", key=KEY.decode(), subprotocols=None, bearer_token=None,
        user_agent=None, forward=())


@pytest.mark.parametrize("replace", [
    {"upgrade": "WebSocket"},
    {"upgrade": "WEBSOCKET"},
    {"upgrade": "h2c, websocket"},
    {"upgrade": " websocket ,"},
    {"connection": "keep-alive, Upgrade"},
    {"connection": "upgrade"},
    {"connection": "UPGRADE,close"},
    {"sec_websocket_version": " 13 "},
    {"sec_websocket_key": b" " + KEY + b" "},
    {"sec_websocket_key": base64.b64encode(b"\xff" * 16)},
    {"host": None},
])
def test_valid_variants_are_accepted(replace):
    request = parse_upgrade(b"GET", base_headers(**replace))
    assert isinstance(request, UpgradeRequest)
    assert request.host == ("" if "host" in replace else "relay.example:8443")


def test_upgrade_and_connection_may_be_split_over_several_header_lines():
    headers = base_headers(upgrade=None, connection=None) + [
        (b"upgrade", b"h2c"), (b"upgrade", b"websocket"),
        (b"connection", b"keep-alive"), (b"connection", b"Upgrade"),
    ]
    assert parse_upgrade(b"GET", headers).host == "relay.example:8443"


def test_what_the_request_offers_is_returned():
    headers = base_headers() + [
        (b"sec-websocket-protocol", b"chat, superchat"),
        (b"sec-websocket-protocol", b" v2 "),
        (b"sec-websocket-protocol", b"  "),
        (b"authorization", b"Bearer  abc.def "),
        (b"user-agent", b"test-client/1.0"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
    ]
    assert parse_upgrade(b"GET", headers) == UpgradeRequest(
        host="relay.example:8443", key=KEY.decode(), subprotocols="chat, superchat, v2",
        bearer_token="abc.def", user_agent="test-client/1.0",
        forward=(("user-agent", "test-client/1.0"),))


def test_blank_subprotocol_headers_are_no_offer():
    headers = base_headers() + [(b"sec-websocket-protocol", b""), (b"sec-websocket-protocol", b" ")]
    assert parse_upgrade(b"GET", headers).subprotocols is None


def test_subprotocol_offer_at_the_limit_is_accepted():
    offer = b"p" * MAX_SUBPROTOCOLS_HEADER
    headers = base_headers() + [(b"sec-websocket-protocol", offer)]
    assert parse_upgrade(b"GET", headers).subprotocols == offer.decode()


def test_header_values_are_latin_1():
    headers = [(b"user-agent", b"caf\xe9"), (b"x", b"y")]
    assert header_values(headers, b"user-agent") == ["café"]
    assert header_values(headers, b"missing") == []
    request = parse_upgrade(b"GET", base_headers() + headers)
    assert request.user_agent == "café"
    # picows writes the bot's handshake as UTF-8: a value that is not UTF-8 is not forwarded.
    assert ("x", "y") in request.forward
    assert all(name != "user-agent" for name, _ in request.forward)


# -- refused ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [b"POST", b"HEAD", b"PUT", b"OPTIONS", b"CONNECT", b"get", b"",
                                    b"GET ", b"\xff"])
def test_other_methods_are_a_405(method):
    exc = refused(method, base_headers(), 405)
    assert exc.headers == {"Allow": "GET"}
    assert exc.public_reason.startswith("Method Not Allowed")


def test_the_method_is_checked_first():
    refused(b"POST", [], 405)


@pytest.mark.parametrize("replace", [
    {"upgrade": None},
    {"connection": None},
    {"upgrade": None, "connection": None},
    {"upgrade": "h2c"},
    {"upgrade": "websocket2"},
    {"upgrade": "web socket"},
    {"upgrade": ""},
    {"connection": "keep-alive"},
    {"connection": "close"},
    {"connection": "upgrades"},
])
def test_not_an_upgrade_is_a_426(replace):
    exc = refused(b"GET", base_headers(**replace), 426)
    assert exc.headers == {"Upgrade": "websocket", "Connection": "Upgrade"}
    assert exc.public_reason.startswith("Upgrade Required")


@pytest.mark.parametrize("version", [None, "", "8", "12", "14", "13, 8", "013", "13.0", "thirteen"])
def test_wrong_websocket_version_is_a_426(version):
    exc = refused(b"GET", base_headers(sec_websocket_version=version), 426)
    assert exc.headers == {"Sec-WebSocket-Version": "13"}
    assert "version 13" in exc.public_reason


def test_repeated_version_header_is_a_400():
    headers = base_headers() + [(b"sec-websocket-version", b"13")]
    assert "repeated" in refused(b"GET", headers, 400).public_reason


@pytest.mark.parametrize("key", [
    None, b"", b"!!!!", b"not base64 at all", base64.b64encode(b"x" * 15), base64.b64encode(b"x" * 17),
    base64.b64encode(b"x" * 32), KEY.rstrip(b"="), KEY[:-2] + b"=", b"AAECAwQFBgcI CQoLDA0ODw==",
    KEY.replace(b"/", b"_") + b"_", b"\xe9" * 24, KEY + b"\x00", b"AAECAwQFBgcICQoLDA0OD-==",
])
def test_missing_or_malformed_key_is_a_400(key):
    exc = refused(b"GET", base_headers(sec_websocket_key=key), 400)
    assert exc.public_reason == "Bad Request: invalid Sec-WebSocket-Key"


def test_repeated_key_is_a_400():
    headers = base_headers() + [(b"sec-websocket-key", KEY)]
    assert "repeated" in refused(b"GET", headers, 400).public_reason


def test_subprotocol_offer_over_the_limit_is_a_400():
    headers = base_headers() + [(b"sec-websocket-protocol", b"p" * (MAX_SUBPROTOCOLS_HEADER + 1))]
    assert "too long" in refused(b"GET", headers, 400).public_reason
    split = [(b"sec-websocket-protocol", b"p" * 600)] * 2
    refused(b"GET", base_headers() + split, 400)


@pytest.mark.parametrize("name", [b"host", b"user-agent", b"authorization"])
def test_repeated_single_headers_are_a_400(name):
    value = b"Bearer tok" if name == b"authorization" else b"x"
    headers = base_headers() + [(name, value), (name, value)]
    if name == b"host":
        headers = [h for h in headers if h != (b"host", b"relay.example:8443")]
    assert "repeated" in refused(b"GET", headers, 400).public_reason


@pytest.mark.parametrize("value", [b"Basic dXNlcjpwdw==", b"Bearer", b"Bearer ", b"Bearer    ", b"",
                                   b"Token abc", b"Bearerabc", b"Bearer\tabc"])
def test_authorization_that_is_not_bearer_is_a_401(value):
    headers = base_headers() + [(b"authorization", value)]
    exc = refused(b"GET", headers, 401, exc_type=AuthError)
    assert exc.public_reason.startswith("Unauthorized")


def test_bearer_token_directly():
    assert bearer_token([]) is None
    assert bearer_token([(b"authorization", b"bearer tok")]) == "tok"
    assert bearer_token([(b"authorization", b"BEARER  tok ")]) == "tok"
    with pytest.raises(AuthError) as info:
        bearer_token([(b"authorization", b"Basic x")])
    assert info.value.status == 401


# -- property ----------------------------------------------------------------------------------------

NAMES = [b"host", b"upgrade", b"connection", b"sec-websocket-version", b"sec-websocket-key",
         b"sec-websocket-protocol", b"authorization", b"user-agent", b"x-other"]
VALUES = st.sampled_from([b"websocket", b"Upgrade", b"13", KEY, b"Bearer t", b"", b" ", b",",
                          b"\xff\xfe", b"=", b"p" * 1100]) | st.binary(max_size=40)


@PROPERTY
@given(method=st.sampled_from([b"GET", b"POST", b"\xff"]) | st.binary(max_size=8),
       extra=st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=8),
       drop=st.sets(st.sampled_from(NAMES)))
def test_parse_upgrade_accepts_or_refuses_with_a_status(method, extra, drop):
    headers = [h for h in base_headers() if h[0] not in drop] + extra
    try:
        request = parse_upgrade(method, headers)
    except RequestRefused as exc:
        assert exc.status in (400, 401, 405, 426)
        assert exc.public_reason
        return
    assert method == b"GET"
    assert isinstance(request, UpgradeRequest)
    assert request.subprotocols is None or len(request.subprotocols) <= MAX_SUBPROTOCOLS_HEADER


# -- the one verdict: head rules, body, version, forwarding, the canonical head ----------------------

@pytest.mark.parametrize("version", [b"1.0", b"0.9", b"2.0"])
def test_only_http_1_1_upgrades(version):
    with pytest.raises(RequestRefused) as info:
        parse_upgrade(b"GET", base_headers(), http_version=version)
    assert info.value.status == 400 and "HTTP/1.1" in info.value.public_reason


@pytest.mark.parametrize("extra", [
    [(b"content-length", b"5")], [(b"transfer-encoding", b"chunked")],
    [(b"transfer-encoding", b"identity")], [(b"content-length", b"00001")],
])
def test_an_upgrade_with_a_body_is_a_400(extra):
    assert declares_body(extra)
    assert "no body" in refused(b"GET", base_headers() + extra, 400).public_reason


@pytest.mark.parametrize("extra", [[(b"content-length", b"0")], [(b"content-length", b"000")], []])
def test_an_empty_body_is_no_body(extra):
    assert not declares_body(extra)
    assert parse_upgrade(b"GET", base_headers() + extra).key == KEY.decode()


def test_head_rules_header_count():
    headers = [(b"x-h%d" % i, b"v") for i in range(MAX_HEADERS)]
    check_head(b"GET / HTTP/1.1\r\n\r\n", headers)
    with pytest.raises(RequestRefused) as info:
        check_head(b"GET / HTTP/1.1\r\n\r\n", headers + [(b"one-more", b"v")])
    assert info.value.status == 431


@pytest.mark.parametrize("head", [b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
                                  b"GET / HTTP/1.1\nX: a\n\tb\n\n"])
def test_head_rules_folded_lines(head):
    with pytest.raises(RequestRefused) as info:
        check_head(head, [(b"x", b"a b")])
    assert info.value.status == 400 and "folded" in info.value.public_reason


@pytest.mark.parametrize("value", [b"a\x00b", b"a\x01", b"\x1b[31m", b"a\x7f", b"a\rb", b"a\nb"])
def test_head_rules_control_characters(value):
    with pytest.raises(RequestRefused) as info:
        check_head(b"GET / HTTP/1.1\r\n\r\n", [(b"x", value)])
    assert info.value.status == 400


def test_head_rules_allow_tab_and_obs_text():
    check_head(b"GET / HTTP/1.1\r\n\r\n", [(b"x", b"a\tb \xe9\xff")])


def test_end_to_end_headers_are_forwarded_in_order_with_their_spelling():
    extra = [(b"Origin", b"https://app.example"), (b"User-Agent", b"Firefox/122"),
             (b"Cookie", b"a=1"), (b"Cookie", b"b=2"), (b"X-Custom", b"caf\xc3\xa9"),
             (b"Connection", b"keep-alive, Upgrade, X-Hop"), (b"X-Hop", b"gone"),
             (b"Keep-Alive", b"timeout=5"), (b"TE", b"trailers"), (b"Authorization", b"Bearer t"),
             (b"X-Forwarded-For", b"6.6.6.6"), (b"X-Forwarded-Proto", b"https"),
             (b"x-forwarded-anything", b"x"), (b"Forwarded", b"for=6.6.6.6"),
             (b"X-Real-IP", b"6.6.6.6"), (b"X-Session-Id", b"forged"),
             (b"X-Daily-Session-Id", b"forged"), (b"X-Service-Host", b"other.org"),
             (b"Sec-WebSocket-Extensions", b"permessage-deflate"),
             (b"Sec-WebSocket-Protocol", b"chat"), (b"Proxy-Authorization", b"Basic x")]
    headers = [h for h in base_headers(connection=None)] + extra
    request = parse_upgrade(b"GET", headers)
    assert request.forward == (("Origin", "https://app.example"), ("User-Agent", "Firefox/122"),
                               ("Cookie", "a=1"), ("Cookie", "b=2"), ("X-Custom", "café"))


def test_canonical_head_is_what_picows_accepts():
    from picows.picows import _parse_http_request, _validate_upgrade_request
    head = canonical_upgrade_head(KEY.decode())
    assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
    request = _parse_http_request(head[:-4])
    accept = _validate_upgrade_request(request)
    expected = base64.b64encode(hashlib.sha1(KEY + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert accept == expected


@PROPERTY
@given(extra=st.lists(st.tuples(st.sampled_from(NAMES + [b"origin", b"cookie", b"x-forwarded-for"]),
                                VALUES), max_size=8))
def test_whatever_the_gate_accepts_picows_accepts_in_canonical_form(extra):
    """The gate's verdict is final: an accepted request always yields a head picows takes."""
    from picows.picows import _parse_http_request, _validate_upgrade_request
    try:
        request = parse_upgrade(b"GET", base_headers() + extra)
    except RequestRefused:
        return
    head = canonical_upgrade_head(request.key)
    _validate_upgrade_request(_parse_http_request(head[:-4]))
    for name, value in request.forward:
        assert name.lower() not in ("host", "upgrade", "connection", "authorization")
        value.encode("utf-8")
