"""The sans-I/O parts of the provider endpoints: framing, first messages, routing, signatures.

No sockets here (the end-to-end tests are tests/test_telephony.py); hypothesis for the
hostile cases: any bytes fed to ``FirstMessages`` end in one of its documented answers.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from providers import PROVIDERS, Call, any_first_messages, mutated_first_messages
from support import masked_frame
from wsrelay.core.frames import FrameScanner, accept_value, close_code_and_reason, close_frame, unmask
from wsrelay.core.routing import EndpointKind, HeldRoute, Route, RouteAt, find_endpoint, route_provider
from wsrelay.telephony.signatures import candidate_urls, twilio_signature, verify_twilio_signature
from wsrelay.telephony.providers import ClientClosed, FirstMessages, Start
from wsrelay.errors import FrameError, ProviderRefused, RouteError, SessionRefused

TEXT, BINARY, CLOSE, PING = 0x1, 0x2, 0x8, 0x9


def _stream(messages, *, ping_first=False) -> bytes:
    data = masked_frame(PING, b"hi") if ping_first else b""
    for m in messages:
        data += masked_frame(TEXT, m.encode()) if isinstance(m, str) else masked_frame(BINARY, m)
    return data


# -- framing -----------------------------------------------------------------------------------------

def test_scanner_walks_frames_split_anywhere_and_unmasks_only_when_asked():
    payloads = [b"a" * n for n in (0, 1, 125, 126, 65535, 65536)]
    data = b"".join(masked_frame(BINARY, p) for p in payloads)
    for step in (1, 7, 4096, len(data)):
        scanner, buffer, got = FrameScanner(max_payload=1 << 20), bytearray(), []
        for i in range(0, len(data), step):
            buffer += data[i:i + step]
            while (frame := scanner.next(buffer, want_payload=True)) is not None:
                got.append(frame.payload)
        assert got == payloads
    frame = FrameScanner(max_payload=10).next(masked_frame(TEXT, b"abc"), want_payload=False)
    assert frame is not None and frame.payload is None and frame.length == 3


@pytest.mark.parametrize("data,why", [
    (bytes([0x81, 0x03]) + b"abc", "unmasked"),
    (bytes([0x83, 0x80]) + b"\0\0\0\0", "reserved opcode"),
    (masked_frame(PING, b"x" * 126), "control frame"),
    (masked_frame(PING, b"x", fin=False), "control frame"),
])
def test_scanner_refuses_what_rfc_6455_forbids_a_client(data, why):
    with pytest.raises(FrameError, match=why) as info:
        FrameScanner(max_payload=10).next(data, want_payload=True)
    assert info.value.code == 1002


def test_a_frame_over_the_hold_limit_is_a_policy_refusal():
    with pytest.raises(ProviderRefused, match="at most 10") as info:
        FrameScanner(max_payload=10).next(masked_frame(TEXT, b"x" * 11)[:4], want_payload=True)
    assert info.value.code == 1008


def test_close_frame_and_accept_value():
    frame = close_frame(1008, "é" * 100)                  # cut to 125 bytes on a character boundary
    assert frame[0] == 0x88 and frame[1] <= 125
    code, reason = close_code_and_reason(frame[2:])
    assert code == 1008 and set(reason) == {"é"}
    # RFC 6455 §1.3's example.
    assert accept_value("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    data = os.urandom(1000)
    assert unmask(b"\1\2\3\4", unmask(b"\1\2\3\4", data)) == data


# -- first messages ---------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_each_providers_real_first_messages_are_accepted(provider):
    call = Call(provider, service_host="bot.acme" if provider == "twilio" else None)
    first = call.first_messages()
    data = _stream(first + [call.media(0)], ping_first=True)
    reader = FirstMessages(provider)
    result = None
    for i in range(1, len(data) + 1):                    # one byte at a time
        result = reader.scan(data[:i])
        if result is not None:
            break
    assert isinstance(result, Start)
    assert (result.provider, result.call_id, result.stream_id) == (provider, call.call_id, call.stream_id)
    assert result.end == len(_stream(first, ping_first=True))
    assert result.service_host == (("bot", "acme") if provider == "twilio" else None)


def test_fragmented_first_messages_are_assembled():
    call = Call("twilio", service_host="bot.acme")
    start = call.first_messages()[1].encode()
    data = (masked_frame(TEXT, call.first_messages()[0].encode())
            + masked_frame(TEXT, start[:10], fin=False) + masked_frame(PING, b"")
            + masked_frame(0x0, start[10:], fin=True))
    assert isinstance(FirstMessages("twilio").scan(data), Start)


def test_a_close_before_the_start_is_reported():
    data = _stream([Call("telnyx").first_messages()[0]]) + masked_frame(CLOSE, b"\x03\xe8bye")
    assert FirstMessages("telnyx").scan(data) == ClientClosed(1000, "bye")


@pytest.mark.parametrize("provider,messages,words", [
    ("twilio", ['{"event": "start"}'], "must be event 'connected'"),
    ("twilio", ['{"event": "connected"}', '{"event": "media"}'], "must be event 'start'"),
    ("plivo", ['{"event": "connected"}'], "must be event 'start'"),
    ("exotel", [b"\x00"], "binary frame"),
    ("telnyx", ["\udcff" if False else "{"], "not JSON"),
    ("telnyx", ["[" * 60000], "not JSON"),                # deep nesting: no RecursionError escapes
    ("twilio", ['"connected"'], "not a JSON object"),
    ("twilio", ['{"event": "connected"}', '{"event": "start", "start": []}'], "start.streamSid"),
])
def test_wrong_first_messages_are_refused_with_a_reason(provider, messages, words):
    with pytest.raises(ProviderRefused, match=words) as info:
        FirstMessages(provider).scan(_stream(messages))
    assert info.value.code == 1008


def test_invalid_utf8_and_the_bounds():
    with pytest.raises(ProviderRefused, match="UTF-8"):
        FirstMessages("plivo").scan(masked_frame(TEXT, b"\xff\xfe"))
    with pytest.raises(ProviderRefused, match="first 16 frames"):
        FirstMessages("twilio").scan(b"".join(masked_frame(PING, b"") for _ in range(16)))
    with pytest.raises(ProviderRefused, match="over 100 bytes"):
        FirstMessages("twilio", max_bytes=100).scan(masked_frame(TEXT, b"{" * 80, fin=False)
                                                    + masked_frame(0x0, b"x" * 80)[:30])
    assert FirstMessages("twilio").scan(masked_frame(TEXT, b'{"event": "connected"}')[:5]) is None


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_first_messages(), any_first_messages()), st.binary(max_size=30))
def test_property_any_first_frames_end_in_a_documented_answer(case, tail):
    provider, messages = case
    data = _stream(messages) + tail
    try:
        result = FirstMessages(provider).scan(data)
    except SessionRefused as exc:
        assert exc.code in (1002, 1008) and str(exc)
        return
    assert result is None or isinstance(result, (Start, ClientClosed))


# -- routing of the provider paths --------------------------------------------------------------------

def test_the_endpoint_table_names_every_provider():
    for provider, route_at in [("twilio", RouteAt.AFTER_FIRST_MESSAGES), ("telnyx", RouteAt.BEFORE_UPGRADE),
                               ("plivo", RouteAt.BEFORE_UPGRADE), ("exotel", RouteAt.BEFORE_UPGRADE)]:
        endpoint = find_endpoint(f"/ws/{provider}")
        assert endpoint is not None and endpoint.kind is EndpointKind.PROVIDER
        assert endpoint.provider == provider and endpoint.route_at is route_at
    assert find_endpoint("/ws/twiliox") is None and find_endpoint("/ws/vonage") is None


def test_route_provider():
    body = "body=eyJ+a/b=="
    assert route_provider(f"/ws/telnyx?serviceHost=Bot.Acme&{body}", "telnyx", service_host_in_query=True) \
        == Route("bot", "acme", None, None, body)
    assert route_provider("/ws/plivo/tok.en?serviceHost=a.b", "plivo", service_host_in_query=True) \
        == Route("a", "b", "tok.en", "path", "")
    assert route_provider("/ws/twilio/", "twilio", service_host_in_query=False) == HeldRoute(None, None, "")
    assert route_provider("/ws/twilio?token=t", "twilio", service_host_in_query=False).complete("a", "b") \
        == Route("a", "b", "t", "query", "")
    for target, provider, status in [("/ws/exotel", "exotel", 400), ("/ws/exotel?serviceHost=x", "exotel", 400),
                                     ("/ws/telnyx/a/b?serviceHost=a.b", "telnyx", 404),
                                     ("/ws/twilio?serviceHost=a.b", "twilio", 400),
                                     ("/ws/plivo/t?serviceHost=a.b&token=u", "plivo", 400)]:
        with pytest.raises(RouteError) as info:
            route_provider(target, provider, service_host_in_query=provider != "twilio")
        assert info.value.status == status, target


# -- X-Twilio-Signature ---------------------------------------------------------------------------------

def test_twilio_signature_matches_twilios_documented_example():
    # Twilio's security documentation: this URL and these POST parameters, with the
    # auth token 12345, are signed "0/KCTR6DLpKmkAf8muzZqo1nDgQ=".
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234",
              "From": "+12349013030", "To": "+18005551212"}
    assert twilio_signature("12345", url, params) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_signature_candidates_and_verification():
    urls = candidate_urls("/ws/twilio", host="relay.example.com", public_url=None)
    assert urls == ["wss://relay.example.com/ws/twilio", "wss://relay.example.com:443/ws/twilio",
                    "ws://relay.example.com/ws/twilio", "ws://relay.example.com:80/ws/twilio"]
    assert candidate_urls("/ws/twilio", host="ignored", public_url="wss://r.example.com:443/") == [
        "wss://r.example.com:443/ws/twilio", "wss://r.example.com/ws/twilio"]
    signed = twilio_signature("token", "wss://relay.example.com:443/ws/twilio")
    assert verify_twilio_signature("token", signed, urls)
    assert not verify_twilio_signature("other", signed, urls)
    assert not verify_twilio_signature("token", signed[:-2], urls)
    assert not verify_twilio_signature("token", None, urls)
    assert not verify_twilio_signature("token", "é" * 28, urls)
