"""Real clients nobody here wrote, driven against the relay: browsers, wscat, raw sockets.

* Headless Chromium and Firefox from Debian's packages (installed when missing, as root),
  driven without a WebDriver: they load a page from a small local HTTP server whose script
  opens the WebSocket, and post a JSON report of what they received back to that server.
* ``wscat`` from npm, installed under the repository's ``.cache/npm-tools`` when missing.
* A byte-for-byte TCP tap (records what a browser really sent, forwards it unchanged).
* A third-party bot: the ``websockets`` library's server, checking ``Origin``.
* Raw WebSocket frames built by hand, for clients with unusual request heads.

Everything is bounded: installs, process starts, reads and waits have explicit timeouts,
and every process started here is killed (by its process group and its own descendants).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from support import debian_binary

REPO = Path(__file__).resolve().parent.parent
NPM_TOOLS = REPO / ".cache" / "npm-tools"          # not part of the package; see .gitignore
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- installing the real clients ---------------------------------------------------------

def wscat_binary() -> str:
    """``wscat`` from PATH, else from ``.cache/npm-tools`` (``npm install`` there when missing)."""
    path = shutil.which("wscat")
    if path:
        return path
    local = NPM_TOOLS / "node_modules" / ".bin" / "wscat"
    if local.exists():
        return str(local)
    npm = shutil.which("npm")
    if npm is None:
        # npm comes with Debian's nodejs packaging as a separate package.
        npm = debian_binary("npm", "npm")
    NPM_TOOLS.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([npm, "install", "--prefix", str(NPM_TOOLS), "--no-audit", "--no-fund",
                        "--loglevel", "error", "wscat"], capture_output=True, text=True, timeout=300)
    if not local.exists():
        raise RuntimeError(f"wscat is not installed and `npm install --prefix {NPM_TOOLS} wscat` "
                           f"failed (exit {r.returncode}): {r.stderr[-2000:]}")
    return str(local)


# -- processes ---------------------------------------------------------------------------

def kill_process_tree(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """Kill a process started with ``start_new_session=True``: its group and its descendants."""
    if proc is None:
        return
    descendants = []
    try:
        import psutil
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except Exception:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in descendants:            # any that left the group (e.g. a new session)
        try:
            child.kill()
        except Exception:
            pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def launch_chromium(url: str, tmp: Path) -> tuple[subprocess.Popen, Path]:
    binary = debian_binary("chromium", "chromium")
    profile = tmp / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    log_path = tmp / "chromium.log"
    log = open(log_path, "wb")
    args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-extensions", f"--user-data-dir={profile}", url]
    env = dict(os.environ, HOME=str(tmp))
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    log.close()
    return proc, log_path


FIREFOX_PREFS = {
    "browser.shell.checkDefaultBrowser": False,
    "app.update.enabled": False,
    "app.update.auto": False,
    "app.normandy.enabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "startup.homepage_welcome_url": "",
    "startup.homepage_welcome_url.additional": "",
    "browser.aboutwelcome.enabled": False,
    "browser.startup.firstrunSkipsHomepage": True,
    "browser.newtabpage.enabled": False,
    "extensions.update.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "network.proxy.type": 0,
}


def launch_firefox(url: str, tmp: Path) -> tuple[subprocess.Popen, Path]:
    binary = debian_binary("firefox-esr", "firefox-esr")
    home = tmp / "firefox-home"
    profile = tmp / "firefox-profile"
    home.mkdir(parents=True, exist_ok=True)
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                             for k, v in FIREFOX_PREFS.items()))
    log_path = tmp / "firefox.log"
    log = open(log_path, "wb")
    env = dict(os.environ, HOME=str(home), MOZ_HEADLESS="1", MOZ_CRASHREPORTER_DISABLE="1")
    env.pop("DISPLAY", None)
    proc = subprocess.Popen([binary, "--headless", "--no-remote", "--profile", str(profile), url],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    log.close()
    return proc, log_path


# -- the page and its report -------------------------------------------------------------

PAGE_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsrelay browser test</title></head>
<body><script>
"use strict";
const report = {events: [], texts: [], binaries: [], protocol: null, extensions: null, close: null,
                userAgent: navigator.userAgent};
let posted = false, closing = false;
function post() {
  if (posted) return;
  posted = true;
  fetch("/report", {method: "POST", headers: {"Content-Type": "application/json"},
                    body: JSON.stringify(report)});
}
try {
  const ws = new WebSocket(%(url)s, ["proto-a"]);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => {
    report.events.push("open");
    report.protocol = ws.protocol;
    report.extensions = ws.extensions;
    ws.send(%(text)s);
    const bytes = new Uint8Array(256);
    for (let i = 0; i < 256; i++) bytes[i] = i;
    ws.send(bytes.buffer);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      report.events.push("text");
      report.texts.push(ev.data);
    } else {
      report.events.push("binary");
      report.binaries.push(Array.from(new Uint8Array(ev.data)));
    }
    if (report.texts.length >= 1 && report.binaries.length >= 1 && !closing) {
      closing = true;
      report.events.push("closing");
      ws.close(4000, "bye");
    }
  };
  ws.onerror = () => { report.events.push("error"); };
  ws.onclose = (ev) => {
    report.events.push("close");
    report.close = {code: ev.code, reason: ev.reason, wasClean: ev.wasClean};
    post();
  };
} catch (e) {
  report.events.push("exception: " + e);
  post();
}
setTimeout(() => { report.events.push("page timeout"); post(); }, %(page_timeout_ms)d);
</script></body></html>
"""


