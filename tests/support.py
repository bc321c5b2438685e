"""Real peers for the tests: recording bots and clients on picows, a relay on 127.0.0.1.

Nothing here imitates wsrelay: the bots and clients are ordinary picows/websockets
peers, the relay is the real one listening on a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import struct
import subprocess
from dataclasses import dataclass, replace

import pytest
import uvloop
from picows import WSListener, WSMsgType, WSUpgradeResponse, WSUpgradeResponseWithListener, ws_connect, ws_create_server

from wsrelay.config import AgentConfig, Config, RelayConfig
from wsrelay.edge.relay import Relay


# cibuildwheel's containers install [tool.cibuildwheel] test-requires (pyproject.toml), not the
# whole [test] extra, and say so with this variable (its test-environment).
TEST_REQUIRES_ONLY = os.environ.get("WSRELAY_TEST_REQUIRES") == "cibuildwheel"


def needs_test_extra(module: str) -> None:
    """Before importing ``module``, which is in the [test] extra but not in cibuildwheel's
    test-requires (pipecat-ai, kubernetes-validate: no wheels for every platform built there).

    In cibuildwheel's test venv a missing ``module`` skips the test (or the test module); anywhere
    else this does nothing, so under ``make test`` the import that follows fails loudly.
    """
    if TEST_REQUIRES_ONLY:
        pytest.importorskip(module, reason=f"{module} is in the [test] extra, not in cibuildwheel's "
                                           "test-requires")


def arun(coro, timeout: float = 60):
    """Run ``coro`` on a fresh uvloop with a deadline (every wait is bounded)."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return uvloop.run(bounded())


@dataclass
class Frame:
    """A frame as one side saw it."""

    msg_type: int
    payload: bytes
    fin: bool = True
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False

    @classmethod
    def of(cls, frame) -> "Frame":
        return cls(int(frame.msg_type), frame.get_payload_as_bytes(), bool(frame.fin),
                   bool(frame.rsv1), bool(frame.rsv2), bool(frame.rsv3))


def send_frame(transport, f: Frame) -> None:
    if f.msg_type == WSMsgType.CLOSE:
        transport.send(WSMsgType.CLOSE, f.payload)
    else:
        transport.send(WSMsgType(f.msg_type), f.payload, f.fin, f.rsv1, f.rsv2, f.rsv3)


async def wait_until(predicate, changed: asyncio.Event, timeout: float) -> None:
    """Wait until ``predicate()`` holds, checking it again each time ``changed`` is set."""
    async def loop():
        while not predicate():
            changed.clear()
            await changed.wait()
    await asyncio.wait_for(loop(), timeout)


class Recorder(WSListener):
    """Records every frame and the disconnect; optionally echoes or replies to close."""

    def __init__(self, *, echo: bool = False, reply_close: bool = True, on_connect=None) -> None:
        self.frames: list[Frame] = []
        self.transport = None
        self.echo = echo
        self.reply_close = reply_close
        self.on_connect = on_connect
        self.changed = asyncio.Event()
        self.disconnected = asyncio.Event()
        self.request = None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        if self.on_connect is not None:
            self.on_connect(transport)

    def on_ws_frame(self, transport, frame) -> None:
        f = Frame.of(frame)
        self.frames.append(f)
        self.changed.set()
        if f.msg_type == WSMsgType.CLOSE:
            if self.reply_close and not transport.is_close_frame_sent:
                transport.send(WSMsgType.CLOSE, f.payload)
            return
        if self.echo and f.msg_type not in (WSMsgType.PING, WSMsgType.PONG):
            send_frame(transport, f)

    def on_ws_disconnected(self, transport) -> None:
        self.disconnected.set()
        self.changed.set()

    def data_frames(self) -> list[Frame]:
        return [f for f in self.frames if f.msg_type != WSMsgType.CLOSE]

    def close_frames(self) -> list[Frame]:
        return [f for f in self.frames if f.msg_type == WSMsgType.CLOSE]

    async def wait_for(self, predicate, timeout: float = 10) -> None:
        await wait_until(predicate, self.changed, timeout)

    async def wait_frames(self, n: int, timeout: float = 10) -> list[Frame]:
        await self.wait_for(lambda: len(self.frames) >= n or self.disconnected.is_set(), timeout)
        return self.frames


