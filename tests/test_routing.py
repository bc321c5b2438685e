"""routing.py, sans-I/O: a request target to the service host it names (docs/endpoints.md)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrelay.errors import RequestRefused, RouteError
from wsrelay.core.routing import (GENERIC_PREFIX, MAX_QUERY_FIELDS, Route, parse_service_host,
                             route_start_api, route_websocket, split_target)

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
LABEL = re.compile(r"[a-z0-9-]{1,63}")
TOKEN = "eyJzaCI6ImEuYiJ9.njMD-S_JwrChT1tABo1bJWcyN7EfFdHdd11H704IabU"


def assert_sentence(text: str) -> None:
    assert text == text.strip() and "\n" not in text
    assert len(text.split()) >= 3, text
    assert text[0].isalpha(), text


def refusal(target: str, status: int) -> RouteError:
    """The RouteError for ``target``; checks its status and that both messages are sentences."""
    with pytest.raises(RouteError) as info:
        route_websocket(target)
    exc = info.value
    assert isinstance(exc, RequestRefused)
    assert exc.status == status, (target, exc.status, str(exc))
    assert_sentence(str(exc))
    assert exc.public_reason[0].isupper()
    if status == 404:
        assert exc.public_reason == "Not Found"
    else:
        assert exc.public_reason.startswith("Bad Request")
    return exc


# -- accepted forms ----------------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [
    ("/ws/generic/echo.demo", Route("echo", "demo", None, None, "")),
    ("/ws/generic/echo.demo/", Route("echo", "demo", None, None, "")),
    (f"/ws/generic/echo.demo/{TOKEN}", Route("echo", "demo", TOKEN, "path", "")),
    ("/ws/generic?serviceHost=echo.demo", Route("echo", "demo", None, None, "")),
    ("/ws/generic/?serviceHost=echo.demo", Route("echo", "demo", None, None, "")),
    (f"/ws/generic/{TOKEN}?serviceHost=echo.demo", Route("echo", "demo", TOKEN, "path", "")),
    (f"/ws/generic/{TOKEN}/?serviceHost=echo.demo", Route("echo", "demo", TOKEN, "path", "")),
    (f"/ws/generic/echo.demo?token={TOKEN}", Route("echo", "demo", TOKEN, "query", "")),
    (f"/ws/generic/echo.demo/?token={TOKEN}", Route("echo", "demo", TOKEN, "query", "")),
    (f"/ws/generic?serviceHost=echo.demo&token={TOKEN}", Route("echo", "demo", TOKEN, "query", "")),
    (f"/ws/generic?token={TOKEN}&serviceHost=echo.demo", Route("echo", "demo", TOKEN, "query", "")),
    ("/ws/generic/Echo.DEMO", Route("echo", "demo", None, None, "")),
    ("/ws/generic?serviceHost=ECHO.Demo", Route("echo", "demo", None, None, "")),
    ("/ws/generic?serviceHost=echo%2Edemo", Route("echo", "demo", None, None, "")),
    ("/ws/generic/my-bot-2.acme-0", Route("my-bot-2", "acme-0", None, None, "")),
    ("/ws/generic/-.-", Route("-", "-", None, None, "")),
    ("/ws/generic/echo.demo?token=", Route("echo", "demo", None, None, "")),
    ("/ws/generic/echo.demo?%74oken=abc", Route("echo", "demo", "abc", "query", "")),
    ("/ws/generic?service%48ost=echo.demo", Route("echo", "demo", None, None, "")),
    ("/ws/generic/echo.demo?", Route("echo", "demo", None, None, "")),
])
def test_accepted_forms(target, expected):
    route = route_websocket(target)
    assert route == expected
    assert route.service_host == f"{expected.agent}.{expected.organization}"


def test_service_host_property_joins_agent_and_organization():
    assert route_websocket("/ws/generic/Echo.Demo").service_host == "echo.demo"


def test_63_character_labels_are_accepted():
    agent, org = "a" * 63, "0" * 63
    assert route_websocket(f"/ws/generic/{agent}.{org}") == Route(agent, org, None, None, "")
    assert route_websocket(f"/ws/generic?serviceHost={agent}.{org}").service_host == f"{agent}.{org}"


@pytest.mark.parametrize("query, forwarded", [
    ("a=1&token=tok&b=2", "a=1&b=2"),
    ("serviceHost=echo.demo&a=1", "a=1"),
    ("body=eyJhIjoxfQ%3D%3D", "body=eyJhIjoxfQ%3D%3D"),
    ("z=1&body=eyJ%2Bx%2F&a=%7E&token=tok&q=a+b%20c&flag&serviceHost=echo.demo&x=",
     "z=1&body=eyJ%2Bx%2F&a=%7E&q=a+b%20c&flag&x="),
    ("a=1&&b=2&", "a=1&b=2"),
    ("b=2&a=1&b=3", "b=2&a=1&b=3"),
    ("%74oken=tok&Token=kept&TOKEN=kept", "Token=kept&TOKEN=kept"),
    ("servicehost=kept", "servicehost=kept"),
    ("a=%zz&b=%", "a=%zz&b=%"),
])
def test_query_is_forwarded_without_token_and_service_host(query, forwarded):
    target = f"/ws/generic?{query}" if "serviceHost=" in query else f"/ws/generic/echo.demo?{query}"
    route = route_websocket(target)
    assert route.service_host == "echo.demo"
    assert route.forward_query == forwarded


def test_body_parameter_is_kept_verbatim_with_the_token_removed():
    route = route_websocket(f"/ws/generic?serviceHost=echo.demo&body=eyJrIjoidiJ9&token={TOKEN}")
    assert route.forward_query == "body=eyJrIjoidiJ9"
    assert route.token == TOKEN


def test_query_with_exactly_the_maximum_fields_is_accepted():
    query = "&".join(["serviceHost=echo.demo"] + [f"f{i}=1" for i in range(MAX_QUERY_FIELDS - 1)])
    route = route_websocket(f"/ws/generic?{query}")
    assert route.forward_query.count("&") == MAX_QUERY_FIELDS - 2


# -- refusals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", [
    "ech_o.demo", "echo.de mo", "echo.demo!", "echo.démo", "echo*.demo", "echo.de/mo",
    ".demo", "echo.", ".", "echo..demo",
    "a" * 64 + ".demo", "echo." + "b" * 64,
    "echodemo", "",
    "a.b.c",
])
def test_malformed_service_host_is_a_400(host):
    assert "malformed service host" in str(refusal(f"/ws/generic?serviceHost={host}", 400))
    if "/" not in host and " " not in host and host:
        assert refusal(f"/ws/generic/{host}", 400).public_reason == "Bad Request: malformed service host"


def test_parse_service_host_directly():
    assert parse_service_host("Echo.Demo") == ("echo", "demo")
    with pytest.raises(RouteError) as info:
        parse_service_host("echo")
    assert info.value.status == 400


@pytest.mark.parametrize("host", [
    "echo.demo\n",          # '$' in the LABEL pattern matches before a final newline
    "echo\n.demo",
    "\u212aecho.demo",      # KELVIN SIGN lower-cases to ASCII 'k'
    "echo.demo\u0130",
])
def test_service_host_with_a_newline_or_non_ascii_letter_is_a_400(host):
    with pytest.raises(RouteError) as info:
        parse_service_host(host)
    assert info.value.status == 400


@pytest.mark.parametrize("target", [
    "/ws/generic?serviceHost=echo.demo%0A",
    "/ws/generic/echo.demo\n",
    "/ws/generic?serviceHost=%E2%84%AAecho.demo",
])
def test_route_refuses_service_host_with_newline_or_non_ascii(target):
    refusal(target, 400)


def test_missing_service_host_is_a_400():
    for target in ("/ws/generic", "/ws/generic/", "/ws/generic?a=1", f"/ws/generic?token={TOKEN}"):
        assert refusal(target, 400).public_reason == "Bad Request: missing service host"


@pytest.mark.parametrize("target", [
    "/", "/ws", "/ws/", "/ws/gen", "/ws/genericx", "/ws/generic.demo", "/WS/GENERIC/echo.demo",
    "/ws/generics/echo.demo", "/v1/public/echo/start", "/ws//generic/echo.demo",
    "/ws/generic/echo.demo/tok/extra", "/ws/generic/a/b/c/d",
    "/ws/generic//echo.demo", "/ws/generic/echo.demo//", "/ws/generic//",
    "/ws/generic/echo.demo//tok", "/ws/generic///",
])
def test_other_paths_are_a_404(target):
    refusal(target, 404)


@pytest.mark.parametrize("target", [
    "/ws/generic/echo%2Edemo", "/ws/generic/echo.demo/tok%41", "/ws/generic/%65cho.demo",
    "/ws/generic/tok%2F?serviceHost=echo.demo",
])
def test_percent_encoding_in_the_path_is_a_400(target):
    assert refusal(target, 400).public_reason == "Bad Request: malformed path"


@pytest.mark.parametrize("target", [
    "/ws/generic?serviceHost=echo.demo&serviceHost=echo.demo",
    "/ws/generic?serviceHost=echo.demo&serviceHost=other.demo",
    "/ws/generic?serviceHost=echo.demo&service%48ost=echo.demo",
    "/ws/generic/echo.demo?token=a&token=b",
    "/ws/generic/echo.demo?token=a&token=a",
    "/ws/generic/echo.demo?token=&token=",
])
def test_repeated_service_host_or_token_is_a_400(target):
    assert "repeated" in refusal(target, 400).public_reason


def test_service_host_both_in_path_and_query_is_a_400():
    exc = refusal(f"/ws/generic/echo.demo/{TOKEN}?serviceHost=echo.demo", 400)
    assert exc.public_reason == "Bad Request: service host given twice"
    refusal("/ws/generic/echo.demo/tok?serviceHost=other.demo", 400)


def test_single_segment_with_service_host_query_is_the_token():
    """The fourth form of docs/endpoints.md: with ?serviceHost=, the one path segment is the token."""
    route = route_websocket("/ws/generic/echo.demo?serviceHost=other.demo")
    assert route == Route("other", "demo", "echo.demo", "path", "")


@pytest.mark.parametrize("target", [
    f"/ws/generic/echo.demo/{TOKEN}?token={TOKEN}",
    f"/ws/generic/{TOKEN}?serviceHost=echo.demo&token=other",
    "/ws/generic/echo.demo/tok?token=",
])
def test_token_both_in_path_and_query_is_a_400(target):
    assert refusal(target, 400).public_reason == "Bad Request: token given twice"


@pytest.mark.parametrize("target", [
    "/ws/generic/echo.demo/tok!", "/ws/generic/echo.demo/tok=", "/ws/generic/echo.demo/t~k",
    "/ws/generic/echo.demo?token=a%20b", "/ws/generic/echo.demo?token=a+b",
    "/ws/generic/echo.demo?token=a/b", "/ws/generic/echo.demo?token=a%2Fb",
    "/ws/generic/echo.demo?token=tok%3D", "/ws/generic/echo.demo?token=%C3%A9",
    "/ws/generic/echo.demo?token=tok%0A",          # '$' in TOKEN_CHARS matches before a final newline
    "/ws/generic/tok$?serviceHost=echo.demo",
])
def test_token_with_bad_characters_is_a_400(target):
    assert refusal(target, 400).public_reason == "Bad Request: malformed token"


def test_more_than_the_maximum_query_fields_is_a_400():
    query = "&".join(["serviceHost=echo.demo"] + [f"f{i}=1" for i in range(MAX_QUERY_FIELDS)])
    exc = refusal(f"/ws/generic?{query}", 400)
    assert exc.public_reason == "Bad Request: too many query parameters"
    refusal("/ws/generic/echo.demo?" + "&" * MAX_QUERY_FIELDS, 400)   # empty fields count too


@pytest.mark.parametrize("target", [
    "", "*", "ws/generic/echo.demo", "http://relay/ws/generic/echo.demo",
    "relay:443", " /ws/generic/echo.demo", "?serviceHost=echo.demo",
])
def test_non_absolute_target_is_a_400(target):
    assert refusal(target, 400).public_reason == "Bad Request: malformed request target"


@pytest.mark.parametrize("target", [
    "/ws/generic/echo.demo#frag", "/ws/generic/echo.demo?a=1#frag", "/ws/generic#",
    "/nowhere#x",
])
def test_fragment_is_a_400(target):
    assert refusal(target, 400).public_reason == "Bad Request: malformed request target"


def test_split_target():
    assert split_target("/ws/generic/echo.demo?a=1&b=2?c") == ("/ws/generic/echo.demo", "a=1&b=2?c")
    assert split_target("/x") == ("/x", "")
    assert split_target("/x?") == ("/x", "")
    with pytest.raises(RouteError):
        split_target("x")


# -- the start API ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path, agent", [
    ("/v1/public/echo/start", "echo"),
    ("/v1/public/Echo-Bot_2/start", "Echo-Bot_2"),
    ("/v1/public/echo.demo/start", "echo.demo"),
    ("/v1/public/echo/start/", None),
    ("/v1/public//start", None),
    ("/v1/public/a/b/start", None),
    ("/v1/public/echo", None),
    ("/v1/public/echo/stop", None),
    ("/v1/public/echo/starts", None),
    ("/v2/public/echo/start", None),
    ("/x/v1/public/echo/start", None),
    ("v1/public/echo/start", None),
    ("/v1/public/echo/start?x=1", None),
    ("/v1/public/echo/start\n", None),      # '$' matches before a final newline
    (GENERIC_PREFIX, None),
    ("", None),
])
def test_route_start_api(path, agent):
    assert route_start_api(path) == agent


# -- properties ---------------------------------------------------------------------------------------

TARGET_ALPHABET = st.sampled_from(list("/?&=.%#+-_~ aZz09") + ["%0A", "%2E", "%E2%84%AA", "\n", "é",
                                                                  "serviceHost", "token", "echo.demo",
                                                                  "generic", "ws", "\x00"])
targets = (
    st.text()
    | st.lists(TARGET_ALPHABET, max_size=30).map("".join)
    | st.lists(TARGET_ALPHABET, max_size=30).map(lambda parts: GENERIC_PREFIX + "".join(parts))
    | st.lists(TARGET_ALPHABET, max_size=30).map(lambda parts: GENERIC_PREFIX + "/" + "".join(parts))
)


@PROPERTY
@given(targets)
def test_route_websocket_returns_a_route_or_raises_route_error(target):
    try:
        route = route_websocket(target)
    except RouteError as exc:
        assert exc.status in (400, 404)
        assert str(exc) and exc.public_reason
        return
    assert isinstance(route, Route)
    assert target.startswith(GENERIC_PREFIX)
    assert LABEL.fullmatch(route.agent) and LABEL.fullmatch(route.organization)
    assert route.service_host == f"{route.agent}.{route.organization}"
    assert (route.token is None) == (route.token_source is None)
    if route.token is not None:
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+", route.token)
        assert route.token_source in ("path", "query")
    assert "#" not in route.forward_query


@PROPERTY
@given(agent=st.from_regex(r"[A-Za-z0-9-]{1,63}", fullmatch=True),
       org=st.from_regex(r"[A-Za-z0-9-]{1,63}", fullmatch=True),
       token=st.none() | st.from_regex(r"[A-Za-z0-9_-]{1,40}\.[A-Za-z0-9_-]{1,43}", fullmatch=True),
       extra=st.lists(st.tuples(st.from_regex(r"[a-z]{1,5}", fullmatch=True).filter(
           lambda n: n not in ("token",)), st.from_regex(r"[A-Za-z0-9%+=]{0,8}", fullmatch=True)),
           max_size=5),
       form=st.sampled_from(["path", "path+token", "query", "query+token", "path?token"]))
def test_every_form_routes_to_the_same_service_host(agent, org, token, extra, form):
    host = f"{agent}.{org}"
    query = "&".join(f"{n}={v}" for n, v in extra)
    if form == "path":
        target, expect = f"/ws/generic/{host}", None
    elif form == "path+token":
        target, expect = f"/ws/generic/{host}/{token or 'tok'}", token or "tok"
    elif form == "query":
        target, expect = f"/ws/generic?serviceHost={host}", None
    elif form == "query+token":
        target, expect = f"/ws/generic/{token or 'tok'}?serviceHost={host}", token or "tok"
    else:
        target, expect = f"/ws/generic/{host}?token={token or 'tok'}", token or "tok"
    if query:
        target += ("&" if "?" in target else "?") + query
    route = route_websocket(target)
    assert route.service_host == host.lower()
    assert route.token == expect
    assert route.forward_query == query


# -- session resume (docs/resume.md) ------------------------------------------------------------

def test_resume_and_received_are_taken_out_of_what_the_bot_gets():
    from wsrelay.core.routing import ResumeRoute
    route = route_websocket("/ws/generic/echo.demo?a=1&resume=abc.def&received=12&b=2")
    assert isinstance(route, ResumeRoute)
    assert (route.resume, route.received, route.forward_query) == ("abc.def", 12, "a=1&b=2")
    route = route_websocket("/ws/generic/echo.demo?resume=abc.def")
    assert isinstance(route, ResumeRoute) and (route.resume, route.received) == ("abc.def", None)
    assert type(route_websocket("/ws/generic/echo.demo?resumed=1")) is Route     # any other request
    assert route_websocket("/ws/generic/echo.demo?resumed=1").forward_query == "resumed=1"
    assert type(route_websocket("/ws/generic/echo.demo?x=1")) is Route


@pytest.mark.parametrize("query, words", [
    ("resume=a.b&resume=c.d", "repeated resume"),
    ("resume=a.b&received=-1", "received must be a count"),
    ("resume=a.b&received=1e3", "received must be a count"),
    ("resume=a.b&received=99999999999999999999", "received must be a count"),
    ("received=3", "received goes with resume"),
    ("resume=a%20b", "malformed token"),
])
def test_a_malformed_resume_is_400(query, words):
    exc = refusal(f"/ws/generic/echo.demo?{query}", 400)
    assert words in exc.public_reason


def test_the_resume_header_never_reaches_the_bot():
    from wsrelay.core.upgrade import ResumeUpgrade, parse_upgrade
    headers = [(b"Host", b"relay.test"), (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"),
               (b"Sec-WebSocket-Version", b"13"), (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
               (b"X-Wsrelay-Resume", b"abc.def"), (b"X-Wsrelay-Hop", b"relay-a"), (b"X-Other", b"1")]
    upgrade = parse_upgrade(b"GET", headers, http_version=b"1.1")
    assert isinstance(upgrade, ResumeUpgrade) and upgrade.resume_token == "abc.def"
    assert upgrade.forward == (("X-Other", "1"),)