START_API_PAGE_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>wsrelay start API test</title></head>
<body><script>
"use strict";
// The platform's browser client flow: POST the start API (cross-origin, with a bearer key and
// JSON, so the browser must preflight it), then connect to wsUrl with ?token= and ?body=.
const report = {origin: location.origin, userAgent: navigator.userAgent, events: [], fetch: null,
                start: null, wsUrl: null, texts: [], close: null};
let posted = false, closing = false;
function post() {
  if (posted) return;
  posted = true;
  fetch("/report", {method: "POST", headers: {"Content-Type": "application/json"},
                    body: JSON.stringify(report)});
}
async function run() {
  let response;
  try {
    response = await fetch(%(start_url)s, {
      method: "POST",
      headers: {"Authorization": "Bearer " + %(public_key)s, "Content-Type": "application/json"},
      body: JSON.stringify(%(request)s)});
  } catch (e) {
    report.fetch = {ok: false, name: e && e.name, error: String(e)};
    post();
    return;
  }
  report.fetch = {ok: true, status: response.status, text: null};
  const text = await response.text();
  report.fetch.text = text;
  let answer;
  try { answer = JSON.parse(text); } catch (e) { report.events.push("answer is not JSON"); post(); return; }
  report.start = answer;
  if (response.status !== 200 || !answer.token) { post(); return; }
  const url = answer.wsUrl + "?token=" + answer.token + "&body=" + encodeURIComponent(answer.body);
  report.wsUrl = url;
  const ws = new WebSocket(url);
  ws.onopen = () => { report.events.push("open"); ws.send(%(text)s); };
  ws.onmessage = (ev) => {
    report.events.push(typeof ev.data === "string" ? "text" : "binary");
    report.texts.push(String(ev.data));
    if (!closing) { closing = true; report.events.push("closing"); ws.close(1000); }
  };
  ws.onerror = () => { report.events.push("error"); };
  ws.onclose = (ev) => {
    report.events.push("close");
    report.close = {code: ev.code, reason: ev.reason, wasClean: ev.wasClean};
    post();
  };
}
run().catch((e) => { report.events.push("exception: " + e); post(); });
setTimeout(() => { report.events.push("page timeout"); post(); }, %(page_timeout_ms)d);
</script></body></html>
"""


class PageServer:
    """Serves the test page on 127.0.0.1 and collects the page's JSON report (a thread)."""

    def __init__(self) -> None:
        self.page = b""
        self.reports: list[dict] = []
        self.requests: list[str] = []
        self._got = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append(f"GET {self.path}")
                if self.path.split("?")[0] in ("/", "/index.html"):
                    self._answer(200, owner.page, "text/html; charset=utf-8")
                else:
                    self._answer(404, b"not here\n", "text/plain")

            def do_POST(self) -> None:
                owner.requests.append(f"POST {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(min(length, 16 * 1024 * 1024))
                if self.path == "/report":
                    try:
                        owner.reports.append(json.loads(data))
                    except ValueError as exc:
                        owner.reports.append({"unparseable": repr(exc), "raw": data[:2000].decode("latin-1")})
                    owner._got.set()
                self._answer(204, b"", "text/plain")

            def _answer(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if body:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_page(self, ws_url: str, text: str, page_timeout_ms: int = 30000) -> None:
        self.page = (PAGE_TEMPLATE % {"url": json.dumps(ws_url), "text": json.dumps(text),
                                      "page_timeout_ms": page_timeout_ms}).encode()

    def set_start_api_page(self, start_url: str, public_key: str, request: dict, text: str,
                           page_timeout_ms: int = 30000) -> None:
        """A page that POSTs ``request`` to the start API at ``start_url``, then opens the
        WebSocket it was given (``wsUrl?token=…&body=…``), sends ``text`` and closes 1000."""
        self.page = (START_API_PAGE_TEMPLATE % {
            "start_url": json.dumps(start_url), "public_key": json.dumps(public_key),
            "request": json.dumps(request), "text": json.dumps(text),
            "page_timeout_ms": page_timeout_ms}).encode()

    def start(self) -> "PageServer":
        self.thread.start()
        return self

    def wait_report(self, timeout: float) -> dict | None:
        self._got.wait(timeout)
        return self.reports[0] if self.reports else None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- a byte-for-byte TCP tap ------------------------------------------------------------------

class Tap:
    """Forwards TCP connections to ``target_port`` unchanged, recording the first bytes each way.

    Lets a test see the request head a browser really sent (its ``Sec-WebSocket-Key``,
    its ``Connection`` header) and the relay's answer, without changing a byte.
    """

    RECORD = 16384

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = None
        self.connections: list[tuple[bytearray, bytearray]] = []

    async def start(self) -> "Tap":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, c_reader, c_writer) -> None:
        up, down = bytearray(), bytearray()
        self.connections.append((up, down))
        try:
            s_reader, s_writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target_port), 10)
        except (OSError, asyncio.TimeoutError):
            c_writer.close()
            return

        async def pipe(reader, writer, record, other_writer):
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    if len(record) < self.RECORD:
                        record += data[: self.RECORD - len(record)]
                    writer.write(data)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, asyncio.IncompleteReadError):
                writer.close()
                other_writer.close()

        try:
            await asyncio.gather(pipe(c_reader, s_writer, up, c_writer),
                                 pipe(s_reader, c_writer, down, s_writer))
        finally:
            c_writer.close()
            s_writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def heads(self, index: int = 0) -> tuple[bytes, bytes]:
        """(the client's request head, the server's response head) of connection ``index``."""
        up, down = self.connections[index]
        return bytes(up).split(b"\r\n\r\n", 1)[0], bytes(down).split(b"\r\n\r\n", 1)[0]