class Bot:
    """A picows bot server recording its sessions (one Recorder per connection)."""

    def __init__(self, *, echo: bool = False, on_connect=None, reply_close: bool = True,
                 status: int | None = None, subprotocol_choice=None, auto_pong: bool = False) -> None:
        self.echo = echo
        self.auto_pong = auto_pong
        self.on_connect = on_connect
        self.reply_close = reply_close
        self.status = status
        self.subprotocol_choice = subprotocol_choice
        self.sessions: list[Recorder] = []
        self.requests = []
        self.connected = asyncio.Event()
        self.server = None

    def _factory(self, request):
        self.requests.append(request)
        if self.status is not None:
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(self.status, b"bot says no"), None)
        rec = Recorder(echo=self.echo, reply_close=self.reply_close, on_connect=self.on_connect)
        rec.request = request
        self.sessions.append(rec)
        self.connected.set()
        extra = None
        if self.subprotocol_choice is not None:
            offered = request.headers.get("Sec-WebSocket-Protocol")
            chosen = self.subprotocol_choice(offered)
            if chosen:
                extra = {"Sec-WebSocket-Protocol": chosen}
        return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(extra), rec)

    async def start(self) -> "Bot":
        self.server = await ws_create_server(self._factory, "127.0.0.1", 0, enable_auto_pong=self.auto_pong,
                                             max_frame_size=64 * 1024 * 1024, use_aiofastnet=False)
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/bot"

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    async def session(self, timeout: float = 5) -> Recorder:
        await asyncio.wait_for(self.connected.wait(), timeout)
        return self.sessions[-1]

    def close(self) -> None:
        self.server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relay_config(upstreams_by_agent: dict[str, list[str]], **relay_overrides) -> Config:
    agents = []
    for sh, ups in upstreams_by_agent.items():
        name, org = sh.rsplit(".", 1)
        agents.append(AgentConfig(name, org, tuple(ups)))
    relay = replace(RelayConfig(host="127.0.0.1", port=0, admin_port=0), **relay_overrides)
    return Config(relay=relay, agents=tuple(agents))


async def start_relay(config: Config, pump: str) -> Relay:
    relay = Relay(config, pump=pump)
    await relay.start()
    return relay


async def relayed_session(pump: str):
    """A bot, a relay in front of it (agent echo.demo) and one client session through it:
    (bot, relay, client transport, client recorder, bot recorder)."""
    bot = await Bot().start()
    relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
    client, client_rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
    bot_rec = await bot.session()
    return bot, relay, client, client_rec, bot_rec


async def connect_client(url: str, *, subprotocols: str | None = None, headers=None,
                         listener: Recorder | None = None, auto_pong: bool = False):
    """A picows client; returns (transport, recorder)."""
    rec = listener or Recorder()
    extra = dict(headers or {})
    if subprotocols:
        extra["Sec-WebSocket-Protocol"] = subprotocols
    transport, listener = await ws_connect(lambda: rec, url, enable_auto_pong=auto_pong, extra_headers=extra,
                                           max_frame_size=64 * 1024 * 1024, use_aiofastnet=False,
                                           websocket_handshake_timeout=10)
    if listener is None:
        # picows returns, rather than raises, when the server closes the connection during
        # the handshake (a relay out of descriptors accepts and drops connections so).
        raise ConnectionError(f"{url}: the server closed the connection during the handshake")
    return transport, rec


