"""The request reader (llhttp underneath) against hostile and oddly cut input, without sockets.

Two properties the gate relies on: however a request arrives in pieces, the reader gives the
same request and the same bytes after it (a client's early frames, byte for byte: the bare-LF
fix-up of the head must never touch them); and any input at all gives a request, "not yet",
or a ``RequestRefused`` with a status, never another exception.
"""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings, strategies as st

from wsrelay.edge.http import RequestReader
from wsrelay.errors import RequestRefused

KEY = base64.b64encode(b"k" * 16)
HEAD = (b"GET /ws/generic/echo.demo?x=1 HTTP/1.1\r\nHost: relay.test\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
        b"X-Custom-Header:   spaced value \t\r\n\r\n")


def read(pieces: list[bytes], max_head: int = 8192, max_body: int = 8192) -> RequestReader:
    """Feed ``pieces`` as the gate does: what comes after a complete request is early data."""
    reader = RequestReader(max_head, max_body)
    for i, piece in enumerate(pieces):
        if reader.feed(piece):
            reader.trailing += b"".join(pieces[i + 1:])
            break
    return reader


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def view(reader: RequestReader) -> tuple:
    request = reader.request
    assert request is not None and reader.complete
    return (request.method, request.target, request.http_version, request.raw_headers,
            request.headers, reader.trailing, bytes(reader.body))


def test_an_upgrade_head_is_read_with_the_client_spelling_kept():
    reader = read([HEAD + b"\x81\x05hello"])
    method, target, version, raw, lower, trailing, body = view(reader)
    assert (method, target, version) == (b"GET", b"/ws/generic/echo.demo?x=1", b"1.1")
    assert (b"X-Custom-Header", b"spaced value") in raw          # spelling kept, whitespace trimmed
    assert (b"x-custom-header", b"spaced value") in lower
    assert trailing == b"\x81\x05hello" and body == b""


@settings(max_examples=300, deadline=None)
@given(early=st.binary(max_size=300), points=st.lists(st.integers(min_value=0), max_size=12),
       bare_lf=st.booleans())
def test_any_cutting_gives_the_same_request_and_the_early_bytes_untouched(early, points, bare_lf):
    head = HEAD.replace(b"\r\n", b"\n") if bare_lf else HEAD
    whole = view(read([head + early]))
    assert whole[5] == early                                     # frames are never rewritten
    assert view(read(cut(head + early, points))) == whole
    assert view(read([HEAD + early]))[:5] == whole[:5]           # LF-only reads as CRLF does


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200), points=st.lists(st.integers(min_value=0), max_size=8),
       chunked=st.booleans())
def test_a_post_body_arrives_whole_whatever_the_cuts(body, points, chunked):
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n\r\n"
        payload = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        framing, payload = b"Content-Length: %d\r\n\r\n" % len(body), body
    data = b"POST /v1/public/echo/start HTTP/1.1\r\nHost: relay.test\r\n" + framing + payload
    assert view(read(cut(data, points)))[6] == body


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=600), points=st.lists(st.integers(min_value=0), max_size=6))
def test_any_bytes_give_a_request_or_a_refusal_never_a_crash(data, points):
    try:
        reader = read(cut(data, points), max_head=256)
    except RequestRefused as exc:
        assert 400 <= exc.status < 500
        return
    assert reader.complete == (reader.request is not None and reader.complete)


@settings(max_examples=300, deadline=None)
@given(prefix=st.sampled_from([b"GET / HTTP/1.1\r\nHost: a\r\n", b"POST /x HTTP/1.1\r\nHost: a\r\n"]),
       junk=st.binary(min_size=1, max_size=40))
def test_hostile_header_lines_are_refused_with_a_status(prefix, junk):
    line = b"X-A: " + junk + b"\r\n"
    try:
        reader = read([prefix + line + b"\r\n"])
    except RequestRefused as exc:
        assert exc.status in (400, 413, 431)
        return
    # Accepted: then the value held no control byte (tab and obs-text are allowed).
    assert reader.request is not None
    value = dict(reader.request.headers).get(b"x-a", b"")
    assert not any(b < 0x20 and b != 0x09 or b == 0x7f for b in value)


@pytest.mark.parametrize("head,status", [
    (b"GET / HTTP/1.1\r\n\r\n", 400),                                          # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),                    # two
    (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", 405),                               # a method, not ours
    (b"\x16\x03\x01\x00", 400),                                                # TLS: refused at once
    (b"\r\n" * 5000, 431),                                                     # empty lines count
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 9000, 431),                 # no end in sight
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", 400),                 # obs-fold
    (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9000\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
])
def test_refusals(head, status):
    with pytest.raises(RequestRefused) as info:
        read([head])
    assert info.value.status == status
    assert info.value.public_reason


def test_nothing_after_a_plain_request_is_parsed_as_http():
    reader = read([b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n\x00\x01 not http at all"])
    assert reader.complete and reader.request is not None and reader.request.target == b"/metrics"
