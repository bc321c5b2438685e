"""Hostile input over real sockets against the real relay (docs/endpoints.md and docs/architecture.md).

Every test talks to a real relay on 127.0.0.1 through real TCP sockets, with real bots
behind it: a recording picows echo bot (tests/support.py) or, to fuzz the bot's side, a
raw TCP bot that answers a correct 101 and then writes whatever bytes it is given. The
relay and its bots run on a uvloop in a background thread (``RelayEnv``); the hostile
clients are plain sockets in the test's own thread, so the relay is timed and read the
way a separate process would be. No mocks.

What is asserted, whatever the input:

* every refusal is one HTTP answer (``Connection: close``) before any bot is contacted,
  counted once in ``relay.rejections`` and followed by the relay closing the socket;
* an accepted head gives ``101`` with the right ``Sec-WebSocket-Accept`` and exactly one
  bot handshake; nothing ever hangs (every read has a deadline);
* garbage after the upgrade ends the session within a bound, every close frame the relay
  itself writes carries a code that is legal on the wire, and the relay keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import logging
import os
import re
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from picows import WSMsgType

from support import Bot, RelayProcess, arun, connect_client, free_port, relay_config, start_relay, status_of, upgrade_head

ECHO = "/ws/generic/echo.demo"
RAW = "/ws/generic/raw.demo"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# Close codes a peer may put on the wire (RFC 6455 §7.4): never 1004-1006, 1015, < 1000.
WIRE_CODES = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))


# -- the relay and its bots, on a uvloop in a background thread ----------------------------

class RawBot:
    """A TCP bot written by hand: answers a correct 101, then writes ``fuzz`` as its frames.

    After the fuzz it writes a valid close (1000), then reads the relay's frames for
    ``grace`` seconds (answering a close with the same payload) and closes its socket.
    """

    def __init__(self, grace: float = 0.3) -> None:
        self.fuzz = b""
        self.grace = grace
        self.delay = 0.0          # before the 101
        self.sink = False         # no fuzz, no close: record frames until the relay closes
        self.final_close = True   # write a valid close (1000) after the fuzz
        self.connections: list[dict] = []
        self.server = None

    async def start(self) -> "RawBot":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/raw"

    async def _handle(self, reader, writer) -> None:
        record = {"head": None, "frames": [], "done": False, "fuzz": self.fuzz}
        self.connections.append(record)
        loop = asyncio.get_running_loop()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            record["head"] = head
            key = re.search(rb"(?im)^sec-websocket-key:[ \t]*(\S+)", head).group(1)
            await asyncio.sleep(self.delay)
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n")
            if not self.sink:
                writer.write(record["fuzz"])
                if self.final_close:
                    writer.write(ws_frame(0x8, struct.pack("!H", 1000) + b"fuzz done", mask=False))
            await writer.drain()
            buf = bytearray()
            deadline = loop.time() + (10 if self.sink else self.grace)
            while loop.time() < deadline:
                try:
                    data = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
                except TimeoutError:
                    break
                if not data:
                    break
                buf += data
                frames, used = parse_frames(buf)
                del buf[:used]
                record["frames"] += frames
                closes = [f for f in frames if f.opcode == 0x8]
                if closes:
                    writer.write(ws_frame(0x8, closes[0].payload, mask=False))
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.close()
            record["done"] = True


class RelayEnv:
    """A real relay (agent ``echo.demo``: an echo Bot; ``raw.demo``: a RawBot) on its own loop."""

    def __init__(self, pump: str, **relay_overrides) -> None:
        self.pump = pump
        self.overrides = relay_overrides
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "RelayEnv":
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.run(self._stop(), timeout=20)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def _start(self) -> None:
        self.bot = await Bot(echo=True).start()
        self.raw = await RawBot().start()
        config = relay_config({"echo.demo": [self.bot.url], "raw.demo": [self.raw.url]}, **self.overrides)
        self.relay = await start_relay(config, self.pump)
        self.port = self.relay.port

    async def _stop(self) -> None:
        await self.relay.stop()
        self.bot.close()
        self.raw.server.close()

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def state(self, fn):
        """``fn()`` evaluated on the relay's loop (no racing with it)."""
        async def read():
            return fn()
        return self.run(read())

    def rejections(self) -> dict[int, int]:
        return self.state(lambda: dict(self.relay.rejections))

    def bot_requests(self) -> int:
        return self.state(lambda: len(self.bot.requests))

    def wait(self, predicate, timeout: float = 5, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not self.state(predicate):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.01)

    def wait_drained(self, timeout: float = 6) -> None:
        self.wait(lambda: not self.relay.sessions and not self.relay.active, timeout, "relay.sessions to drain")


# -- WebSocket frames, by hand -----------------------------------------------------------------

@dataclass
class WSFrame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes


def accept_for(key: bytes | str) -> bytes:
    if isinstance(key, str):
        key = key.encode("latin-1")
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def key_of(head: bytes) -> str:
    return re.search(rb"Sec-WebSocket-Key: (\S+)", head).group(1).decode()