async def raw_request(port: int, data: bytes, *, read_timeout: float = 10) -> bytes:
    """Send raw bytes to the relay and read until it closes; for hostile-input tests."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(65536), read_timeout)
    finally:
        writer.close()


async def admin_request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
                        ) -> tuple[int, dict[str, str], bytes]:
    """One request to an admin port: (status, lower-cased headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {path} HTTP/1.1", "Host: admin.test", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields, body


async def metrics_text(port: int, headers: dict[str, str] | None = None) -> str:
    """The /metrics body of an admin port."""
    status, _, body = await admin_request(port, "GET", "/metrics", headers)
    assert status == 200, body[:200]
    return body.decode()


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A client frame: masked, as RFC 6455 requires from clients."""
    mask = mask if mask is not None else os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, n)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def upgrade_head(path: str, *, extra: str = "", host: str = "relay.test") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


def status_of(response: bytes) -> int:
    line = response.split(b"\r\n", 1)[0]
    return int(line.split(b" ")[1])


class RelayProcess:
    """A real ``wsrelay serve`` process (for RSS, signals and the CLI)."""

    def __init__(self, config_text: str, tmp_path, *, pump: str = "cython", args=(), env=None) -> None:
        import subprocess
        import sys
        self.path = tmp_path / "relay.toml"
        self.path.write_text(config_text)
        environment = dict(os.environ)
        environment.update(env or {})
        if pump == "python":
            environment["WSRELAY_PURE_PYTHON"] = "1"
        else:
            environment.pop("WSRELAY_PURE_PYTHON", None)
        self.log_path = tmp_path / "relay.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "wsrelay", "serve", "--config", str(self.path),
                                      "--log-format", "json", *args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=environment)

    async def wait_port(self, port: int, timeout: float = 15) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}: {self.log()}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def rss(self) -> int:
        import psutil
        return psutil.Process(self.proc.pid).memory_info().rss

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        import signal
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class RedisServer:
    """A real ``redis-server`` on a free loopback port, no persistence; for shared nonces.

    Installed from Debian's packages when missing (as root), like the benchmark's nginx:
    the suite must run on a fresh machine. Missing and not installable is a failure.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        import time
        binary = debian_binary("redis-server", "redis-server")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not listen on {self.port} within 10 s")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


_apt_updated = False

# Every Debian package a test may install (.github/workflows/ci.yml installs them all up front;
# tests/test_ci_files.py checks its apt-get line names each one).
DEBIAN_PACKAGES = ("redis-server", "chromium", "firefox-esr", "npm")

# Set by conftest.py before each test's fixtures are set up: whether the test is marked
# ``system``. None outside pytest (no check).
current_test_is_system: bool | None = None


def debian_binary(binary: str, package: str) -> str:
    """The path of ``binary``; installs Debian's ``package`` when it is missing (as root).

    Missing and not installable is an error (the caller's test fails), never a skip. Only a
    test marked ``system`` may call it, even where the binary is already there: cibuildwheel's
    containers run the suite with ``-m "not system"`` and have no apt-get.
    """
    global _apt_updated
    if current_test_is_system is False:
        raise RuntimeError(f"a test that needs Debian's {package} must be marked @pytest.mark.system "
                           "(cibuildwheel's containers deselect those: they have no apt-get)")
    if package not in DEBIAN_PACKAGES:
        raise RuntimeError(f"{package} is not in support.DEBIAN_PACKAGES: add it there and to the "
                           "apt-get line of .github/workflows/ci.yml")
    path = shutil.which(binary)
    if path:
        return path
    log = []
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        lock = ["-o", "DPkg::Lock::Timeout=120"]
        try:
            if not _apt_updated:
                r = subprocess.run(["apt-get", *lock, "update", "-qq"], capture_output=True, text=True,
                                   env=env, timeout=240)
                log.append(f"apt-get update: exit {r.returncode}: {r.stderr[-2000:]}")
                _apt_updated = r.returncode == 0
            r = subprocess.run(["apt-get", *lock, "install", "-y", "-qq", package],
                               capture_output=True, text=True, env=env, timeout=600)
            log.append(f"apt-get install {package}: exit {r.returncode}: {r.stderr[-2000:]}")
        except subprocess.TimeoutExpired as exc:
            log.append(f"timed out: {exc}")
    else:
        log.append("not root or no apt-get")
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} is not installed and could not be installed "
                           f"(apt-get install {package}): " + "; ".join(log))
    return path
