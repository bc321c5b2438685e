"""Real clients nobody here wrote, against the relay: headless Chromium and Firefox, wscat, and
raw sockets sending request heads that real clients send.

The bot behind the relay in the browser tests is a third-party server too (the ``websockets``
library's), and it checks ``Origin`` as a production bot serving browsers would: it only works
behind the relay if the relay forwards the client's end-to-end headers (docs/endpoints.md).

Browsers and wscat are installed when missing (Debian's ``chromium`` and ``firefox-esr``;
npm's ``wscat`` under ``.cache/npm-tools``); missing and not installable is a failure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import uuid

import pytest

from real_clients import (
    DemoRelay, OriginCheckingBot, PageServer, PtyProcess, Tap, accept_for, env_with_wscat,
    head_headers, header_value, kill_process_tree, launch_chromium, launch_firefox,
    read_frame, read_head, tail, tokens, wscat_binary,
)
from support import Bot, arun, debian_binary, masked_frame, relay_config, start_relay
from wsrelay import pump as pump_selector

pytestmark = pytest.mark.system      # browsers from Debian's packages, wscat from npm

# A platform-style ?body=: standard base64 of JSON, with '+', '/' and '=' in it, which must reach
# the bot byte for byte (a '+' must not become a space, nothing percent-encoded or decoded).
BODY = base64.b64encode(json.dumps({"caller": "+15550100", "note": "ünïcødé >>>???"},
                                   ensure_ascii=False).encode()).decode()
assert "+" in BODY and "/" in BODY and BODY.endswith("=")
TEXT = "héllo from a real browser ✓ 🎉"

PAGE_TIMEOUT_MS = 30_000          # the page posts whatever it has by then
REPORT_TIMEOUT = 60               # the test waits this long for the page's report


# -- (a) real browsers -------------------------------------------------------------------------

def _browser_session(launch, tmp_path):
    """Serve the page, run the browser against tap → relay → Origin-checking bot; gather it all."""
    try:
        pump_selector.load("cython")
    except ImportError as exc:
        pytest.fail(f"compiled pump missing: {exc}")
    page = PageServer().start()

    async def main():
        bot = await OriginCheckingBot([page.origin]).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), "cython")
        # The page connects through a byte-for-byte tap in front of the relay, so the test sees
        # the request head the browser really sent (its key, its Connection header).
        tap = await Tap(relay.port).start()
        page.set_page(f"ws://127.0.0.1:{tap.port}/ws/generic/echo.demo?body={BODY}", TEXT, PAGE_TIMEOUT_MS)
        proc, log_path = launch(f"{page.origin}/", tmp_path)
        try:
            report = await asyncio.to_thread(page.wait_report, REPORT_TIMEOUT)
            for _ in range(30):                   # the bot's handler records the close it got
                if bot.closes:
                    break
                await asyncio.sleep(0.1)
        finally:
            await asyncio.to_thread(kill_process_tree, proc)
            tap.close()
            await relay.stop()
            await bot.close()
        return report, bot, tap, tail(log_path)

    try:
        return arun(main(), timeout=REPORT_TIMEOUT + 45)
    finally:
        page.close()


def _check_browser_session(report, bot, tap, browser_log, *, ua_marker: str, origin: str) -> None:
    problems = []
    context = f"\npage report: {json.dumps(report, ensure_ascii=False)}\nbrowser log tail:\n{browser_log[-1500:]}"
    if report is None:
        pytest.fail(f"no report from the page within {REPORT_TIMEOUT}s; bot saw {len(bot.requests)} "
                    f"request(s); tap saw {len(tap.connections)} connection(s){context}")

    # What the page got: both echoes byte-exact, the bot's sub-protocol, a clean 4000 "bye".
    if report.get("protocol") != "proto-a":
        problems.append(f"page's chosen protocol is {report.get('protocol')!r}, not 'proto-a'")
    if report.get("texts") != [TEXT]:
        problems.append(f"page's text echoes {report.get('texts')!r} != [{TEXT!r}]")
    if report.get("binaries") != [list(range(256))]:
        problems.append(f"page's binary echoes {report.get('binaries')!r} != [bytes 0..255]")
    if report.get("close") != {"code": 4000, "reason": "bye", "wasClean": True}:
        problems.append(f"page's close event {report.get('close')!r} != code 4000, reason 'bye', wasClean")
    if "error" in report.get("events", []):
        problems.append(f"page saw an error event: {report.get('events')}")

    # What the browser sent (seen by the tap) and what the bot saw.
    client_head, relay_answer = tap.heads(0) if tap.connections else (b"", b"")
    client_headers = head_headers(client_head)
    client_key = header_value(client_headers, "sec-websocket-key")
    if not client_key:
        problems.append(f"the tap saw no Sec-WebSocket-Key from the browser: {client_head!r}")
    if len(bot.requests) != 1:
        problems.append(f"bot saw {len(bot.requests)} handshake request(s), expected 1")
    if bot.requests:
        request = bot.requests[0]
        h = request.headers
        if request.path != f"/ws?body={BODY}":
            problems.append(f"bot's request target {request.path!r} != '/ws?body={BODY}' (byte for byte)")
        if h.get("Origin") != origin:
            problems.append(f"bot saw Origin {h.get('Origin')!r}, not the page's {origin!r}")
        ua = h.get("User-Agent") or ""
        if ua_marker not in ua or ua != header_value(client_headers, "user-agent"):
            problems.append(f"bot saw User-Agent {ua!r}, not the browser's "
                            f"{header_value(client_headers, 'user-agent')!r}")
        if "upgrade" not in tokens(h.get("Connection")):
            problems.append(f"bot's Connection header {h.get('Connection')!r} lacks Upgrade")
        keys = h.get_all("Sec-WebSocket-Key")
        if len(keys) != 1 or (client_key and client_key in keys):
            problems.append(f"bot saw Sec-WebSocket-Key {keys!r} (the browser's is {client_key!r}): "
                            "it must be the relay's own, once")
        extensions = h.get_all("Sec-WebSocket-Extensions")
        if extensions:
            problems.append(f"bot saw the browser's Sec-WebSocket-Extensions {extensions}")
        if h.get("Sec-WebSocket-Protocol") != "proto-a":
            problems.append(f"bot saw Sec-WebSocket-Protocol {h.get('Sec-WebSocket-Protocol')!r}, not the "
                            "page's offer 'proto-a'")
        if h.get_all("X-Forwarded-For") != ["127.0.0.1"]:
            problems.append(f"bot saw X-Forwarded-For {h.get_all('X-Forwarded-For')!r}")
        try:
            uuid.UUID(h.get("X-Session-Id") or "")
        except ValueError:
            problems.append(f"bot saw X-Session-Id {h.get('X-Session-Id')!r}, not a UUID")
    if bot.messages != [TEXT, bytes(range(256))]:
        problems.append(f"bot received {bot.messages!r}, expected the text then bytes 0..255")
    if bot.closes != [(4000, "bye")]:
        problems.append(f"bot's received close(s) {bot.closes!r} != [(4000, 'bye')]")
    if not relay_answer.startswith(b"HTTP/1.1 101") or b"proto-a" not in relay_answer:
        problems.append(f"the relay's answer to the browser is not a 101 with 'proto-a': {relay_answer!r}")

    assert not problems, ("\n".join(problems) + context
                          + f"\nbrowser's request head: {client_head.decode('latin-1')}"
                          + f"\nrelay's answer head: {relay_answer.decode('latin-1')}"
                          + (f"\nbot's request headers: {list(bot.requests[0].headers.raw_items())}"
                             if bot.requests else ""))


@pytest.mark.timeout(960)       # covers a first-time apt-get install; the session itself is bounded below
def test_headless_chromium_through_the_relay_to_an_origin_checking_bot(tmp_path):
    debian_binary("chromium", "chromium")
    report, bot, tap, log = _browser_session(launch_chromium, tmp_path)
    page_origin = bot.origins[0]
    _check_browser_session(report, bot, tap, log, ua_marker="Chrome/", origin=page_origin)


@pytest.mark.timeout(960)
def test_headless_firefox_through_the_relay_to_an_origin_checking_bot(tmp_path):
    debian_binary("firefox-esr", "firefox-esr")
    report, bot, tap, log = _browser_session(launch_firefox, tmp_path)
    page_origin = bot.origins[0]
    _check_browser_session(report, bot, tap, log, ua_marker="Firefox/", origin=page_origin)


# -- (b) wscat against the embedded demo ---------------------------------------------------------

@pytest.fixture
def wscat():
    try:
        return wscat_binary()
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        pytest.fail(str(exc))


@contextlib.contextmanager
def demo_relay(tmp_path):
    """``wsrelay serve --admin-port 0 --port <free>``: the embedded echo demo, no config file."""
    relay = DemoRelay(tmp_path)
    try:
        relay.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield relay
    finally:
        relay.stop()


@pytest.mark.timeout(60)
def test_wscat_readme_one_shot_gets_the_echo_and_no_error(wscat, tmp_path):
    # Exactly the README's usage shape, with wscat found on PATH.
    with demo_relay(tmp_path) as relay:
        command = f"sleep 3 | wscat -c ws://127.0.0.1:{relay.port}/ws/generic/echo.demo -x hi -w 1"
        result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30,
                                env=env_with_wscat(wscat), stdin=subprocess.DEVNULL)
    output = result.stdout + result.stderr
    assert "hi" in result.stdout.splitlines(), f"no echo: {output!r}\nrelay log:\n{relay.log()}"
    assert "error" not in output.lower(), f"wscat printed an error: {output!r}\nrelay log:\n{relay.log()}"
    assert result.returncode == 0, f"wscat exited {result.returncode}: {output!r}"


@pytest.mark.timeout(60)
def test_wscat_interactive_lines_are_echoed_and_end_of_input_exits_0(wscat, tmp_path):
    # wscat at a terminal, as a user runs it: wait for "Connected", type two lines, each echoed,
    # then end the input (Ctrl-D). (Piped stdin cannot do this reliably: wscat drops lines read
    # before its socket opens, and exits at end of input without waiting for echoes.)
    with demo_relay(tmp_path) as relay:
        session = PtyProcess([wscat, "--no-color", "-c", f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo"],
                             env_with_wscat(wscat))
        try:
            def transcript():
                return session.output.decode(errors="replace") + f"\nrelay log:\n{relay.log()}"
            assert session.read_until(b"Connected", 15), f"wscat did not connect: {transcript()}"
            for line in (b"one", b"two"):
                session.write(line + b"\r")
                assert session.read_until(b"< " + line, 10), f"no echo of {line!r}: {transcript()}"
            session.write(b"\x04")                       # end of input
            try:
                returncode = session.proc.wait(10)
            except subprocess.TimeoutExpired:
                pytest.fail(f"wscat did not exit at end of input: {transcript()}")
            session.drain(0.3)
            assert "error" not in session.output.decode(errors="replace").lower(), transcript()
            assert returncode == 0, f"wscat exited {returncode}: {transcript()}"
        finally:
            session.close()


# -- (c) raw request heads that real clients send -----------------------------------------------

def _head(path: str, key: str, connection: str, eol: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: raw-socket-test/1.0",
             "Upgrade: websocket", f"Connection: {connection}", f"Sec-WebSocket-Key: {key}",
             "Sec-WebSocket-Version: 13", "Origin: http://example.test"]
    return (eol.join(lines) + eol + eol).encode()


HEADS = {
    # Firefox up to v122 sent this; the relay and its WebSocket layer must both accept it.
    "connection-keep-alive-upgrade": {"connection": "keep-alive, Upgrade", "eol": "\r\n"},
    # Bare LF line endings (RFC 9112 §2.2 lets a recipient accept them; the relay's parser does).
    "lf-only-line-endings": {"connection": "Upgrade", "eol": "\n"},
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("variant", list(HEADS))
def test_raw_client_head_gets_101_and_frames_flow(variant, pump):
    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        writer = None
        try:
            key = base64.b64encode(os.urandom(16)).decode()
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(_head("/ws/generic/echo.demo", key, **HEADS[variant]))
            await writer.drain()
            head = await read_head(reader, 10)
            status_line = head.split(b"\r\n", 1)[0]
            assert re.match(rb"HTTP/1\.1 101\b", status_line), \
                (f"{variant}: the relay answered {head!r} within 10 s "
                 f"(the bot was contacted {len(bot.requests)} time(s))")
            headers = head_headers(head)
            assert header_value(headers, "sec-websocket-accept") == accept_for(key), head
            assert "websocket" in tokens(header_value(headers, "upgrade")), head
            assert "upgrade" in tokens(header_value(headers, "connection")), head

            payload = "relayed text ✓".encode()
            writer.write(masked_frame(0x1, payload))
            await writer.drain()
            fin, opcode, masked, echoed = await read_frame(reader, 10)
            assert (fin, opcode, masked, echoed) == (True, 0x1, False, payload)
            session = await bot.session()
            assert [f.payload for f in session.data_frames()] == [payload]

            writer.write(masked_frame(0x8, (1000).to_bytes(2, "big") + b"done"))
            await writer.drain()
            fin, opcode, masked, close = await read_frame(reader, 10)
            assert (opcode, masked, close) == (0x8, False, (1000).to_bytes(2, "big") + b"done")
            assert await asyncio.wait_for(reader.read(), 10) == b""     # then the relay closes
        finally:
            if writer is not None:
                writer.close()
            await relay.stop()
            bot.close()
    arun(main(), timeout=25)


# -- (d) the start API from a browser page on another origin (CORS; docs/tokens.md) --
#
# A page served from http://127.0.0.1:<page port> calls POST /v1/public/echo/start on the relay
# (another port, so another origin) with "Authorization: Bearer <public key>" and a JSON body:
# neither is CORS-safelisted, so the browser itself sends an OPTIONS preflight first, and lets
# the page read the answer only if the relay allows the page's origin ([relay] cors_origins).
# Everything passes through a byte-for-byte tap, so the test sees the preflight the browser
# really sent and what the relay answered.

from urllib.parse import parse_qsl, quote  # noqa: E402  (kept with the tests that use it)

from real_clients import exchanges_seen  # noqa: E402

CORS_PUBLIC_KEY = "pk_test_123"
CORS_REQUEST_BODY = {"hello": "world", "note": "x>>>???"}
# What the relay returns as "body": standard base64 of the compact JSON, with '+', '/' and '='
# in it, so the page's encodeURIComponent and the relay's forwarding are both exercised.
CORS_BODY_B64 = base64.b64encode(json.dumps(CORS_REQUEST_BODY, separators=(",", ":")).encode()).decode()
assert "+" in CORS_BODY_B64 and "/" in CORS_BODY_B64 and CORS_BODY_B64.endswith("=")
CORS_TEXT = "hi"

BROWSERS = {
    "chromium": (launch_chromium, "chromium", "chromium"),
    "firefox": (launch_firefox, "firefox-esr", "firefox-esr"),
}


def _cors_relay_config(bot_url: str, cors_origins: tuple[str, ...]):
    from dataclasses import replace

    from wsrelay.config import AuthConfig
    config = relay_config({"echo.demo": [bot_url]}, cors_origins=cors_origins)
    agent = replace(config.agents[0], websocket_auth="token", public_keys=(CORS_PUBLIC_KEY,))
    return replace(config, agents=(agent,),
                   auth=AuthConfig(keys={"k1": "secret-0123456789"}, active_key="k1"))


def _cors_browser_session(launch, tmp_path, *, allowed_origin=None):
    """Run the start-API page in a browser against tap → relay → Origin-checking echo bot.

    ``allowed_origin`` None: the page's own origin is the relay's one cors_origins entry;
    else that origin is (and the page's is not). Returns (report, bot, relay rejections,
    the tap's exchanges, page origin, browser log tail).
    """
    try:
        pump_selector.load("cython")
    except ImportError as exc:
        pytest.fail(f"compiled pump missing: {exc}")
    page = PageServer().start()

    async def main():
        # No sub-protocol: the page offers none (a websockets server that lists one refuses that).
        bot = await OriginCheckingBot([page.origin], subprotocols=()).start()
        origins = (allowed_origin or page.origin,)
        relay = await start_relay(_cors_relay_config(bot.url, origins), "cython")
        tap = await Tap(relay.port).start()
        page.set_start_api_page(f"http://127.0.0.1:{tap.port}/v1/public/echo/start", CORS_PUBLIC_KEY,
                                {"transport": "websocket", "body": CORS_REQUEST_BODY}, CORS_TEXT,
                                PAGE_TIMEOUT_MS)
        proc, log_path = None, tmp_path / "no-browser.log"
        try:
            proc, log_path = launch(f"{page.origin}/", tmp_path)
            report = await asyncio.to_thread(page.wait_report, REPORT_TIMEOUT)
            for _ in range(30):                   # the bot's handler records the close it got
                if bot.closes or not bot.requests:
                    break
                await asyncio.sleep(0.1)
        finally:
            await asyncio.to_thread(kill_process_tree, proc)
            tap.close()
            await relay.stop()
            await bot.close()
        exchanges = [(_head_of(up), _head_of(down), down) for up, down in exchanges_seen(tap)]
        return report, bot, dict(relay.rejections), exchanges, page.origin, tail(log_path)

    try:
        return arun(main(), timeout=REPORT_TIMEOUT + 45)
    finally:
        page.close()


def _describe(report, exchanges, rejections, browser_log) -> str:
    lines = [f"\npage report: {json.dumps(report, ensure_ascii=False)}", f"relay rejections: {rejections}",
             "exchanges seen by the tap:"]
    for up, down, raw_down in exchanges:
        lines.append("  >> " + up.decode("latin-1").replace("\r\n", "\n     "))
        lines.append("  << " + down.decode("latin-1").replace("\r\n", "\n     "))
        if not down.startswith(b"HTTP/1.1 101"):
            lines.append("     (body) " + raw_down[len(down) + 4:][:300].decode("latin-1"))
    lines.append(f"browser log tail:\n{browser_log[-1500:]}")
    return "\n".join(lines)


def _head_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def _status_line(head: bytes) -> str:
    return head.split(b"\r\n", 1)[0].decode("latin-1")


def _method_and_target(head: bytes) -> tuple[str, str]:
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    return (parts[0], parts[1]) if len(parts) >= 2 else ("", "")


@pytest.mark.timeout(960)       # covers a first-time apt-get install; the session itself is bounded
@pytest.mark.parametrize("browser", list(BROWSERS))
def test_cors_page_on_an_allowed_origin_starts_a_session_and_talks_to_the_bot(browser, tmp_path):
    launch, binary, package = BROWSERS[browser]
    debian_binary(binary, package)
    report, bot, rejections, exchanges, origin, log = _cors_browser_session(launch, tmp_path)
    context = _describe(report, exchanges, rejections, log)
    if report is None:
        pytest.fail(f"no report from the page within {REPORT_TIMEOUT}s{context}")
    problems = []

    # The browser preflighted, the relay allowed it, then the POST, then the upgrade.
    calls = [_method_and_target(up) for up, _, _ in exchanges]
    start_path = "/v1/public/echo/start"
    if [c for c in calls if c[1] == start_path] != [("OPTIONS", start_path), ("POST", start_path)]:
        problems.append(f"the browser's requests to the start API were {calls}, not a preflight then a POST")
    for up, down, _ in exchanges:
        method, target = _method_and_target(up)
        req, ans = head_headers(up), head_headers(down)
        if method == "OPTIONS":
            if header_value(req, "origin") != origin:
                problems.append(f"preflight Origin {header_value(req, 'origin')!r} != {origin!r}")
            if header_value(req, "access-control-request-method") != "POST":
                problems.append(f"preflight asked for {header_value(req, 'access-control-request-method')!r}")
            if tokens(header_value(req, "access-control-request-headers")) != {"authorization", "content-type"}:
                problems.append("preflight Access-Control-Request-Headers "
                                f"{header_value(req, 'access-control-request-headers')!r}")
            if not down.startswith(b"HTTP/1.1 204"):
                problems.append(f"preflight answered {_status_line(down)!r}, not 204")
            if header_value(ans, "access-control-allow-origin") != origin:
                problems.append(f"preflight Access-Control-Allow-Origin "
                                f"{header_value(ans, 'access-control-allow-origin')!r} != {origin!r}")
            if "post" not in tokens(header_value(ans, "access-control-allow-methods")):
                problems.append(f"preflight Access-Control-Allow-Methods "
                                f"{header_value(ans, 'access-control-allow-methods')!r}")
            if not {"authorization", "content-type"} <= tokens(header_value(ans, "access-control-allow-headers")):
                problems.append(f"preflight Access-Control-Allow-Headers "
                                f"{header_value(ans, 'access-control-allow-headers')!r}")
        elif method == "POST":
            if header_value(req, "origin") != origin:
                problems.append(f"POST Origin {header_value(req, 'origin')!r} != {origin!r}")
            if not down.startswith(b"HTTP/1.1 200"):
                problems.append(f"POST answered {_status_line(down)!r}, not 200")
            if header_value(ans, "access-control-allow-origin") != origin:
                problems.append(f"POST answer's Access-Control-Allow-Origin "
                                f"{header_value(ans, 'access-control-allow-origin')!r} != {origin!r}")
        elif method == "GET" and target.startswith("/ws/"):
            if not down.startswith(b"HTTP/1.1 101"):
                problems.append(f"the upgrade was answered {_status_line(down)!r}, not 101")

    # What the page got: the start answer, then its own echo and a clean 1000.
    fetch, start = report.get("fetch") or {}, report.get("start") or {}
    if not fetch.get("ok") or fetch.get("status") != 200:
        problems.append(f"the page's fetch did not succeed with 200: {fetch}")
    if not start.get("token"):
        problems.append(f"no token in the start answer the page read: {start}")
    if start.get("body") != CORS_BODY_B64:
        problems.append(f"start answer's body {start.get('body')!r} != {CORS_BODY_B64!r}")
    if not str(start.get("wsUrl", "")).endswith("/ws/generic/echo.demo"):
        problems.append(f"start answer's wsUrl {start.get('wsUrl')!r}")
    try:
        uuid.UUID(start.get("sessionId") or "")
    except ValueError:
        problems.append(f"start answer's sessionId {start.get('sessionId')!r} is not a UUID")
    if report.get("texts") != [CORS_TEXT]:
        problems.append(f"the page's echoes {report.get('texts')!r} != [{CORS_TEXT!r}]")
    if report.get("close") != {"code": 1000, "reason": "", "wasClean": True}:
        problems.append(f"the page's close event {report.get('close')!r} != a clean 1000")
    if "error" in report.get("events", []):
        problems.append(f"the page saw an error event: {report.get('events')}")

    # What the bot saw: the body byte for byte (as the page encoded it), the session id, the
    # page's Origin, and never the token.
    if len(bot.requests) != 1:
        problems.append(f"the bot saw {len(bot.requests)} handshake request(s), expected 1")
    else:
        request = bot.requests[0]
        expected_path = "/ws?body=" + quote(CORS_BODY_B64, safe="")        # encodeURIComponent
        if request.path != expected_path:
            problems.append(f"bot's request target {request.path!r} != {expected_path!r} (byte for byte)")
        query = dict(parse_qsl(request.path.partition("?")[2], keep_blank_values=True))
        if query.get("body") != start.get("body"):
            problems.append(f"bot's body, URL-decoded, {query.get('body')!r} != the start answer's "
                            f"{start.get('body')!r}")
        if request.headers.get("X-Session-Id") != start.get("sessionId"):
            problems.append(f"bot's X-Session-Id {request.headers.get('X-Session-Id')!r} != the start "
                            f"answer's sessionId {start.get('sessionId')!r}")
        if request.headers.get("Origin") != origin:
            problems.append(f"bot saw Origin {request.headers.get('Origin')!r}, not {origin!r}")
        token = start.get("token") or "\0"
        if token in request.path or any(token in v for _, v in request.headers.raw_items()):
            problems.append("the token reached the bot")
        if "Authorization" in request.headers:
            problems.append(f"bot saw Authorization {request.headers.get('Authorization')!r}")
    if bot.messages != [CORS_TEXT]:
        problems.append(f"the bot received {bot.messages!r}, expected [{CORS_TEXT!r}]")
    if bot.closes != [(1000, "")]:
        problems.append(f"the bot's received close(s) {bot.closes!r} != [(1000, '')]")
    if rejections:
        problems.append(f"the relay refused something: {rejections}")
    assert not problems, "\n".join(problems) + context


@pytest.mark.timeout(960)
@pytest.mark.parametrize("browser", list(BROWSERS))
def test_cors_page_on_another_origin_is_refused_at_the_preflight(browser, tmp_path):
    launch, binary, package = BROWSERS[browser]
    debian_binary(binary, package)
    report, bot, rejections, exchanges, origin, log = _cors_browser_session(
        launch, tmp_path, allowed_origin="https://app.example.com")
    context = _describe(report, exchanges, rejections, log)
    if report is None:
        pytest.fail(f"no report from the page within {REPORT_TIMEOUT}s{context}")
    problems = []
    fetch = report.get("fetch") or {}
    if fetch.get("ok") is not False or fetch.get("name") != "TypeError":
        problems.append(f"the page's fetch did not fail with a TypeError (CORS): {fetch}")
    if report.get("start") is not None or report.get("wsUrl") is not None:
        problems.append(f"the page got a start answer / opened a WebSocket: {report.get('start')}")
    # The browser sent only the preflight, the relay refused it with 403 and no
    # Access-Control-Allow-Origin, and so no POST was made and no token minted.
    calls = [_method_and_target(up) for up, _, _ in exchanges]
    if calls != [("OPTIONS", "/v1/public/echo/start")]:
        problems.append(f"the browser's requests were {calls}, expected only the preflight")
    for up, down, _ in exchanges:
        if not down.startswith(b"HTTP/1.1 403"):
            problems.append(f"{_method_and_target(up)} answered {_status_line(down)!r}, not 403")
        if header_value(head_headers(down), "access-control-allow-origin") is not None:
            problems.append(f"a refused preflight carries Access-Control-Allow-Origin: {down!r}")
        if header_value(head_headers(up), "origin") != origin:
            problems.append(f"preflight Origin {header_value(head_headers(up), 'origin')!r} != {origin!r}")
    if rejections != {403: 1}:
        problems.append(f"the relay's rejections {rejections} != {{403: 1}} (the refused preflight)")
    if bot.requests:
        problems.append(f"the bot was contacted {len(bot.requests)} time(s)")
    assert not problems, "\n".join(problems) + context