def ws_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True,
             mask_key: bytes | None = None, length: int | None = None, length_form: str = "min") -> bytes:
    """One frame; ``length``/``length_form`` may lie about or over-spell the payload length."""
    n = len(payload) if length is None else length
    out = bytearray([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)])
    m = 0x80 if mask else 0
    if length_form == "16" or (length_form == "min" and 126 <= n < 65536):
        out += bytes([m | 126]) + struct.pack("!H", n & 0xFFFF)
    elif length_form == "64" or (length_form == "min" and n >= 65536):
        out += bytes([m | 127]) + struct.pack("!Q", n)
    else:
        out += bytes([m | n])
    if mask:
        k = mask_key if mask_key is not None else os.urandom(4)
        out += k
        out += bytes(b ^ k[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return bytes(out)


def parse_frames(buf: bytes | bytearray) -> tuple[list[WSFrame], int]:
    """Complete frames at the start of ``buf`` (masked or not) and the bytes they used."""
    frames, pos = [], 0
    while len(buf) - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        n, p = b1 & 0x7F, pos + 2
        if n == 126:
            if len(buf) - p < 2:
                break
            n, p = struct.unpack_from("!H", buf, p)[0], p + 2
        elif n == 127:
            if len(buf) - p < 8:
                break
            n, p = struct.unpack_from("!Q", buf, p)[0], p + 8
        key = None
        if b1 & 0x80:
            if len(buf) - p < 4:
                break
            key, p = bytes(buf[p:p + 4]), p + 4
        if len(buf) - p < n:
            break
        payload = bytes(buf[p:p + n])
        if key:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        frames.append(WSFrame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0xF, bool(b1 & 0x80), payload))
        pos = p + n
    return frames, pos


def nothing_after_close(kinds: list[int], where: str) -> None:
    """No frame follows a close on the wire (RFC 6455 §5.5.1)."""
    if 0x8 in kinds:
        assert kinds.index(0x8) == len(kinds) - 1, f"{where}: frames after a close: {kinds}"


def close_payloads_in(stream: bytes) -> set[bytes]:
    """Payloads of every close frame a byte stream could be read as holding (a superset)."""
    frames, _ = parse_frames(stream)
    return {f.payload for f in frames if f.opcode == 0x8}


def check_relay_close(payload: bytes, forwarded: set[bytes], where: str) -> None:
    """A close the relay wrote: a forwarded one as sent, else a code legal on the wire."""
    if payload in forwarded:
        return
    assert len(payload) >= 2, f"{where}: the relay sent a close without a status code: {payload!r}"
    code = struct.unpack("!H", payload[:2])[0]
    assert code in WIRE_CODES, f"{where}: the relay sent close code {code} ({payload!r})"
    payload[2:].decode("utf-8")          # a reason must be UTF-8 (raises otherwise)
    assert len(payload) <= 125


# -- a blocking raw client ------------------------------------------------------------------

class RawClient:
    """A TCP client that sends exactly the given bytes and reads with deadlines."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = bytearray()
        self.closed: str | None = None          # "eof" or "reset" once the relay closed

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _recv(self, deadline: float) -> bool:
        """Read once; False on timeout or close."""
        if self.closed:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, socket.timeout):
            return False
        except ConnectionResetError:
            self.closed = "reset"
            return False
        if not data:
            self.closed = "eof"
            return False
        self.buf += data
        return True

    def read_head(self, timeout: float = 5) -> tuple[int | None, dict[str, str]]:
        """The response head (status, lower-cased headers); (None, {}) when none came in time."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if not self._recv(deadline):
                if b"\r\n\r\n" not in self.buf:
                    return None, {}
        end = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = bytes(self.buf[:end]), self.buf[end:]
        self.head = head
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status_of(head), headers

    def read_until_closed(self, timeout: float = 5) -> str | None:
        """Everything until the relay closes; how it closed, or None if it did not in time."""
        deadline = time.monotonic() + timeout
        while not self.closed and time.monotonic() < deadline:
            self._recv(deadline)
        return self.closed

    def read_frames(self, until, timeout: float = 5) -> list[WSFrame]:
        """Frames until ``until(frames)`` is true, the relay closes, or the deadline."""
        deadline = time.monotonic() + timeout
        frames: list[WSFrame] = []
        while True:
            got, used = parse_frames(self.buf)
            del self.buf[:used]
            frames += got
            if until(frames) or not self._recv(deadline):
                got, used = parse_frames(self.buf)
                del self.buf[:used]
                return frames + got

    def close(self) -> None:
        self.sock.close()


def echo_roundtrip(port: int, payload: bytes = b"still here") -> None:
    """A well-behaved client: 101 with the right accept, one echoed frame, a clean close."""
    client = RawClient(port)
    try:
        head = upgrade_head(ECHO)
        assert client.send(head)
        status, headers = client.read_head()
        assert status == 101, f"normal client got {status}"
        assert headers["sec-websocket-accept"].encode() == accept_for(key_of(head))
        client.send(ws_frame(0x1, payload))
        frames = client.read_frames(lambda fs: any(f.opcode == 0x1 for f in fs))
        assert [f.payload for f in frames if f.opcode == 0x1] == [payload]
        client.send(ws_frame(0x8, struct.pack("!H", 1000)))
        frames = client.read_frames(lambda fs: any(f.opcode == 0x8 for f in fs))
        assert [f.payload[:2] for f in frames if f.opcode == 0x8] == [struct.pack("!H", 1000)]
    finally:
        client.close()


def exchange(port: int, chunks: list[bytes], *, gap: float = 0.0, timeout: float = 5):
    """Send ``chunks`` (stopping if the relay closes); return (bytes read, how it closed)."""
    client = RawClient(port)
    try:
        for chunk in chunks:
            if not client.send(chunk):
                break
            if gap:
                time.sleep(gap)
        how = client.read_until_closed(timeout)
        return bytes(client.buf), how
    finally:
        client.close()


def responses_in(data: bytes) -> int:
    return len(re.findall(rb"(?:^|\r\n)HTTP/1\.[01] \d{3} ", data))


# -- 1. slowloris ---------------------------------------------------------------------------------

def test_slowloris_heads_get_408_while_a_normal_client_is_served(pump):
    n_heads, n_bodies, timeout = 50, 10, 1.0
    with RelayEnv(pump, handshake_timeout=timeout) as env:
        head = upgrade_head(ECHO)[:-4]            # never complete, even if sent in full
        # A start-API request whose body trickles in: the deadline covers the whole request.
        post = (b"POST /v1/public/echo/start HTTP/1.1\r\nHost: relay.test\r\n"
                b"Content-Type: application/json\r\nContent-Length: 300\r\n\r\n")

        async def slow_client(first: bytes, trickle: bytes):
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", env.port))
            started = loop.time()
            received = bytearray()
            answered = []

            async def read():
                while True:
                    try:
                        data = await loop.sock_recv(sock, 4096)
                    except ConnectionResetError:
                        return "reset"
                    if not data:
                        return "eof"
                    answered.append(loop.time())
                    received.extend(data)

            reader = loop.create_task(read())
            try:
                if first:
                    await loop.sock_sendall(sock, first)
                for i in range(len(trickle)):              # one byte every 30 ms: seconds in all
                    if reader.done():
                        break
                    try:
                        await loop.sock_sendall(sock, trickle[i:i + 1])
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    await asyncio.sleep(0.03)
                how = await asyncio.wait_for(reader, 3)
                return bytes(received), how, started, answered[0] if answered else None
            finally:
                reader.cancel()
                sock.close()

        async def normal_client():
            await asyncio.sleep(0.2)                      # while every slow head is trickling in
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, echo_roundtrip, env.port)
            return loop.time()

        async def main():
            return await asyncio.gather(*(slow_client(b"", head) for _ in range(n_heads)),
                                        *(slow_client(post, b"{" + b" " * 298 + b"}") for _ in range(n_bodies)),
                                        normal_client())

        *slow, normal_done = uvloop.run(asyncio.wait_for(main(), 30))
        for response, how, started, answered in slow:
            assert status_of(response) == 408, response[:200]
            assert b"Connection: close" in response
            assert how in ("eof", "reset")               # the relay closed the connection
            # Not before the deadline (the request was still arriving), and not much after it.
            assert timeout - 0.05 <= answered - started <= timeout + 1.5, answered - started
        # The normal session was served while every slow request was still being held.
        assert normal_done < min(answered for *_, answered in slow), "the normal session waited for the 408s"
        assert env.bot_requests() == 1                   # only the normal client reached a bot
        assert env.rejections() == {408: n_heads + n_bodies}
        env.wait_drained()


# -- 2. oversized and malformed heads ------------------------------------------------------------