def exchanges_seen(tap: "Tap") -> list[tuple[bytes, bytes]]:
    """What each connection the tap forwarded carried (client → server, server → client), in
    order, each the first ``Tap.RECORD`` bytes; connections that carried nothing are left out.

    The relay answers one plain HTTP request per connection (it closes after answering), so
    each entry is one exchange: a request and its answer, or an upgrade and the frames after.
    """
    return [(bytes(up), bytes(down)) for up, down in tap.connections if up or down]


def head_headers(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")[1:]
    out = []
    for line in lines:
        if ":" in line:
            name, value = line.split(":", 1)
            out.append((name.strip().lower(), value.strip()))
    return out


def header_value(headers: list[tuple[str, str]], name: str) -> str | None:
    values = [v for n, v in headers if n == name.lower()]
    return ", ".join(values) if values else None


def tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


# -- a third-party bot that checks Origin ----------------------------------------------------

class OriginCheckingBot:
    """The ``websockets`` library's asyncio server: checks Origin, offers ``proto-a``, echoes.

    Every handshake request it receives is recorded (also the ones it refuses), with its
    path and headers as the bot saw them.
    """

    def __init__(self, origins: list[str], subprotocols=("proto-a",)) -> None:
        self.origins = origins
        self.subprotocols = list(subprotocols)
        self.requests = []            # websockets.http11.Request
        self.messages: list[str | bytes] = []
        self.closes: list[tuple[int | None, str | None]] = []
        self.server = None

    def _process_request(self, connection, request):
        self.requests.append(request)
        return None

    async def _handler(self, ws) -> None:
        import websockets
        try:
            async for message in ws:
                self.messages.append(message)
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass
        rcvd = ws.protocol.close_rcvd
        self.closes.append((rcvd.code, rcvd.reason) if rcvd is not None else (None, None))

    async def start(self) -> "OriginCheckingBot":
        from websockets.asyncio.server import serve
        self.server = await serve(self._handler, "127.0.0.1", 0, origins=self.origins,
                                  subprotocols=self.subprotocols, process_request=self._process_request,
                                  compression=None)
        return self

    @property
    def url(self) -> str:
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    async def close(self) -> None:
        self.server.close()
        try:
            await asyncio.wait_for(self.server.wait_closed(), 5)
        except asyncio.TimeoutError:
            pass


# -- raw WebSocket frames ------------------------------------------------------------------

def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()


async def read_frame(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[bool, int, bool, bytes]:
    """(fin, opcode, masked, payload) of the next frame."""
    async def read():
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await reader.readexactly(8))[0]
        masked = bool(b1 & 0x80)
        mask = await reader.readexactly(4) if masked else b""
        payload = await reader.readexactly(n)
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return bool(b0 & 0x80), b0 & 0x0F, masked, payload
    return await asyncio.wait_for(read(), timeout)


async def read_head(reader: asyncio.StreamReader, timeout: float = 10) -> bytes:
    """The response head (through the blank line), or whatever arrived before EOF or the deadline."""
    data = bytearray()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while b"\r\n\r\n" not in data:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            chunk = await asyncio.wait_for(reader.read(1), left)
        except (asyncio.TimeoutError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


# -- the demo relay as a user runs it ----------------------------------------------------------

def wsrelay_command() -> list[str]:
    """``wsrelay`` as installed next to this interpreter (the console script), else ``-m``."""
    script = Path(sys.executable).with_name("wsrelay")
    return [str(script)] if script.exists() else [sys.executable, "-m", "wsrelay"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoRelay:
    """``wsrelay serve`` without ``--config`` (the built-in echo demo), on a free port."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.log_path = tmp / "demo-relay.log"
        self.args = [*wsrelay_command(), "serve", "--host", "127.0.0.1", "--port", str(self.port),
                     "--admin-port", "0", "--log-format", "json"]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> "DemoRelay":
        log = open(self.log_path, "wb")
        env = dict(os.environ)
        env.pop("WSRELAY_PURE_PYTHON", None)
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`{' '.join(self.args)}` exited with {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the demo relay did not listen on {self.port} within {timeout}s: "
                                       f"{self.log()}")
                time.sleep(0.05)

    def log(self) -> str:
        return tail(self.log_path, 5000)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                kill_process_tree(self.proc)
        return self.proc.returncode

    def session_ends(self) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("event") == "session_end":
                    out.append(entry)
        return out


def env_with_wscat(wscat: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(wscat).parent) + os.pathsep + env.get("PATH", "")
    env.pop("http_proxy", None)
    env.pop("HTTP_PROXY", None)
    return env


class PtyProcess:
    """A process on a pseudo-terminal, as a user at a terminal runs it."""

    def __init__(self, args: list[str], env: dict) -> None:
        import pty  # noqa: F401  (POSIX only; imported here to fail loudly elsewhere)
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.output = bytearray()

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def read_until(self, needle: bytes, timeout: float) -> bool:
        """Read output until ``needle`` appears (True) or the deadline / EOF (False)."""
        import select
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:          # EIO: the other end is closed
                    return needle in self.output
                if not data:
                    return needle in self.output
                self.output += data
        return True

    def drain(self, timeout: float = 1.0) -> None:
        self.read_until(b"\x00never\x00", timeout)

    def close(self) -> None:
        kill_process_tree(self.proc)
        try:
            os.close(self.master)
        except OSError:
            pass
