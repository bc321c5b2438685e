"""Soak test: the relay under N minutes of audio sessions that come and go while bots die.

    python benchmarks/soak.py --minutes 30 [--streams 500] [--turnover 10] [--bots 2]
                              [--sample-every 5] [--seed S] [--keep DIR]

It starts the echo bots (``benchmarks/echo_bot.py PORT``), a relay (``python -m wsrelay
serve``, one process, the compiled pump) whose token agent ``soak.bench`` lists them all,
with its JSON log lines in a file and its admin port on loopback, and drives it from this
one process (picows clients on uvloop, as benchmarks/loadgen.py):

* ``--streams`` concurrent audio streams (default 500): each client sends a 640-byte binary
  frame 50 times a second, the bot echoes it, the client checks every echo. A frame carries
  its session's number and its sequence number and a body cut from a fixed random pattern
  at an offset both choose, so the client rebuilds the exact bytes it expects.
* Turnover: a session lives 2 s plus an exponential time, ``streams / turnover`` seconds on
  average (50 s: 10 planned ends a second; memoryless, so the rate is steady from the first
  minute). Each stream is a lane that opens a new session as soon as its last one is over,
  so concurrency stays at ``streams``. Nine ends in ten are clean (no more frames, wait for
  every echo, close 1000, wait for the reply); one in ten is a reset (``SO_LINGER`` 0 and
  abort: an RST, no close frame).
* Every 20-30 s one bot, chosen at random, is killed (SIGKILL) and started again on its port
  a second later; its sessions (half of them, with two bots) end with close 1011 from the
  relay and are replaced at once: with the planned ends, about 20 sessions end a second.
* Each client mints its session's token with a ``sid`` of its own, which the relay takes as
  the session id: the client knows the id its session's log line will carry.

Then it asserts, and prints one JSON object (figures, and ``failures``) on stdout; each failed
assertion is also one line on stderr, and the exit status is 1:

1. Every echo arrives in order and unchanged. A session whose sent frames did not all come
   back must have a non-clean end on both sides (the client reset it or the relay closed it,
   and its log line says ``client lost`` or ``bot lost``); a clean close loses nothing, and
   its log line counts exactly the frames the client sent and received.
2. The relay's RSS and open descriptors do not grow over the second half (see ``Samples``).
3. Every session the client opened has exactly one ``session_end`` log line, by session id,
   with the end the client saw; no line for a session the client does not know.
4. ``/metrics``: started = ended (all outcomes) + active, strictly at every sample (no session
   is being connected there, see ``Soak.quiesce``); between samples, where handshakes are in
   flight, 0 <= ended + active - started <= the client's handshakes in flight during the
   scrape (``Soak.busy_check``). At the end started = ended = the sessions the client opened,
   each outcome as often as the log says it, and the frames counted per direction equal the
   sum over the log lines.

Also failed: a refused handshake, a relay error or ``loop_exception`` log line, and a
client that fell behind its schedule by more than 5 % (then the figures say how far: this
process's CPU is in the summary).

Lost frames are located from the log line's counts: ``lost_client_to_relay`` (sent, never read
by the relay: in flight at a reset, or sent after the relay's close), ``lost_at_bot`` (read by
the relay, not echoed: the bot was killed with them in flight) and ``lost_relay_to_client``
(echoed by the relay, never read by the client: only a client that reset may lose those).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import uvloop
from picows import WSCloseCode, WSListener, WSMsgType, ws_connect
from prometheus_client.parser import text_string_to_metric_families

from e2e import free_port, wait_port
from loadgen import tree_cpu

from wsrelay.admission.auth import Authenticator
from wsrelay.config import load_config

HERE = Path(__file__).resolve().parent
PY = sys.executable
AGENT, ORG = "soak", "bench"
SERVICE_HOST = f"{AGENT}.{ORG}"

FRAME = 640                       # bytes per audio frame, as the audio benchmark
RATE = 50                         # frames per second each way
SLOTS = 20                        # the streams are sent to in 20 groups, one every 1 ms
HEAD = struct.Struct("!II")       # stream number, sequence number
BODY = FRAME - HEAD.size
PATTERN = random.Random(23).randbytes(4096 + BODY)

CONNECTS_AT_ONCE = 64             # handshakes in flight (a killed bot's 250 sessions come back at once)
DRAIN_TIMEOUT = 5.0               # a clean close waits this long for its echoes
CLOSE_TIMEOUT = 10.0              # ... and this long for the close reply
TOKEN_TTL = 10                    # short: the relay's nonce store is full after 10 s, not after 330
RESET_SHARE = 0.1
KILL_EVERY = (20.0, 30.0)
RESTART_AFTER = 1.0
MIN_LIFETIME = 2.0
LOST_ENDS = {"client lost", "bot lost"}


def frame_bytes(stream: int, seq: int) -> bytes:
    """The exact bytes of frame ``seq`` of ``stream``: the body's offset moves with both, so a
    frame of another stream or position, or a changed byte, never compares equal."""
    offset = (stream * 7919 + seq * 131) & 4095
    return HEAD.pack(stream, seq) + PATTERN[offset:offset + BODY]


# -- the relay's side: processes, /proc, /metrics, the log ---------------------------------------


def proc_rss(pid: int) -> int:
    """VmRSS of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Bots:
    """The echo bot instances, one process per port; killed and restarted on the same port."""

    def __init__(self, workdir: Path, count: int) -> None:
        self.workdir = workdir
        self.ports = [free_port() for _ in range(count)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.cpu_of_killed = 0.0            # CPU seconds of the processes killed so far
        self.kills = 0
        self.restarts = 0

    def start(self, port: int) -> None:
        log = open(self.workdir / f"bot-{port}.log", "ab")
        self.procs[port] = subprocess.Popen([PY, str(HERE / "echo_bot.py"), str(port)], stdout=log, stderr=log)
        log.close()
        wait_port(port, self.procs[port])

    def start_all(self) -> None:
        for port in self.ports:
            self.start(port)

    async def kill_and_restart(self, port: int) -> None:
        """SIGKILL (no close frames, no FIN from a process that says goodbye), then a new bot."""
        proc = self.procs[port]
        self.cpu_of_killed += tree_cpu(proc.pid)
        proc.kill()
        proc.wait()
        self.kills += 1
        await asyncio.sleep(RESTART_AFTER)
        await asyncio.get_running_loop().run_in_executor(None, self.start, port)
        self.restarts += 1

    def cpu(self) -> float:
        return self.cpu_of_killed + sum(tree_cpu(p.pid) for p in self.procs.values())

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()


class RelayProcess:
    """``python -m wsrelay serve`` with a config of its own; JSON log lines in ``relay.log``."""

    SECRET = "soak-secret-not-for-production"

    def __init__(self, workdir: Path, bot_ports: list[int]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path = workdir / "relay.toml"
        self.log_path = workdir / "relay.log"
        upstreams = ", ".join(f'"ws://127.0.0.1:{p}/"' for p in bot_ports)
        self.config_path.write_text(
            f'[relay]\nhost = "127.0.0.1"\nport = {self.port}\nadmin_port = {self.admin_port}\n'
            f'admin_host = "127.0.0.1"\ndrain_seconds = 0\nlog_format = "json"\n'
            f'[auth]\nsecret = "{self.SECRET}"\ntoken_ttl = {TOKEN_TTL}\nclock_skew = 0\n'
            f'[[agents]]\nname = "{AGENT}"\norganization = "{ORG}"\nupstreams = [{upstreams}]\n'
            f'websocket_auth = "token"\n')
        self.auth = Authenticator(load_config(str(self.config_path)).auth)
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        env = dict(os.environ)
        env.pop("WSRELAY_PURE_PYTHON", None)
        with open(self.log_path, "wb") as log, open(self.workdir / "relay.stdout", "wb") as out:
            self.proc = subprocess.Popen([PY, "-m", "wsrelay", "serve", "--config", str(self.config_path),
                                          "--log-format", "json"], stdout=out, stderr=log, env=env)
        wait_port(self.admin_port, self.proc)      # opened after the public port (a probe there would be logged)

    def url(self, session_id: str) -> str:
        token = self.auth.mint(SERVICE_HOST, ttl=TOKEN_TTL, session_id=session_id)
        return f"ws://127.0.0.1:{self.port}/ws/generic/{SERVICE_HOST}?token={token}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    async def metrics(self) -> dict:
        """One /metrics scrape, summed over labels: started, ended, active, ended by outcome."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.admin_port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/metrics answered {head[:60]!r}")
        sums: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        frames: dict[str, int] = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == "wsrelay_sessions_total":
                    outcomes[s.labels["outcome"]] += int(s.value)
                elif s.name == "wsrelay_frames_total":
                    frames[s.labels["direction"]] = int(s.value)
                elif s.name in ("wsrelay_sessions_started_total", "wsrelay_sessions_active"):
                    sums[s.name] += int(s.value)
        return {"started": sums["wsrelay_sessions_started_total"], "ended": sum(outcomes.values()),
                "active": sums["wsrelay_sessions_active"], "outcomes": outcomes, "frames": frames}


_PORTS = re.compile(r":\d+")


def read_log(path: Path) -> tuple[list[dict], Counter, list[str]]:
    """The session_end lines, a count of every other event, and the lines that are errors
    (level error or critical, a loop_exception, or not JSON at all)."""
    ends: list[dict] = []
    others: Counter[str] = Counter()
    errors: list[str] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            errors.append(f"not a JSON log line: {line[:200]}")
            continue
        event = record.get("event") or record.get("msg") or record.get("message") or "?"
        if event == "session_end":
            ends.append(record)
            continue
        others[f"{record.get('level')}: {_PORTS.sub(':PORT', str(event))[:70]}"] += 1
        if record.get("level") in ("error", "critical") or event == "loop_exception":
            errors.append(line[:300])
    return ends, others, errors


# -- the client's side ----------------------------------------------------------------------------


class Stream(WSListener):
    """One session of one lane: sends ``frame_bytes(stream, n)`` for n = 0, 1, ...; checks echoes.

    ``end`` is what the client saw: ``clean`` (every echo back, close 1000 sent, its reply
    received), ``clean_interrupted`` (close sent, another answer or none), ``reset`` (this
    side aborted with an RST), ``relay_closed`` (the relay's close frame came first,
    ``close_received`` its code), ``lost`` (the socket went without a close frame).
    """

    __slots__ = ("soak", "stream", "session_id", "kind", "transport", "sent", "received", "expected", "open_at",
                 "closed_at", "sending", "draining", "close_sent", "close_received", "end", "gone", "drained",
                 "bad")

    def __init__(self, soak: "Soak", stream: int, session_id: str, kind: str) -> None:
        self.soak = soak
        self.stream = stream
        self.session_id = session_id
        self.kind = kind                  # "clean" or "reset": how this session is planned to end
        self.transport: Any = None        # picows' WSTransport, while connected
        self.sent = 0
        self.received = 0
        self.expected = 0                 # the sequence number of the next echo due
        self.open_at = 0.0
        self.closed_at = 0.0
        self.sending = False
        self.draining = False
        self.close_sent = False
        self.close_received: int | None = None
        self.end: str | None = None
        loop = asyncio.get_running_loop()
        self.gone = loop.create_future()
        self.drained = loop.create_future()
        self.bad = 0                      # echoes out of order or altered

    # picows' callbacks

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.BINARY:
            payload = frame.get_payload_as_bytes()
            if payload == frame_bytes(self.stream, self.expected):
                self.expected += 1
            else:
                self._wrong_echo(payload)
            self.received += 1
            if self.draining and self.received >= self.sent and not self.drained.done():
                self.drained.set_result(None)
        elif msg_type == WSMsgType.CLOSE:
            code = self.close_received = int(frame.get_close_code())
            self.stop_sending()
            if not self.close_sent:       # the relay closes first (its bot is gone): answer, then go
                self.end = "relay_closed"
                self.close_sent = True
                if code in (1005, 1006) or code not in WSCloseCode._value2member_map_:
                    transport.send_close()
                else:
                    transport.send_close(WSCloseCode(code))
            transport.disconnect()
        elif msg_type == WSMsgType.TEXT:
            self._wrong_echo(frame.get_payload_as_bytes())

    def on_ws_disconnected(self, transport) -> None:
        self.stop_sending()
        self.transport = None             # a finished session keeps no socket state
        if self.end is None:
            self.end = "lost"
        elif self.end == "closing":
            self.end = "clean" if self.close_received == 1000 and self.received == self.sent else "clean_interrupted"
        if not self.gone.done():
            self.gone.set_result(None)

    # the soak's calls

    def send_next(self) -> None:
        self.transport.send(WSMsgType.BINARY, frame_bytes(self.stream, self.sent))
        self.sent += 1

    def start_sending(self) -> None:
        self.open_at = time.monotonic()
        self.sending = True
        self.soak.slots[self.stream % SLOTS][self] = None

    def stop_sending(self) -> None:
        if self.sending:
            self.sending = False
            self.closed_at = time.monotonic()
            self.soak.slots[self.stream % SLOTS].pop(self, None)
            self.soak.open_seconds += self.closed_at - self.open_at

    async def close_clean(self) -> None:
        """Stop sending, wait for every echo, close 1000 and wait for the reply."""
        self.stop_sending()
        self.draining = True
        if self.received < self.sent:
            await asyncio.wait([self.drained, self.gone], timeout=DRAIN_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if self.gone.done() or self.transport is None:
            return
        self.end = "closing"
        self.close_sent = True
        self.transport.send_close(WSCloseCode.OK)
        await asyncio.wait([self.gone], timeout=CLOSE_TIMEOUT)
        if not self.gone.done() and self.transport is not None:
            self.soak.fail(f"session {self.session_id}: no close reply within {CLOSE_TIMEOUT:g}s of its close 1000")
            self.transport.disconnect(False)
            await self.gone

    def record(self) -> "Record":
        return Record(self.session_id, self.end or "open", self.sent, self.received, self.close_received, self.bad)

    async def reset(self) -> None:
        """Abort the TCP connection with an RST: no close frame, frames in flight lost."""
        self.stop_sending()
        self.end = "reset"
        underlying = self.transport.underlying_transport
        sock = underlying.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        underlying.abort()
        await self.gone

    def _wrong_echo(self, payload: bytes) -> None:
        """Say what is wrong with an echo, once: after a gap the stream is followed from the
        echo that came (one lost frame is one failure, not one per frame after it)."""
        self.bad += 1
        due = self.expected
        if len(payload) != FRAME:
            what = f"an echo of {len(payload)} bytes where {due} was due"
            self.expected += 1
        else:
            stream, seq = HEAD.unpack_from(payload)
            if stream != self.stream:
                what = f"an echo of session {stream}'s frame {seq} where {due} was due"
            elif seq > due:
                what = f"echo {due} missing" if seq == due + 1 else f"echoes {due}..{seq - 1} missing"
                self.expected = seq + 1
            elif seq < due:
                what = f"echo {seq} again or late, {due} was due"
            else:
                what = f"echo {seq} altered"
                self.expected += 1
        self.soak.fail(f"session {self.session_id}: {what}", kind="echo")


class Record(NamedTuple):
    """What is kept of a finished session for the verdict (its Stream goes)."""
    session_id: str
    end: str
    sent: int
    received: int
    close_received: int | None
    bad: int


class Samples:
    """The relay's RSS and descriptors, sampled where the comparison is fair.

    Each sample is taken at a quiet point (``Soak.quiesce``): exactly ``streams`` sessions
    open in the relay and on the client, none being connected or closed, no bot being killed,
    frames still flowing. The relay then holds the same sessions, sockets, read buffers and
    timers at every sample, and its nonce store is at its steady size (tokens live 10 s). So
    the descriptors left once two per session are subtracted (``base_fds``: listeners, epoll,
    the log, ...) must be the same number every time, and RSS differs only by what is in
    flight and allocator noise, or by a leak. Growth over the second half compares the median
    of the samples in its first quarter (from T/2 to 5T/8) with the median of those in its last
    quarter (from 7T/8 to the end): a median of a few samples ignores one burst in flight, and
    the first half, where the allocator and the caches settle, is left out.

    This holds because an ended session is freed when it ends. Before 21b5f7f a session was a
    reference cycle, freed only by the cyclic collector's full collection, every ~2,000 ended
    sessions here: RSS climbed in steps for minutes (44 -> 56.6 MiB in 2 minutes), and whether
    the second half held one of those collections decided the figure.
    """

    def __init__(self, duration: float) -> None:
        self.duration = duration
        self.items: list[dict] = []

    def add(self, **sample) -> None:
        self.items.append(sample)

    def window(self, start: float, end: float | None = None) -> list[dict]:
        """Samples from ``start`` to ``end`` (fractions of the run; None: to the last one)."""
        hi = math.inf if end is None else end * self.duration
        return [s for s in self.items if start * self.duration <= s["t"] < hi]

    def growth(self) -> dict:
        mid, last, second = self.window(0.5, 0.625), self.window(0.875), self.window(0.5)
        if not mid or not last:
            return {}
        rss_mid = statistics.median(s["rss"] for s in mid)
        rss_end = statistics.median(s["rss"] for s in last)
        base_mid = statistics.median_low(s["base_fds"] for s in mid)
        base_end = statistics.median_low(s["base_fds"] for s in last)
        return {"rss_mid_mib": round(rss_mid / 2**20, 2), "rss_end_mib": round(rss_end / 2**20, 2),
                "rss_growth_kib": round((rss_end - rss_mid) / 1024, 1),
                "rss_max_growth_kib": round((max(s["rss"] for s in second) - rss_mid) / 1024, 1),
                "fds_mid": statistics.median_low(s["fds"] for s in mid),
                "fds_end": statistics.median_low(s["fds"] for s in last),
                "base_fds_mid": base_mid, "base_fds_end": base_end, "fds_growth": base_end - base_mid,
                "base_fds_range_second_half": [min(s["base_fds"] for s in second), max(s["base_fds"] for s in second)],
                "samples_mid": len(mid), "samples_end": len(last)}


class Soak:
    """The load, the bot killer, the sampler, and what they saw."""

    def __init__(self, args, relay: RelayProcess, bots: Bots) -> None:
        self.args = args
        self.relay = relay
        self.bots = bots
        self.rng = random.Random(args.seed)
        self.slots: list[dict[Stream, None]] = [{} for _ in range(SLOTS)]
        self.records: list[Record] = []           # every session that got its 101, once finished
        self.next_stream = 0
        self.open_seconds = 0.0                   # sum of the sessions' sending time
        self.connect_ms: list[float] = []
        self.connect_failures: Counter[str] = Counter()
        self.failures: list[str] = []
        self.failure_kinds: Counter[str] = Counter()
        self.stopping = False
        self.ends_allowed = asyncio.Event()
        self.ends_allowed.set()
        self.quiet = asyncio.Lock()               # a bot kill and a sample never overlap
        self.stop_future = asyncio.get_running_loop().create_future()
        self.samples = Samples(args.minutes * 60)
        self.live: set[Stream] = set()            # sessions past their 101 and not yet gone
        self.metric_checks = 0                    # strict, at quiet points
        self.busy_checks = 0                      # bounded, with handshakes in flight
        self.connecting = 0                       # the client's handshakes in flight
        self.connecting_max = 0                   # their most since the last busy check began
        self.max_lag = 0.0
        self.max_settle = 0.0
        self.t0 = 0.0

    def fail(self, message: str, kind: str = "other") -> None:
        """Record a failed assertion (the first 50 of a kind are kept word for word)."""
        self.failure_kinds[kind] += 1
        if self.failure_kinds[kind] <= 50:
            self.failures.append(message)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def open_count(self) -> int:
        return sum(len(slot) for slot in self.slots)

    # the load

    def lifetime(self) -> float:
        mean = self.args.streams / self.args.turnover
        return MIN_LIFETIME + self.rng.expovariate(1 / max(mean - MIN_LIFETIME, 0.1))

    async def lane(self, connects: asyncio.Semaphore) -> None:
        """One stream: sessions one after another until the soak stops."""
        while not self.stopping:
            await self.one_session(connects)

    async def one_session(self, connects: asyncio.Semaphore) -> None:
        self.next_stream += 1
        n = self.next_stream
        kind = "reset" if self.rng.random() < RESET_SHARE else "clean"
        stream = Stream(self, n, f"soak-{n:07d}", kind)
        lifetime = self.lifetime()
        async with connects:
            if self.stopping:
                return
            began = time.monotonic()
            self.connecting += 1
            self.connecting_max = max(self.connecting_max, self.connecting)
            try:
                _, listener = await ws_connect(lambda: stream, self.relay.url(stream.session_id),
                                               enable_auto_pong=True, use_aiofastnet=False,
                                               websocket_handshake_timeout=15, max_frame_size=1 << 20)
            except Exception as exc:
                self.connect_failures[f"{type(exc).__name__}: {str(exc)[:120]}"] += 1
                await asyncio.sleep(0.5)
                return
            finally:
                self.connecting -= 1
            if listener is None:
                self.connect_failures["the relay closed the connection during the handshake"] += 1
                await asyncio.sleep(0.5)
                return
            self.connect_ms.append((time.monotonic() - began) * 1000)
        self.live.add(stream)
        try:
            if stream.gone.done():
                # The connection went between the handshake and this task's turn (a bot killed
                # just then, and the relay closed at once): picows' callbacks run before the
                # task that awaited ws_connect resumes. Nothing to send on; the record says how.
                return
            stream.start_sending()
            await asyncio.wait([stream.gone, self.stop_future], timeout=lifetime, return_when=asyncio.FIRST_COMPLETED)
            if not await self.may_end(stream):
                return
            if stream.kind == "reset" and not self.stopping:
                await stream.reset()
            else:
                await stream.close_clean()
        finally:
            self.live.discard(stream)
            self.records.append(stream.record())

    async def may_end(self, stream: Stream) -> bool:
        """Wait while a sample holds planned ends; False when the session went meanwhile."""
        while not stream.gone.done() and not self.ends_allowed.is_set():
            allowed = asyncio.ensure_future(self.ends_allowed.wait())
            await asyncio.wait([stream.gone, allowed], return_when=asyncio.FIRST_COMPLETED)
            allowed.cancel()
        return not stream.gone.done()

    async def sender(self) -> None:
        """50 frames a second per open stream, the streams spread over 20 ticks of 1 ms.

        Ticks are due at fixed times; a late loop runs the missed ones back to back, so
        ``max_lag`` says how far behind this process fell (and the send rate shows it)."""
        loop = asyncio.get_running_loop()
        step = 1.0 / RATE / SLOTS
        start = loop.time()
        tick = 0
        while not self.stopping:
            for stream in tuple(self.slots[tick % SLOTS]):
                stream.send_next()
            tick += 1
            due = start + tick * step
            late = loop.time() - due
            if late > self.max_lag:
                self.max_lag = late
            await asyncio.sleep(max(0.0, -late))

    async def killer(self) -> None:
        """Every 20-30 s: SIGKILL one bot, start it again a second later on its port."""
        while True:
            await asyncio.sleep(self.rng.uniform(*KILL_EVERY))
            async with self.quiet:
                if self.stopping:
                    return
                port = self.rng.choice(self.bots.ports)
                print(f"soak: {self.now():6.1f}s kill the bot on :{port}", file=sys.stderr, flush=True)
                await self.bots.kill_and_restart(port)

    # the samples

    async def sampler(self) -> None:
        """A quiet-point sample every ``--sample-every`` seconds, a busy check half way between."""
        every = self.args.sample_every
        while True:
            await asyncio.sleep(every / 2)
            if self.stopping:
                return
            await self.busy_check()
            await asyncio.sleep(every / 2)
            if self.stopping:
                return
            await self.sample()

    async def busy_check(self) -> None:
        """/metrics while sessions come and go: a session is in ``active`` from its admission
        and in ``started`` from its 101, so ended + active - started is the number of sessions
        between the two, each of which is a handshake of this client in flight."""
        self.connecting_max = self.connecting
        m = await self.relay.metrics()
        slack = m["ended"] + m["active"] - m["started"]
        self.busy_checks += 1
        if not 0 <= slack <= self.connecting_max:
            self.fail(f"at {self.now():.0f}s /metrics: ended {m['ended']} + active {m['active']} - started "
                      f"{m['started']} = {slack}, with {self.connecting_max} handshakes in flight", "metrics")

    async def sample(self) -> None:
        """A quiet point, then RSS, descriptors and the metrics' balance (see ``Samples``)."""
        async with self.quiet:
            if self.stopping:
                return
            began = time.monotonic()
            state = await self.quiesce()
            if state is not None:
                self.samples.add(t=round(self.now(), 1), **state)
                self.max_settle = max(self.max_settle, time.monotonic() - began)
                print(f"soak: {self.now():6.1f}s {state['active']} sessions, relay RSS "
                      f"{state['rss'] / 2**20:.1f} MiB, {state['fds']} fds (base {state['base_fds']}), "
                      f"started {state['started']} = ended {state['ended']} + active {state['active']}",
                      file=sys.stderr, flush=True)
            self.ends_allowed.set()

    async def quiesce(self) -> dict | None:
        """Hold planned ends (and bot kills: the caller holds ``quiet``) until every lane has an
        open session and the relay counts exactly those; then sample.

        No session is between its admission and its 101 there (every lane's is open), so the
        relay's counters must balance exactly, in both scrapes: started = ended + active. Frames
        keep flowing; ends held meanwhile follow at once (a quiet point takes tens of ms)."""
        self.ends_allowed.clear()
        streams = self.args.streams
        deadline = time.monotonic() + 20
        while self.open_count() != streams or len(self.live) != streams:
            if time.monotonic() > deadline:
                self.fail(f"no quiet point within 20 s: {self.open_count()} of {streams} sessions open", "quiesce")
                return None
            await asyncio.sleep(0.01)
        deadline = time.monotonic() + 5
        while True:
            m = await self.relay.metrics()
            if m["active"] == streams:
                break
            if time.monotonic() > deadline:
                self.fail(f"at {self.now():.0f}s the relay counts {m['active']} live sessions, the client "
                          f"{streams}, still after 5 s", "quiesce")
                return None
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.02)                    # the scrape's own connection is closed
        rss, fds = proc_rss(self.relay.pid), proc_fds(self.relay.pid)
        after = await self.relay.metrics()
        for scrape in (m, after):
            self.metric_checks += 1
            if scrape["started"] != scrape["ended"] + scrape["active"] or scrape["active"] != streams:
                self.fail(f"at {self.now():.0f}s /metrics: started {scrape['started']} != ended {scrape['ended']} "
                          f"+ active {scrape['active']} (the client has {streams} open)", "metrics")
        return {"rss": rss, "fds": fds, "base_fds": fds - 2 * streams, "active": after["active"],
                "started": after["started"], "ended": after["ended"]}

    # the run

    async def run(self) -> dict:
        duration = self.args.minutes * 60
        connects = asyncio.Semaphore(CONNECTS_AT_ONCE)
        self.t0 = time.monotonic()
        relay_cpu0, bots_cpu0, own_cpu0 = tree_cpu(self.relay.pid), self.bots.cpu(), own_cpu()
        lanes = [asyncio.ensure_future(self.lane(connects)) for _ in range(self.args.streams)]
        helpers = [asyncio.ensure_future(c) for c in (self.sender(), self.killer(), self.sampler())]
        watch = asyncio.ensure_future(self.watch_relay())
        await asyncio.wait([watch, *helpers], timeout=duration, return_when=asyncio.FIRST_EXCEPTION)
        if watch.done():
            watch.result()
        await self.sample()                          # one in the last quarter, whatever the period
        elapsed = self.now()
        relay_cpu1, bots_cpu1, own_cpu1 = tree_cpu(self.relay.pid), self.bots.cpu(), own_cpu()
        async with self.quiet:                       # no kill under way: every bot is up
            self.stopping = True
        self.stop_future.set_result(None)
        self.ends_allowed.set()
        done, pending = await asyncio.wait(lanes, timeout=60)
        if pending:
            self.fail(f"{len(pending)} sessions did not close within 60 s of the end")
        for task in [*helpers, *lanes]:
            if task.done() and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
                at = f" at {Path(where.filename).name}:{where.lineno} ({where.name})" if where else ""
                self.fail(f"the soak's own task failed{at}: {exc!r}", "soak")
        for task in [*helpers, watch, *pending]:
            task.cancel()
        await asyncio.gather(*helpers, watch, *pending, return_exceptions=True)
        return {"elapsed": elapsed, "relay_cpu": relay_cpu1 - relay_cpu0, "bots_cpu": bots_cpu1 - bots_cpu0,
                "own_cpu": own_cpu1 - own_cpu0}

    async def watch_relay(self) -> None:
        while self.relay.alive():
            await asyncio.sleep(0.5)
        raise RuntimeError(f"the relay exited with {self.relay.stop()} (its log: {self.relay.log_path})")

    async def idle_metrics(self) -> dict:
        """The relay's metrics once it has no session left (at most 10 s after the last close)."""
        deadline = time.monotonic() + 10
        while True:
            m = await self.relay.metrics()
            if m["active"] == 0 or time.monotonic() > deadline:
                return m
            await asyncio.sleep(0.05)


# -- the verdict ------------------------------------------------------------------------------------


# What the client saw at the end of a session -> the log's end reasons that agree with it.
AGREEING_ENDS = {"clean": {"closed"}, "reset": {"client lost", "bot lost"}, "relay_closed": {"bot lost"},
                 "clean_interrupted": {"closed", "bot lost"}, "lost": LOST_ENDS}


def check_sessions(soak: Soak, ends: list[dict]) -> dict:
    """Assertions 1 and 3: each opened session has one log line, whose end agrees with the
    client's and whose frame counts fit what the client sent and got back; frames are lost
    only where both sides say the session did not end cleanly."""
    lines: dict[str | None, list[dict]] = {}
    for line in ends:
        lines.setdefault(line.get("session_id"), []).append(line)
    known = {r.session_id for r in soak.records}
    unknown = [sid for sid in lines if sid not in known]
    if unknown:
        soak.fail(f"{len(unknown)} session_end lines for sessions the client never opened, e.g. {unknown[:3]}", "log")
    lost: Counter[str] = Counter()
    for r in soak.records:
        mine = lines.get(r.session_id, [])
        if len(mine) != 1:
            soak.fail(f"session {r.session_id}: {len(mine)} session_end lines (the client saw {r.end})", "log")
            continue
        check_session(soak, r, mine[0], lost)
    return {"lines": len(ends), "unknown": len(unknown), **lost,
            "log_end_reasons": dict(Counter(line.get("end_reason") for line in ends))}


def check_session(soak: Soak, r: Record, line: dict, lost: Counter) -> None:
    """One session against its log line; adds its lost frames, by where they were lost, to ``lost``."""
    reason, up, down = line.get("end_reason"), line.get("frames_up", -1), line.get("frames_down", -1)
    if reason not in AGREEING_ENDS.get(r.end, ()):
        soak.fail(f"session {r.session_id}: the client saw {r.end} (close {r.close_received}), its log line "
                  f"says {reason!r}", "log")
    # Echoes cannot outnumber frames anywhere along the way; only a client that reset may miss
    # what the relay sent it (it was in flight when the client's socket went).
    if not r.sent >= up >= down >= r.received or (r.end != "reset" and down != r.received):
        soak.fail(f"session {r.session_id} ({r.end}, logged {reason!r}): the client sent {r.sent} and got "
                  f"{r.received} back, the log counts {up} up and {down} down", "frames")
        return
    if r.sent == r.received:
        return
    if reason not in LOST_ENDS or r.end in ("clean", "clean_interrupted"):
        soak.fail(f"session {r.session_id}: {r.sent - r.received} frames lost in a session the client saw "
                  f"{r.end} and the log {reason!r}", "frames")
        return
    lost["frames_lost_accounted"] += r.sent - r.received
    lost["sessions_with_loss"] += 1
    lost["lost_client_to_relay"] += r.sent - up
    lost["lost_at_bot"] += up - down
    lost["lost_relay_to_client"] += down - r.received


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def check_metrics(soak: Soak, final: dict, ends: list[dict]) -> None:
    """Assertion 4 at the end, with the relay idle: started = ended = what the client opened,
    outcomes as the log says, frames per direction as the log lines add up."""
    opened = len(soak.records)
    if final["active"] != 0:
        soak.fail(f"at the end /metrics counts {final['active']} live sessions, the client none", "metrics")
    if final["started"] != final["ended"] + final["active"]:
        soak.fail(f"at the end /metrics: started {final['started']} != ended {final['ended']} + active "
                  f"{final['active']}", "metrics")
    if final["started"] != opened:
        soak.fail(f"/metrics counts {final['started']} sessions started, the client opened {opened}", "metrics")
    logged = Counter(line.get("end_reason") for line in ends)
    if dict(final["outcomes"]) != dict(logged):
        soak.fail(f"/metrics outcomes {dict(final['outcomes'])} != the log's end reasons {dict(logged)}", "metrics")
    for direction, key in (("client_to_bot", "frames_up"), ("bot_to_client", "frames_down")):
        total = sum(line.get(key, 0) for line in ends)
        if final["frames"].get(direction) != total:
            soak.fail(f"/metrics counts {final['frames'].get(direction)} frames {direction}, the log lines "
                      f"{total}", "metrics")


def check_resources(soak: Soak, idle: dict) -> dict:
    """Assertion 2 (see ``Samples``), and the idle relay's descriptors against the loaded base."""
    growth = soak.samples.growth()
    if not growth:
        soak.fail("too few samples to compare the second half (a longer run, or --sample-every lower)", "samples")
        return growth
    if growth["rss_growth_kib"] > 2048:
        soak.fail(f"relay RSS grew {growth['rss_growth_kib']:.0f} KiB over the second half "
                  f"({growth['rss_mid_mib']} -> {growth['rss_end_mib']} MiB at {soak.args.streams} sessions)", "memory")
    if growth["fds_growth"] > 0:
        soak.fail(f"relay descriptors beyond two per session grew by {growth['fds_growth']} over the second "
                  f"half ({growth['base_fds_mid']} -> {growth['base_fds_end']})", "fds")
    if idle["fds"] != growth["base_fds_end"]:
        soak.fail(f"the idle relay holds {idle['fds']} descriptors, {growth['base_fds_end']} beyond two per "
                  f"session under load", "fds")
    return growth


def verdict(soak: Soak, run: dict, final: dict, idle: dict, log: tuple) -> dict:
    """Every assertion over what the run left; the summary's figures."""
    ends, other_events, log_errors = log
    sessions = check_sessions(soak, ends)
    check_metrics(soak, final, ends)
    for line in log_errors[:20]:
        soak.fail(f"relay log: {line}", "relay_log")
    for failure, count in soak.connect_failures.items():
        soak.fail(f"{count} handshakes failed: {failure}", "connect")
    growth = check_resources(soak, idle)
    records = soak.records
    sent, received = sum(r.sent for r in records), sum(r.received for r in records)
    due = soak.open_seconds * RATE
    send_ratio = sent / due if due else 0.0
    if send_ratio < 0.95:
        soak.fail(f"the client sent {sent} frames of {due:.0f} due ({send_ratio:.1%}), {soak.max_lag:.1f} s behind "
                  f"at worst: this process cannot drive {soak.args.streams} streams here", "client")
    elapsed = run["elapsed"]
    return {
        "ok": not soak.failures,
        "minutes": soak.args.minutes, "seconds_run": round(elapsed, 1), "streams": soak.args.streams,
        "seed": soak.args.seed,
        "sessions_started": len(records), "sessions_ended": sum(1 for r in records if r.end != "open"),
        "sessions_per_s": round(len(records) / elapsed, 2),
        "client_ends": dict(Counter(r.end for r in records)), "log_end_reasons": sessions["log_end_reasons"],
        "log_session_lines": sessions["lines"], "log_other_events": dict(other_events),
        "frames_sent": sent, "frames_received": received, "frames_lost": sent - received,
        "frames_lost_accounted": sessions.get("frames_lost_accounted", 0),
        "sessions_with_loss": sessions.get("sessions_with_loss", 0),
        "lost_client_to_relay": sessions.get("lost_client_to_relay", 0),
        "lost_at_bot": sessions.get("lost_at_bot", 0),
        "lost_relay_to_client": sessions.get("lost_relay_to_client", 0),
        "echo_errors": sum(r.bad for r in records),
        "client_resets": sum(1 for r in records if r.end == "reset"),
        "bot_kills": soak.bots.kills, "bot_restarts": soak.bots.restarts,
        "handshake_failures": sum(soak.connect_failures.values()),
        "metrics": {"started": final["started"], "ended": final["ended"], "active": final["active"],
                    "outcomes": dict(final["outcomes"]), "frames_total": final["frames"],
                    "strict_checks_at_samples": soak.metric_checks, "bounded_checks_between": soak.busy_checks},
        **growth,
        "relay_fds_idle": idle["fds"], "relay_rss_idle_mib": round(idle["rss"] / 2**20, 2),
        "relay_rss_max_mib": round(max((s["rss"] for s in soak.samples.items), default=0) / 2**20, 2),
        "samples": len(soak.samples.items), "max_settle_s": round(soak.max_settle, 2),
        "connect_ms_p50": percentile(soak.connect_ms, 0.5), "connect_ms_p99": percentile(soak.connect_ms, 0.99),
        "send_rate_ratio": round(send_ratio, 4), "client_max_lag_ms": round(soak.max_lag * 1000, 1),
        "client_rss_mib": round(proc_rss(os.getpid()) / 2**20, 1),
        "cpu_percent_of_one_core": {"client": round(100 * run["own_cpu"] / elapsed, 1),
                                    "relay": round(100 * run["relay_cpu"] / elapsed, 1),
                                    "bots": round(100 * run["bots_cpu"] / elapsed, 1)},
        "failure_counts": dict(soak.failure_kinds),
        "failures": soak.failures,
    }


async def soak_main(args, relay: RelayProcess, bots: Bots) -> dict:
    soak = Soak(args, relay, bots)
    run = await soak.run()
    final = await soak.idle_metrics()
    await asyncio.sleep(0.2)
    idle = {"fds": proc_fds(relay.pid), "rss": proc_rss(relay.pid)}
    code = relay.stop()
    if code != 0:
        soak.fail(f"the relay exited with {code} on SIGTERM", "relay_log")
    return verdict(soak, run, final, idle, read_log(relay.log_path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, required=True, help="how long the load runs (float)")
    parser.add_argument("--streams", type=int, default=500, help="concurrent audio sessions")
    parser.add_argument("--turnover", type=float, default=10.0, help="planned session ends per second")
    parser.add_argument("--bots", type=int, default=2, help="echo bot instances")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between quiet-point samples")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", help="keep the config and logs in this directory")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(1 << 31)
    if args.minutes <= 0 or args.streams < 1 or args.bots < 2:
        parser.error("--minutes must be positive, --streams at least 1, --bots at least 2")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="wsrelay-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    bots = Bots(workdir, args.bots)
    relay = RelayProcess(workdir, bots.ports)
    try:
        bots.start_all()
        relay.start()
        summary = uvloop.run(asyncio.wait_for(soak_main(args, relay, bots), args.minutes * 60 + 240))
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"soak: {exc or type(exc).__name__} (logs in {workdir})", file=sys.stderr)
        return 2
    finally:
        relay.stop()
        bots.stop()
    summary["workdir"] = str(workdir)
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    for failure in summary["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    if summary["failures"]:
        print(f"soak: {sum(summary['failure_counts'].values())} failed assertions; logs in {workdir}", file=sys.stderr)
        return 1
    if not args.keep:
        for path in workdir.iterdir():
            path.unlink()
        workdir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
