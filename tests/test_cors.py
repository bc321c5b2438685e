"""CORS for the start API (cors.py, sans-I/O): preflights, response headers, hostile origins."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wsrelay.core.cors import CorsPolicy, is_preflight, origin_problem

APP = "https://app.example.com"
LOCAL = "http://localhost:3000"
LISTED = CorsPolicy([APP, LOCAL])
ANY = CorsPolicy(["*"])
OFF = CorsPolicy([])

ALLOWED_PREFLIGHT = {
    "Access-Control-Allow-Methods": "POST",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "600",
    "Vary": "Origin",
}


def test_preflight_from_a_listed_origin():
    answer = LISTED.preflight(APP, "POST", "authorization, content-type")
    assert answer.status == 204 and answer.headers == {"Access-Control-Allow-Origin": APP, **ALLOWED_PREFLIGHT}
    assert LISTED.preflight(LOCAL, "POST").headers["Access-Control-Allow-Origin"] == LOCAL
    assert LISTED.preflight(APP.encode(), b"POST", b"Content-Type").status == 204       # bytes from the request reader
    assert "Access-Control-Allow-Credentials" not in answer.headers


def test_preflight_with_any_origin_answers_star_never_the_origin():
    answer = ANY.preflight("https://whoever.example", "POST", "Content-Type")
    assert answer.status == 204 and answer.headers == {"Access-Control-Allow-Origin": "*", **ALLOWED_PREFLIGHT}


@pytest.mark.parametrize("policy,origin,method,headers,reason", [
    (OFF, APP, "POST", None, "not enabled"),
    (LISTED, "https://evil.example", "POST", None, "origin not allowed"),
    (LISTED, APP + "/", "POST", None, "origin not allowed"),
    (LISTED, "HTTPS://APP.EXAMPLE.COM", "POST", None, "origin not allowed"),
    (LISTED, "null", "POST", None, "origin not allowed"),
    (LISTED, "*", "POST", None, "origin not allowed"),
    (LISTED, None, "POST", None, "origin not allowed"),
    (LISTED, APP, "PUT", None, "method not allowed"),
    (LISTED, APP, "post", None, "method not allowed"),
    (LISTED, APP, None, None, "method not allowed"),
    (LISTED, APP, "POST", "X-Custom", "headers not allowed"),
    (LISTED, APP, "POST", "authorization, cookie", "headers not allowed"),
    (ANY, "https://x.example", "DELETE", None, "method not allowed"),
])
def test_preflight_refusals(policy, origin, method, headers, reason):
    answer = policy.preflight(origin, method, headers)
    assert answer.status == 403 and reason in answer.reason
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_response_headers():
    assert LISTED.response_headers(APP) == {"Access-Control-Allow-Origin": APP, "Vary": "Origin"}
    assert ANY.response_headers("https://x.example") == {"Access-Control-Allow-Origin": "*", "Vary": "Origin"}
    assert LISTED.response_headers("https://evil.example") == {"Vary": "Origin"}
    assert LISTED.response_headers(None) == {} and ANY.response_headers(None) == {}
    assert OFF.response_headers(APP) == {}


def test_is_preflight():
    assert is_preflight("OPTIONS", APP, "POST") and is_preflight(b"OPTIONS", b"x", b"")
    assert not is_preflight("OPTIONS", APP, None)       # a plain OPTIONS, not a preflight
    assert not is_preflight("OPTIONS", None, "POST")
    assert not is_preflight("POST", APP, "POST")


@pytest.mark.parametrize("origin", [APP, LOCAL, "https://a.b", "http://[::1]:8080", "https://xn--bcher-kva.example",
                                    "http://127.0.0.1:65535", "chrome-extension://abcdef"])
def test_good_origins(origin):
    assert origin_problem(origin) is None


# -- hostile Origin values -----------------------------------------------------------------

header_text = st.text(max_size=60) | st.binary(max_size=60).map(lambda b: b.decode("latin-1"))
hostile_origins = (st.none() | header_text | st.binary(max_size=60)
                   | st.sampled_from([APP, APP + "\r\nSet-Cookie: x=1", APP + "\x00", " " + APP, APP + " ",
                                      APP.upper(), "*", "null", APP + "," + LOCAL, LOCAL + ":3000", ""])
                   | st.builds(lambda o, t: o + t, st.sampled_from([APP, LOCAL]), header_text))


def _assert_safe(headers: dict[str, str], allowed: str | None) -> None:
    for name, value in headers.items():
        assert isinstance(value, str) and not any(c in value for c in "\r\n\x00"), (name, value)
    emitted = headers.get("Access-Control-Allow-Origin")
    assert emitted == allowed, (emitted, allowed)


@settings(max_examples=300, deadline=None)
@given(hostile_origins, st.none() | st.sampled_from(["POST", "GET"]) | header_text,
       st.none() | st.sampled_from(["content-type", "Authorization,Content-Type"]) | header_text)
def test_hostile_origins_never_raise_never_reflect_never_inject(origin, method, request_headers):
    text = origin.decode("latin-1") if isinstance(origin, bytes) else origin
    for policy, configured in ((LISTED, {APP, LOCAL}), (ANY, {"*"}), (OFF, set())):
        if not configured or text is None:
            allowed = None
        elif "*" in configured:
            allowed = "*"
        else:
            allowed = text if text in configured else None       # byte-exact match only
        answer = policy.preflight(origin, method, request_headers)
        assert answer.status in (204, 403)
        assert "\n" not in answer.reason and "\r" not in answer.reason
        if answer.status == 204:
            assert allowed is not None and method == "POST"
            _assert_safe(answer.headers, allowed)
        else:
            _assert_safe(answer.headers, None)
        _assert_safe(policy.response_headers(origin), allowed)


@settings(max_examples=300, deadline=None)
@example("http://a:443")
@example("https://a:80")
@example("https://a:443")
@example("https://a.b/")
@given(header_text | st.builds(lambda s, h, p: f"{s}://{h}{p}", st.sampled_from(["https", "http", "HTTP", "ws", ""]),
                               st.text(max_size=20), st.sampled_from(["", ":1", ":443", ":0", ":99999", "/", "/x"])))
def test_origin_problem_never_raises_and_accepts_only_clean_origins(value):
    problem = origin_problem(value)
    assert problem is None or (isinstance(problem, str) and problem)
    if problem is None:                  # accepted: exactly what a browser would send
        assert value == value.lower() and value.isascii() and value.count("/") == 2 and "://" in value
        assert not any(c in value for c in "?#@\\") and not value.endswith("/")
        assert not value.startswith("https://") or not value.endswith(":443")
        assert not value.startswith("http://") or not value.endswith(":80")
        assert all(c.isprintable() and not c.isspace() for c in value)


def test_origin_problem_of_non_strings():
    for value in (None, 1, ["https://a.b"], b"https://a.b"):
        assert "string" in origin_problem(value)