def _head(extra: str = "", *, target: str = ECHO, method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    return upgrade_head(target, extra=extra).replace(b"GET " + target.encode(), f"{method} {target}".encode(), 1) \
        .replace(b" HTTP/1.1\r\n", f" {version}\r\n".encode(), 1)


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def _raw_head(lines: list[bytes]) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n"


_GOOD = upgrade_head(ECHO)
TLS_CLIENT_HELLO = bytes.fromhex(
    "16030100c4010000c00303" + "ab" * 32 + "00" + "0020" + "c02bc02fc02cc030cca9cca8c013c014009c009d002f0035"
    "c012000a1301130213030100" + "0057" + "0000000e000c0000096c6f63616c686f7374" + "00" * 60)

MALFORMED = [
    # (id, chunks, expected status)
    ("head over the limit in 64-byte writes", _pieces(_head("X-Big: " + "a" * 9000 + "\r\n"), 64), 431),
    ("101 header lines", [_head("".join(f"X-H{i}: v\r\n" for i in range(96)))], 431),
    ("header line of 20 KB", [_head("X-Big: " + "b" * 20000 + "\r\n")], 431),
    ("request line of 20 KB", [_head(target=ECHO + "?q=" + "c" * 20000)], 431),
    ("NUL in a value", [_head("X-A: a\x00b\r\n")], 400),
    ("bare CR in a value", [_head("X-A: a\rb\r\n")], 400),
    ("ESC in a value", [_head("X-A: a\x1b[31mb\r\n")], 400),
    ("DEL in a value", [_head("X-A: a\x7fb\r\n")], 400),
    ("obs-fold continuation", [_head("X-A: a\r\n b\r\n")], 400),
    ("obs-fold with a tab", [_head("X-A: a\r\n\tb\r\n")], 400),
    ("whitespace line after the request line", [_GOOD.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\n X-A: b\r\n", 1)], 400),
    ("HTTP/1.0 upgrade", [_head(version="HTTP/1.0")], 400),
    ("HTTP/1.2 upgrade", [_head(version="HTTP/1.2")], 400),
    ("HTTP/2 preface", [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], 400),
    ("TLS ClientHello", [TLS_CLIENT_HELLO], 400),
    ("random garbage", [bytes(range(256)) * 4], 400),
    ("empty line flood", [b"\r\n" * 10000], (400, 431)),
    ("absolute-form target", [_head(target="http://relay.test" + ECHO)], 400),
    ("GET with Content-Length: 5 and a body", [_head("Content-Length: 5\r\n") + b"hello"], 400),
    ("GET with Transfer-Encoding: chunked", [_head("Transfer-Encoding: chunked\r\n") + b"5\r\nhello\r\n0\r\n\r\n"], 400),
    ("Content-Length and Transfer-Encoding", [_head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n") + b"0\r\n\r\n"], 400),
    ("conflicting Content-Length", [_head("Content-Length: 0\r\nContent-Length: 5\r\n") + b"hello"], 400),
    ("Host twice", [_head("Host: evil.test\r\n")], 400),
    ("Sec-WebSocket-Key twice", [_head("Sec-WebSocket-Key: " + base64.b64encode(b"k" * 16).decode() + "\r\n")], 400),
    ("lower-case method", [_head(method="get")], 405),
    ("mixed-case method", [_head(method="Get")], 405),
    ("space before the colon", [_head("X-A : b\r\n")], 400),
    ("NUL in the target", [_head(target=ECHO + "?a=\x00")], 400),
    ("LF-CR line ends", [_GOOD.replace(b"\r\n", b"\n\r")], 400),
]


@pytest.mark.parametrize("name,chunks,status", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_heads_are_refused_before_any_bot(pump, name, chunks, status, caplog):
    caplog.set_level(logging.INFO, logger="wsrelay.session")
    with RelayEnv(pump, handshake_timeout=3) as env:
        gap = 0.001 if len(chunks) > 1 else 0.0
        started = time.monotonic()
        response, how = exchange(env.port, chunks, gap=gap)
        assert response.startswith(b"HTTP/1.1 "), f"no HTTP answer ({how}): {response[:100]!r}"
        allowed = status if isinstance(status, tuple) else (status,)
        got = status_of(response)
        assert got in allowed, response[:300]
        assert b"Connection: close" in response.split(b"\r\n\r\n")[0]
        assert responses_in(response) == 1
        assert how in ("eof", "reset"), "the relay did not close the connection"
        assert time.monotonic() - started < 2.5         # answered at once, not by the 3 s deadline
        assert env.bot_requests() == 0                    # no bot was contacted
        assert env.rejections() == {got: 1}               # counted, once
        logged = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "handshake_refused"]
        assert [line["status"] for line in logged] == [got]   # and logged, once
        echo_roundtrip(env.port)                          # and the relay serves the next client
        assert env.bot_requests() == 1
        env.wait_drained()


# -- accepted shapes: one verdict, picows never refuses what the gate accepted --------------------

def _early_frames(count: int, size: int) -> tuple[bytes, list[bytes]]:
    payloads = [bytes([65 + i % 26]) * size for i in range(count)]
    return b"".join(ws_frame(0x2, p) for p in payloads), payloads


ACCEPTED = [
    ("LF-only line endings", lambda: _GOOD.replace(b"\r\n", b"\n")),
    ("mixed line endings", lambda: _GOOD.replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\n")),
    ("Connection: keep-alive, Upgrade", lambda: _GOOD.replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade")),
    ("lower-case header names", lambda: re.sub(rb"(?m)^([A-Za-z-]+):", lambda m: m.group(1).lower() + b":", _GOOD)),
    ("Content-Length: 0", lambda: _GOOD[:-2] + b"Content-Length: 0\r\n\r\n"),
    ("100 header lines", lambda: _GOOD[:-2] + b"".join(b"X-H%d: v\r\n" % i for i in range(95)) + b"\r\n"),
]


@pytest.mark.parametrize("name,build", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted_head_shapes_get_101_and_reach_the_bot(pump, name, build):
    with RelayEnv(pump) as env:
        head = build()
        client = RawClient(env.port)
        try:
            frame = ws_frame(0x1, b"after " + name.encode())
            client.send(head + frame)
            status, headers = client.read_head(timeout=5)
            assert status == 101, f"{name}: {status} {client.buf[:200]!r}"
            key = re.search(rb"(?i)sec-websocket-key: (\S+)", head).group(1)
            assert headers["sec-websocket-accept"].encode() == accept_for(key)
            frames = client.read_frames(lambda fs: fs)
            assert [f.payload for f in frames] == [b"after " + name.encode()]
        finally:
            client.close()
        assert env.bot_requests() == 1 and env.rejections() == {}


def _send_in_background(client: RawClient, data: bytes) -> threading.Thread:
    """Write ``data`` from another thread, so the test can read the echo meanwhile."""
    sock = client.sock.dup()
    sock.settimeout(20)

    def send():
        try:
            sock.sendall(data)
        except OSError:
            pass
        finally:
            sock.close()

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("count,size", [(40, 512), (150, 2048)], ids=["20KiB", "300KiB"])
def test_early_frames_in_the_head_write_do_not_count_as_head_and_arrive_in_order(pump, count, size):
    with RelayEnv(pump) as env:
        frames, payloads = _early_frames(count, size)      # written together with the head
        assert len(frames) > 20 * 1024
        head = upgrade_head(ECHO)
        client = RawClient(env.port)
        try:
            sender = _send_in_background(client, head + frames)
            status, headers = client.read_head()
            assert status == 101, client.buf[:200]
            assert headers["sec-websocket-accept"].encode() == accept_for(key_of(head))
            echoed = client.read_frames(lambda fs: len(fs) >= count, timeout=10)
            assert [f.payload for f in echoed] == payloads
            sender.join(5)
            got = env.state(lambda: [f.payload for f in env.bot.sessions[0].frames])
            assert got == payloads
        finally:
            client.close()
        assert env.rejections() == {}
        env.wait_drained()


def test_early_frames_beyond_the_early_buffer_wait_for_a_slow_bot_and_arrive_in_order(pump):
    with RelayEnv(pump) as env:
        env.raw.sink, env.raw.delay = True, 0.3               # the bot takes 0.3 s to answer 101
        frames, payloads = _early_frames(256, 4096)          # 1 MiB: 16 times the gate's early buffer
        head = upgrade_head(RAW)
        client = RawClient(env.port)
        try:
            sender = _send_in_background(client, head + frames)
            status, headers = client.read_head()
            assert status == 101, client.buf[:200]
            assert headers["sec-websocket-accept"].encode() == accept_for(key_of(head))
            sender.join(10)
            assert not sender.is_alive()
            env.wait(lambda: len(env.raw.connections) == 1 and len(env.raw.connections[0]["frames"]) >= 256,
                     timeout=10, what="1 MiB of early frames at the bot")
            got = env.state(lambda: [f.payload for f in env.raw.connections[0]["frames"]])
            assert got == payloads
        finally:
            client.close()
        env.wait(lambda: env.raw.connections[0]["done"], what="the bot side to close")
        env.wait_drained()


def _head_of_size(size: int, eol: bytes = b"\r\n") -> bytes:
    base = upgrade_head(ECHO).replace(b"\r\n", eol)
    pad = size - len(base) - len(b"X-Pad: ") - len(eol)
    head = base[:-len(eol)] + b"X-Pad: " + b"p" * pad + eol + eol
    assert len(head) == size
    return head


@pytest.mark.parametrize("size,eol,with_frames,status", [
    (8192, b"\r\n", False, 101),
    (8192, b"\r\n", True, 101),
    (8192, b"\n", True, 101),
    (8193, b"\r\n", False, 431),
    (8193, b"\n", True, 431),
], ids=["8192", "8192+frames", "8192-LF+frames", "8193", "8193-LF+frames"])
def test_head_size_limit_is_exact_and_ignores_early_frames(pump, size, eol, with_frames, status):
    with RelayEnv(pump) as env:                               # max_request_head_bytes = 8192
        assert env.relay.config.relay.max_request_head_bytes == 8192
        head = _head_of_size(size, eol)
        frames, payloads = _early_frames(40, 512) if with_frames else (b"", [])
        client = RawClient(env.port)
        try:
            client.send(head + frames)
            got, headers = client.read_head()
            assert got == status, client.buf[:200]
            if status == 101:
                assert headers["sec-websocket-accept"].encode() == accept_for(key_of(head))
                echoed = client.read_frames(lambda fs: len(fs) >= len(payloads))
                assert [f.payload for f in echoed] == payloads
                assert env.bot_requests() == 1 and env.rejections() == {}
            else:
                assert client.read_until_closed() in ("eof", "reset")
                assert env.bot_requests() == 0 and env.rejections() == {431: 1}
        finally:
            client.close()


# -- 3. property: any head is either a clean 101 or one counted refusal --------------------------

_GOOD_KEY = base64.b64encode(b"0123456789abcdef").decode()
# (good, [hostile variants]): each part of the head is hostile about one time in ten.
_TARGET = (ECHO, ["/ws/generic?serviceHost=echo.demo", ECHO + "?body=eyJ4IjoxfQ%3D%3D&x=1",
                  "/ws/generic/nobody.demo", "*", "http://relay.test" + ECHO, "/ws/generic/echo_demo",
                  ECHO + "/tok/extra", "/ws/gen eric", ECHO + "?a=\x7f", "/ws/generic/\xe9cho.demo", "/"])
_METHOD = ("GET", ["get", "POST", "HEAD", "CONNECT", "G ET", ""])
_VERSION = ("HTTP/1.1", ["HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "http/1.1", "HTTP/11", "ICE/1.0"])
_ESSENTIAL = {
    "Host": ("relay.test", [None, "", "a\x00b", "relay.test:8080", "x" * 300]),
    "Upgrade": ("websocket", [None, "WebSocket", "websocket, h2c", "h2c", ""]),
    "Connection": ("Upgrade", [None, "keep-alive, Upgrade", "upgrade", "close", "Upgrade\x1b"]),
    "Sec-WebSocket-Version": ("13", [None, " 13", "8", "13, 8", ""]),
    "Sec-WebSocket-Key": (_GOOD_KEY, [None, "zz", "", _GOOD_KEY + "\x7f", base64.b64encode(b"x" * 15).decode()]),
}
_BENIGN_EXTRAS = ["X-Custom: 1", "Origin: http://example.test", "User-Agent: hostile/1.0", "Cookie: a=b; c=d",
                  "Sec-WebSocket-Protocol: chat, superchat", "Sec-WebSocket-Extensions: permessage-deflate",
                  "X-Forwarded-For: 6.6.6.6", "Content-Length: 0", "X-Utf8: caf\xc3\xa9", "X-Latin1: \xff\xfe"]
_EXTRA_NAMES = ["X-Custom", "Origin", "Cookie", "Content-Length", "Transfer-Encoding", "Authorization",
                "Host", "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Upgrade", "Bad Name", "X-\x00"]
_EXTRA_VALUES = ["1", "0", "5", "chunked", "a\x00b", "a\rb", "a\x1bb", "a\x7fb", " padded ", "Bearer abc",
                 "Basic abc", "x" * 9000, ""]


@st.composite
def request_heads(draw):
    """A request head from a small grammar: mostly a good upgrade, with hostile parts mixed in."""
    def part(good, bad):
        return draw(st.sampled_from(bad)) if draw(st.integers(0, 9)) == 7 else good

    eol = draw(st.sampled_from(["\r\n", "\r\n", "\n", "mixed"]))

    def end():
        return draw(st.sampled_from(["\r\n", "\n"])) if eol == "mixed" else eol

    lines = [f"{part(*_METHOD)} {part(*_TARGET)} {part(*_VERSION)}{end()}"]
    headers = []
    for name, (good, bad) in _ESSENTIAL.items():
        value = part(good, bad)
        if value is not None:
            spelled = draw(st.sampled_from([name, name, name.lower(), name.upper()]))
            headers.append(f"{spelled}: {value}")
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.integers(0, 7))
        if kind == 0:
            headers.append("X-Fold: a" + end() + draw(st.sampled_from([" ", "\t"])) + "b")
        elif kind < 4:
            headers.append(f"{draw(st.sampled_from(_EXTRA_NAMES))}: {draw(st.sampled_from(_EXTRA_VALUES))}")
        else:
            headers.append(draw(st.sampled_from(_BENIGN_EXTRAS)))
    order = draw(st.permutations(range(len(headers))))
    lines += [headers[i] + end() for i in order]
    head = ("".join(lines) + end()).encode("latin-1")
    kind = draw(st.sampled_from(["none", "none", "frames", "garbage"]))
    payloads = draw(st.lists(st.binary(max_size=40), min_size=1, max_size=3)) if kind == "frames" else []
    trailing = b"".join(ws_frame(0x2, p) for p in payloads)
    if kind == "garbage":
        trailing = draw(st.binary(min_size=1, max_size=64))
    return head, trailing, payloads


def test_property_any_head_is_a_clean_101_or_one_counted_refusal(pump):
    with RelayEnv(pump, handshake_timeout=1.0, close_timeout=1.0) as env:
        seen = {"101": 0, "refused": 0}

        @settings(max_examples=60, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(request_heads())
        def check(case):
            head, trailing, payloads = case
            requests_before = env.bot_requests()
            sessions_before = env.state(lambda: len(env.bot.sessions))
            refused_before = sum(env.rejections().values())
            client = RawClient(env.port)
            try:
                client.send(head + trailing)
                status, headers = client.read_head(timeout=5)
                assert status is not None, (
                    f"no answer within 5 s ({client.closed or 'still open'}): {client.buf[:200]!r}")
                requests_after = env.bot_requests()
                refused_after = sum(env.rejections().values())
                if status == 101:
                    seen["101"] += 1
                    keys = re.findall(rb"(?im)^sec-websocket-key:[ \t]*([^\r\n]*?)[ \t]*\r?$", head)
                    assert len(keys) == 1, f"101 for a head with {len(keys)} keys"
                    assert headers.get("sec-websocket-accept", "").encode() == accept_for(keys[0])
                    assert requests_after == requests_before + 1, "101 without exactly one bot handshake"
                    assert refused_after == refused_before
                    if payloads:              # early frames reach the bot, in order
                        env.wait(lambda: len(env.bot.sessions) > sessions_before
                                 and len(env.bot.sessions[sessions_before].frames) >= len(payloads),
                                 what="the early frames at the bot")
                        got = env.state(lambda: [f.payload for f in env.bot.sessions[sessions_before].frames])
                        assert got[:len(payloads)] == payloads
                else:
                    seen["refused"] += 1
                    assert status >= 400, f"status {status}"
                    assert requests_after == requests_before, f"{status} after a bot was contacted"
                    assert refused_after == refused_before + 1, "a refusal not counted exactly once"
                    assert client.read_until_closed(3) in ("eof", "reset"), "refused but left open"
                    assert responses_in(client.head + bytes(client.buf)) == 1
            finally:
                client.close()

        check()
        assert seen["101"] >= 5 and seen["refused"] >= 5, seen     # both branches were exercised
        env.wait_drained()
        echo_roundtrip(env.port)


# -- 4. fuzzed frames from both sides -----------------------------------------------------------

_BREAKS = ["opcode", "mask", "length", "control-size", "fragmented-control", "rsv", "zero-close"]


@st.composite
def fuzz_frame(draw, masked: bool, breaks: tuple[str, ...] = ()):
    """One frame, broken in the ways named (opcode, mask, length, size, fragmentation...)."""
    opcode = draw(st.sampled_from([0x3, 0x4, 0x7, 0xB, 0xF] if "opcode" in breaks else [0x0, 0x1, 0x2, 0x8, 0x9, 0xA]))
    control = opcode >= 0x8
    payload = draw(st.binary(min_size=126 if "control-size" in breaks else 0,
                             max_size=300 if (not control or "control-size" in breaks) else 125))
    if opcode == 0x8 and (draw(st.booleans()) or "zero-close" in breaks):
        code = draw(st.sampled_from([0, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] if "zero-close" in breaks
                                    else [1000, 1001, 3000, 4999]))
        payload = struct.pack("!H", code) + draw(st.sampled_from([b"", b"bye", b"\xff\xfe"]))
    length, form = None, "min"
    if "length" in breaks:
        mode = draw(st.sampled_from(["16", "64", "short", "long", "huge", "top-bit"]))
        if mode in ("16", "64"):
            form = mode
        elif mode == "short":
            length = max(0, len(payload) - draw(st.integers(1, 20)))
        elif mode == "long":
            length = len(payload) + draw(st.integers(1, 5000))
        elif mode == "huge":
            length, form = draw(st.sampled_from([2 ** 24 + 1, 2 ** 40, 2 ** 62])), "64"
        else:
            length, form = 2 ** 63 + len(payload), "64"
    fin = not ("fragmented-control" in breaks and control)
    rsv = draw(st.sampled_from([1, 2, 4, 7])) if "rsv" in breaks else 0
    mask = (not masked) if "mask" in breaks else masked
    return ws_frame(opcode, payload, fin=fin, rsv=rsv, mask=mask, length=length, length_form=form)


@st.composite
def valid_frame(draw, masked: bool):
    opcode = draw(st.sampled_from([0x1, 0x2, 0x2, 0x9, 0xA]))
    payload = draw(st.binary(max_size=125 if opcode >= 0x8 else 2000))
    return ws_frame(opcode, payload, mask=masked), (opcode, payload)


@st.composite
def fuzz_streams(draw, masked: bool):
    """Valid frames, then one hostile piece (a broken frame, random bytes, or none), then anything.

    Returns (bytes, [(opcode, payload) of the valid prefix]): the prefix must reach the
    other side, in order, whatever follows it.
    """
    prefix = draw(st.lists(valid_frame(masked), max_size=4))
    hostile = draw(st.one_of(
        st.lists(st.sampled_from(_BREAKS), min_size=1, max_size=2, unique=True)
        .flatmap(lambda breaks: fuzz_frame(masked, tuple(breaks))),
        st.binary(min_size=1, max_size=48),
        st.just(b"")))
    suffix = draw(st.lists(st.one_of(fuzz_frame(masked), st.binary(min_size=1, max_size=16)), max_size=2))
    return b"".join(f for f, _ in prefix) + hostile + b"".join(suffix), [m for _, m in prefix]


FUZZ_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_client_fuzz_after_upgrade_ends_the_session_cleanly(pump):
    with RelayEnv(pump, close_timeout=1.0) as env:
        @FUZZ_SETTINGS
        @given(fuzz_streams(masked=True))
        def check(case):
            fuzz, prefix = case
            head = upgrade_head(ECHO)
            sessions_before = env.state(lambda: len(env.bot.sessions))
            client = RawClient(env.port)
            final_close = ws_frame(0x8, struct.pack("!H", 1000) + b"fuzz done")
            try:
                client.send(head)
                status, headers = client.read_head()
                assert status == 101 and headers["sec-websocket-accept"].encode() == accept_for(key_of(head))
                client.send(fuzz) and client.send(final_close)
                frames = client.read_frames(lambda fs: client.closed, timeout=0.15)
                if not client.closed:            # the close may be inside a frame still "arriving"
                    try:
                        client.sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    frames += client.read_frames(lambda fs: False, timeout=5)
                assert client.closed, "the fuzzed session was still open 5 s after the client's EOF"
            finally:
                client.close()
            env.wait(lambda: len(env.bot.sessions) > sessions_before
                     and env.bot.sessions[sessions_before].disconnected.is_set(),
                     what="the bot's side of the fuzzed session to close")
            env.wait_drained()
            sent = close_payloads_in(fuzz) | close_payloads_in(final_close)
            for f in frames:
                if f.opcode == 0x8:
                    check_relay_close(f.payload, sent, "to the client")
            bot_frames = env.state(lambda: list(env.bot.sessions[sessions_before].frames))
            for f in bot_frames:
                if f.msg_type == WSMsgType.CLOSE:
                    check_relay_close(f.payload, sent, "to the bot")
            data = [(f.msg_type, f.payload) for f in bot_frames if f.msg_type != WSMsgType.CLOSE]
            assert data[:len(prefix)] == prefix, "the valid frames before the bad one did not all reach the bot"
            nothing_after_close([int(f.msg_type) for f in bot_frames], "to the bot")
            nothing_after_close([f.opcode for f in frames], "to the client")
            echo_roundtrip(env.port)

        check()


def test_bot_fuzz_after_upgrade_ends_the_session_cleanly(pump):
    with RelayEnv(pump, close_timeout=1.0) as env:
        @FUZZ_SETTINGS
        @given(fuzz_streams(masked=False))
        def check(case):
            fuzz, prefix = case
            env.raw.fuzz = fuzz
            connections_before = env.state(lambda: len(env.raw.connections))
            head = upgrade_head(RAW)
            client = RawClient(env.port)
            frames: list[WSFrame] = []
            try:
                client.send(head)
                status, headers = client.read_head()
                assert status == 101 and headers["sec-websocket-accept"].encode() == accept_for(key_of(head))
                deadline = time.monotonic() + 6
                replied = False
                while not client.closed and time.monotonic() < deadline:
                    got = client.read_frames(lambda fs: any(f.opcode == 0x8 for f in fs),
                                             timeout=deadline - time.monotonic())
                    frames += got
                    closes = [f for f in got if f.opcode == 0x8]
                    if closes and not replied:
                        client.send(ws_frame(0x8, closes[0].payload))
                        replied = True
                assert client.closed, "the bot-fuzzed session was still open after 6 s"
            finally:
                client.close()
            env.wait(lambda: len(env.raw.connections) > connections_before
                     and env.raw.connections[connections_before]["done"], what="the raw bot's socket to close")
            env.wait_drained()
            sent = close_payloads_in(fuzz) | {struct.pack("!H", 1000) + b"fuzz done"}
            for f in frames:
                assert not f.masked, "the relay masked a frame to the client"
                if f.opcode == 0x8:
                    check_relay_close(f.payload, sent, "to the client")
            data = [(f.opcode, f.payload) for f in frames if f.opcode != 0x8]
            assert data[:len(prefix)] == prefix, "the valid frames before the bad one did not all reach the client"
            nothing_after_close([f.opcode for f in frames], "to the client")
            bot_got = env.state(lambda: list(env.raw.connections[connections_before]["frames"]))
            nothing_after_close([f.opcode for f in bot_got], "to the bot")
            for f in bot_got:
                assert f.masked, "the relay sent the bot an unmasked frame"
                if f.opcode == 0x8:
                    check_relay_close(f.payload, sent, "to the bot")
            echo_roundtrip(env.port)

        check()


@pytest.mark.parametrize("bad", [ws_frame(0x3, b"reserved opcode", mask=False),
                                 ws_frame(0x1, b"masked by a server", mask=True),
                                 ws_frame(0x9, b"p" * 126, mask=False)],
                         ids=["reserved-opcode", "masked-frame", "ping-over-125"])
def test_a_bot_connection_picows_closes_for_a_protocol_error_leaves_no_unretrieved_error(pump, bad):
    """picows keeps the error of a bot connection it closed itself in a future nobody awaits;
    the pump fetches it, so the loop never reports "Future exception was never retrieved"
    (which would be a line outside the structured log, for every such session)."""
    with RelayEnv(pump, close_timeout=1.0) as env:
        reported: list[str] = []
        env.state(lambda: env.loop.set_exception_handler(lambda _loop, ctx: reported.append(str(ctx.get("message")))))
        env.raw.fuzz, env.raw.final_close = bad, False
        client = RawClient(env.port)
        try:
            client.send(upgrade_head(RAW))
            assert client.read_head()[0] == 101
            deadline = time.monotonic() + 5
            while not client.closed and time.monotonic() < deadline:
                for f in client.read_frames(lambda fs: any(f.opcode == 0x8 for f in fs), timeout=deadline - time.monotonic()):
                    if f.opcode == 0x8:
                        client.send(ws_frame(0x8, f.payload))
            assert client.closed, "the session did not end"
        finally:
            client.close()
        env.wait_drained()
        for _ in range(3):
            env.state(gc.collect)                          # an unretrieved error is reported when collected
        assert env.state(lambda: [m for m in reported if "never retrieved" in m]) == []
        echo_roundtrip(env.port)


_ILLEGAL_CLOSES = [struct.pack("!H", code) + b"bad" for code in (0, 999, 1004, 1005, 1006, 1015, 2999, 5000)] + [b"\x03"]
_LEGAL_CLOSES = [struct.pack("!H", code) + b"ok" for code in (1000, 1001, 1003, 1011, 1012, 3000, 4999)] + [b""]


@pytest.mark.parametrize("direction", ["from-client", "from-bot"])
@pytest.mark.parametrize("payload", _ILLEGAL_CLOSES + _LEGAL_CLOSES,
                         ids=[f"illegal-{p[:2].hex()}" for p in _ILLEGAL_CLOSES]
                         + [f"legal-{p[:2].hex() or 'empty'}" for p in _LEGAL_CLOSES])
def test_close_codes_cross_as_sent_unless_illegal_on_the_wire(pump, direction, payload):
    """A legal close (or one without a code) crosses byte for byte (docs/endpoints.md); a close whose
    code no endpoint may send (RFC 6455 §7.4: 0-999, 1004-1006, 1015, 1016-2999, >= 5000,
    or a 1-byte payload) is the sender's protocol error: never put on the other side's wire."""
    legal = payload in _LEGAL_CLOSES
    with RelayEnv(pump, close_timeout=1.0) as env:
        client = RawClient(env.port)
        try:
            if direction == "from-client":
                client.send(upgrade_head(ECHO))
                assert client.read_head()[0] == 101
                client.send(ws_frame(0x8, payload))
                to_sender = client.read_frames(lambda fs: any(f.opcode == 0x8 for f in fs))
                assert client.read_until_closed() in ("eof", "reset")
                env.wait(lambda: env.bot.sessions[0].disconnected.is_set(), what="the bot side to close")
                to_other = [(int(f.msg_type), f.payload) for f in env.state(lambda: env.bot.sessions[0].frames)]
                to_sender = [(f.opcode, f.payload) for f in to_sender]
            else:
                env.raw.fuzz, env.raw.final_close = ws_frame(0x8, payload, mask=False), False
                client.send(upgrade_head(RAW))
                assert client.read_head()[0] == 101
                got = client.read_frames(lambda fs: any(f.opcode == 0x8 for f in fs))
                client.send(ws_frame(0x8, struct.pack("!H", 1000)))
                assert client.read_until_closed() in ("eof", "reset")
                env.wait(lambda: env.raw.connections[0]["done"], what="the bot side to close")
                to_other = [(f.opcode, f.payload) for f in got]
                to_sender = [(f.opcode, f.payload) for f in env.state(lambda: env.raw.connections[0]["frames"])]
        finally:
            client.close()
        env.wait_drained()
        other_closes = [p for op, p in to_other if op == 0x8]
        assert len(other_closes) == 1 and all(op == 0x8 for op, _ in to_other), to_other
        if legal:
            assert other_closes == [payload]                      # exactly as sent
        else:
            assert other_closes[0] != payload, f"an illegal close was relayed as is: {payload!r}"
            check_relay_close(other_closes[0], set(), "to the other side")
            sender_closes = [p for op, p in to_sender if op == 0x8]
            assert sender_closes, "the sender of an illegal close was not told"
            check_relay_close(sender_closes[0], set(), "to the sender")


# -- 5. descriptor exhaustion --------------------------------------------------------------------

class LimitedRelayProcess(RelayProcess):
    """``wsrelay serve`` with RLIMIT_NOFILE set (soft and hard: cli.py lifts soft to hard)."""

    def __init__(self, config_text: str, tmp_path, *, nofile: int, pump: str) -> None:
        import subprocess
        self.path = tmp_path / "relay.toml"
        self.path.write_text(config_text)
        env = dict(os.environ)
        if pump == "python":
            env["WSRELAY_PURE_PYTHON"] = "1"
        else:
            env.pop("WSRELAY_PURE_PYTHON", None)
        self.log_path = tmp_path / "relay.log"
        self._log = open(self.log_path, "wb")
        launcher = ("import os, resource, sys; n = int(sys.argv[1]); "
                    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); "
                    "os.execv(sys.executable, [sys.executable, '-m', 'wsrelay', *sys.argv[2:]])")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", launcher, str(nofile), "serve", "--config", str(self.path),
             "--log-format", "json"], stdout=self._log, stderr=subprocess.STDOUT, env=env)


def test_descriptor_exhaustion_leaves_the_relay_alive_and_its_log_structured(pump, tmp_path):
    limit = 64

    async def main():
        bot = await Bot(echo=True).start()
        port = free_port()
        config = (f'[relay]\nhost = "127.0.0.1"\nport = {port}\nadmin_port = 0\n'
                  f'handshake_timeout = 30\n[[agents]]\nname = "echo"\norganization = "demo"\n'
                  f'upstreams = ["{bot.url}"]\n')
        relay = LimitedRelayProcess(config, tmp_path, nofile=limit, pump=pump)
        loop = asyncio.get_running_loop()
        idle: list[socket.socket] = []

        def open_fds() -> int:
            return len(os.listdir(f"/proc/{relay.proc.pid}/fd"))

        async def connect_idle() -> None:
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            idle.append(sock)

        try:
            await relay.wait_port(port)
            limits = open(f"/proc/{relay.proc.pid}/limits").read()
            assert re.search(rf"Max open files\s+{limit}\s+{limit}", limits), limits
            live, live_rec = await connect_client(f"ws://127.0.0.1:{port}{ECHO}")   # a session before
            # Fill the table to one free descriptor: the next client is accepted, its bot is not.
            while open_fds() < limit - 1:
                before = open_fds()
                await connect_idle()
                for _ in range(500):
                    if open_fds() > before:
                        break
                    await asyncio.sleep(0.002)
                assert len(idle) < limit, "the relay does not take a descriptor per connection"
            refused = await asyncio.to_thread(exchange, port, [upgrade_head(ECHO)])
            assert status_of(refused[0]) == 502, refused
            assert b"Connection: close" in refused[0] and refused[1] in ("eof", "reset")
            # Then far more connections than descriptors.
            for _ in range(200):
                await connect_idle()
            await asyncio.sleep(0.5)
            assert open_fds() >= limit - 2, f"the relay never ran out of descriptors ({open_fds()} open)"
            live.send(WSMsgType.TEXT, b"during exhaustion")       # a live session goes on
            await live_rec.wait_frames(1)
            assert live_rec.frames[0].payload == b"during exhaustion"
            for sock in idle:
                sock.close()
            idle.clear()
            assert relay.proc.poll() is None, relay.log()
            deadline = loop.time() + 10
            while True:                                   # the relay accepts again, and serves
                try:
                    client, rec = await connect_client(f"ws://127.0.0.1:{port}{ECHO}")
                    break
                except Exception:
                    if loop.time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            client.send(WSMsgType.TEXT, b"after exhaustion")
            await rec.wait_frames(1)
            assert rec.frames[0].payload == b"after exhaustion"
            for transport, recorder in ((client, rec), (live, live_rec)):
                transport.send_close(1000)
                await recorder.wait_for(lambda r=recorder: r.disconnected.is_set())
            assert relay.proc.poll() is None, relay.log()
        finally:
            for sock in idle:
                sock.close()
            code = relay.stop()
            bot.close()
        return code, relay.log()

    code, log = arun(main(), timeout=90)
    assert code == 0, log[-2000:]
    lines, bad = [], []
    for line in log.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            bad.append(line)
    assert not bad, "non-JSON lines in the relay's log:\n" + "\n".join(bad[:40])
    refusals = [(r["status"], r["target"]) for r in lines if r.get("event") == "handshake_refused"]
    assert refusals == [(502, ECHO)], refusals
    ends = [r for r in lines if r.get("event") == "session_end"]
    assert len(ends) == 2 and all(e["close_from_client"] == 1000 for e in ends), ends


def test_relay_process_logs_one_json_line_per_event_under_hostile_peers(pump, tmp_path):
    """A real ``wsrelay serve``: refusals, a 408, protocol errors from both sides, in JSON only."""
    async def main():
        bot = await Bot(echo=True).start()
        raw = await RawBot().start()
        raw.fuzz = b"\x83\x00"                                       # a frame with a reserved opcode
        port = free_port()
        config = (f'[relay]\nhost = "127.0.0.1"\nport = {port}\nadmin_port = 0\nhandshake_timeout = 0.5\n'
                  f'close_timeout = 1\n[[agents]]\nname = "echo"\norganization = "demo"\nupstreams = ["{bot.url}"]\n'
                  f'[[agents]]\nname = "raw"\norganization = "demo"\nupstreams = ["{raw.url}"]\n')
        relay = RelayProcess(config, tmp_path, pump=pump)
        try:
            await relay.wait_port(port)
            refused = [
                (upgrade_head("/ws/generic/nobody.demo"), 404),
                (_head("X-A: a\r\n b\r\n"), 400),
                (_head("X-Big: " + "b" * 20000 + "\r\n"), 431),
                (b"\x16\x03\x01garbage\r\n\r\n", 400),
                (upgrade_head(ECHO)[:-4], 408),
            ]
            for data, status in refused:
                response, how = await asyncio.to_thread(exchange, port, [data])
                assert status_of(response) == status and how in ("eof", "reset"), response[:200]

            def client_breaks_the_protocol():
                client = RawClient(port)
                try:
                    head = upgrade_head(ECHO)
                    client.send(head + ws_frame(0x3, b"reserved"))
                    assert client.read_head()[0] == 101
                    frames = client.read_frames(lambda fs: any(f.opcode == 0x8 for f in fs))
                    assert [f.payload[:2] for f in frames if f.opcode == 0x8] == [struct.pack("!H", 1002)]
                    assert client.read_until_closed() in ("eof", "reset")
                finally:
                    client.close()

            def bot_breaks_the_protocol():
                client = RawClient(port)
                try:
                    client.send(upgrade_head(RAW))
                    assert client.read_head()[0] == 101
                    frames = client.read_frames(lambda fs: any(f.opcode == 0x8 for f in fs))
                    closes = [f for f in frames if f.opcode == 0x8]
                    assert closes and closes[0].payload[:2] == struct.pack("!H", 1002), frames
                    client.send(ws_frame(0x8, closes[0].payload))
                    assert client.read_until_closed() in ("eof", "reset")
                finally:
                    client.close()

            await asyncio.to_thread(client_breaks_the_protocol)
            await asyncio.to_thread(bot_breaks_the_protocol)
            await asyncio.to_thread(echo_roundtrip, port)
            await asyncio.sleep(1.5)                       # every session has ended and been logged
        finally:
            code = relay.stop()
            bot.close()
            raw.server.close()
        return code, relay.log()

    code, log = arun(main(), timeout=60)
    assert code == 0, log[-2000:]
    lines, bad = [], []
    for line in log.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            bad.append(line)
    assert not bad, "non-JSON lines in the relay's log:\n" + "\n".join(bad[:40])
    refusals = sorted(r["status"] for r in lines if r.get("event") == "handshake_refused")
    assert refusals == [400, 400, 404, 408, 431], refusals
    ends = sorted((e["agent"], e["end_reason"]) for e in lines if e.get("event") == "session_end")
    assert ends == [("echo", "closed"), ("echo", "protocol error (client)"), ("raw", "protocol error (bot)")], ends


# -- 6. smuggling shapes --------------------------------------------------------------------------

_SECOND = upgrade_head(ECHO)
SMUGGLED = [
    ("second request behind a 404", upgrade_head("/ws/generic/nobody.demo") + _SECOND, 404),
    ("second request behind a 426", b"GET " + ECHO.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n" + _SECOND, 426),
    ("request in a Content-Length body", _head(f"Content-Length: {len(_SECOND)}\r\n") + _SECOND, 400),
    ("request in a chunked body",
     _head("Transfer-Encoding: chunked\r\n") + b"%x\r\n" % len(_SECOND) + _SECOND + b"\r\n0\r\n\r\n", 400),
    ("second request behind a 405", _head(method="PUT") + _SECOND, 405),
    ("second request behind a start-API POST",
     b"POST /v1/public/echo/start HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
     b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}" + _SECOND, 403),
]


@pytest.mark.parametrize("name,data,status", SMUGGLED, ids=[c[0] for c in SMUGGLED])
def test_request_pipelined_behind_a_refusal_is_never_processed(pump, name, data, status):
    with RelayEnv(pump) as env:
        response, how = exchange(env.port, [data])
        assert status_of(response) == status, response[:300]
        assert responses_in(response) == 1, f"more than one answer: {response!r}"
        assert how in ("eof", "reset")
        assert env.bot_requests() == 0
        assert env.rejections() == {status: 1}
        echo_roundtrip(env.port)


def test_request_pipelined_behind_an_upgrade_is_frame_bytes_not_http(pump):
    with RelayEnv(pump, close_timeout=1.0) as env:
        head = upgrade_head(ECHO)
        client = RawClient(env.port)
        try:
            client.send(head + _SECOND)
            status, headers = client.read_head()
            assert status == 101 and headers["sec-websocket-accept"].encode() == accept_for(key_of(head))
            frames = client.read_frames(lambda fs: any(f.opcode == 0x8 for f in fs))
            assert client.read_until_closed(5) in ("eof", "reset")
            rest = bytes(client.buf)
        finally:
            client.close()
        assert b"HTTP/1.1" not in rest and not any(b"HTTP/1.1" in f.payload for f in frames)
        # "GET /..." read as a frame: 'G' = FIN 0, RSV1, reserved opcode 7 -> protocol error.
        closes = [f for f in frames if f.opcode == 0x8]
        assert closes and struct.unpack("!H", closes[0].payload[:2])[0] == 1002, frames
        assert env.bot_requests() == 1                    # the smuggled request reached no bot
        env.wait(lambda: env.bot.sessions[0].disconnected.is_set(), what="the bot side to close")
        bot_frames = env.state(lambda: list(env.bot.sessions[0].frames))
        assert not [f for f in bot_frames if f.msg_type != WSMsgType.CLOSE], bot_frames
        for f in bot_frames:
            check_relay_close(f.payload, set(), "to the bot")
        env.wait_drained()
        assert env.rejections() == {}
        echo_roundtrip(env.port)
