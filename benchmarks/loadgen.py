"""Load generator for the end-to-end benchmark: picows clients on uvloop, one process.

Each message carries its send time (``time.perf_counter_ns()``, CLOCK_MONOTONIC) in its
first 8 bytes; the echo bot sends it back unchanged, so latency is measured end to end
by the process that sent it. The relay's CPU and memory are read from /proc for its
whole process tree (``--pid``) around the measured window. Prints one JSON object.

    python loadgen.py pingpong URL --pid PID [--conns 10] [--size 640] [--seconds 5]
    python loadgen.py audio    URL --pid PID [--conns 1000] [--rate 50] [--size 640] [--seconds 5]
    python loadgen.py large    URL --pid PID [--conns 4] [--size 1048576] [--seconds 5]
    python loadgen.py idle     URL --pid PID [--conns 5000]
    python loadgen.py setup    URL --pid PID [--conns 4] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import struct
import sys
import time

import uvloop
from picows import WSListener, WSMsgType, ws_connect

CLK_TCK = os.sysconf("SC_CLK_TCK")
STAMP = struct.Struct("!Q")


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc, no dependency)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    result, todo = [], [pid]
    while todo:
        p = todo.pop()
        result.append(p)
        todo.extend(children.get(p, []))
    return result


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by the process tree of ``pid``."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / CLK_TCK


def tree_rss(pid: int) -> int:
    """Resident memory (bytes) of the process tree of ``pid``."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


class Client(WSListener):
    def __init__(self, loadgen: "LoadGen") -> None:
        self.lg = loadgen
        self.transport = None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type not in (WSMsgType.BINARY, WSMsgType.TEXT):
            return
        self.lg.on_echo(self, frame)


class LoadGen:
    def __init__(self, args) -> None:
        self.args = args
        self.received = 0
        self.latencies: list[int] = []
        self.record = False
        self.pingpong = False
        self.payload = b"\0" * max(args.size - 8, 0)

    def message(self) -> bytes:
        return STAMP.pack(time.perf_counter_ns()) + self.payload

    def on_echo(self, client: Client, frame) -> None:
        self.received += 1
        if self.record:
            sent = STAMP.unpack_from(frame.get_payload_as_memoryview()[:8])[0]
            self.latencies.append(time.perf_counter_ns() - sent)
        if self.pingpong:
            client.transport.send(WSMsgType.BINARY, self.message())

    async def connect(self, n: int, concurrency: int = 50) -> list[Client]:
        clients: list[Client] = []
        sem = asyncio.Semaphore(concurrency)

        async def one():
            async with sem:
                _, client = await ws_connect(lambda: Client(self), self.args.url, enable_auto_pong=True,
                                             max_frame_size=64 << 20, use_aiofastnet=False,
                                             websocket_handshake_timeout=30)
                clients.append(client)
        await asyncio.gather(*(one() for _ in range(n)))
        return clients


def percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] / 1e6      # ms


async def run_pingpong(args, lg: LoadGen) -> dict:
    clients = await lg.connect(args.conns)
    lg.pingpong = True
    for c in clients:
        c.transport.send(WSMsgType.BINARY, lg.message())
    await asyncio.sleep(args.warmup)
    lg.record = True
    n0, cpu0, t0 = lg.received, tree_cpu(args.pid), time.perf_counter()
    await asyncio.sleep(args.seconds)
    n1, cpu1, t1 = lg.received, tree_cpu(args.pid), time.perf_counter()
    lg.pingpong = False
    trips = n1 - n0
    return {"round_trips_per_s": trips / (t1 - t0), "relay_cpu_us_per_frame": _per_frame(cpu1 - cpu0, 2 * trips),
            "relay_cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
            "p50_ms": percentile(lg.latencies, 0.5), "p99_ms": percentile(lg.latencies, 0.99)}


def _per_frame(cpu: float, frames: int):
    return cpu * 1e6 / frames if frames else None


async def run_audio(args, lg: LoadGen) -> dict:
    clients = await lg.connect(args.conns)
    period = 1.0 / args.rate
    slots = 20                                   # spread the connections over the period
    groups = [clients[i::slots] for i in range(slots)]
    sent = 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    measure_from = start + args.warmup
    end = measure_from + args.seconds
    cpu0 = None
    tick = 0
    while True:
        now = loop.time()
        if cpu0 is None and now >= measure_from:
            lg.record = True
            cpu0, t0, sent0, received0 = tree_cpu(args.pid), time.perf_counter(), sent, lg.received
        if now >= end:
            break
        for c in groups[tick % slots]:
            c.transport.send(WSMsgType.BINARY, lg.message())
            sent += 1
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * period / slots - loop.time()))
    cpu1, t1, sent1 = tree_cpu(args.pid), time.perf_counter(), sent
    lg.record = False
    received1 = lg.received
    deadline = loop.time() + 3
    while lg.received < sent and loop.time() < deadline:
        await asyncio.sleep(0.05)
    echoed = received1 - received0
    return {"messages_per_s": (sent1 - sent0) / (t1 - t0),
            "relay_cpu_us_per_frame": _per_frame(cpu1 - cpu0, 2 * echoed),
            "relay_cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
            "p50_ms": percentile(lg.latencies, 0.5), "p99_ms": percentile(lg.latencies, 0.99),
            "lost": sent - lg.received, "sent": sent}


async def run_large(args, lg: LoadGen) -> dict:
    result = await run_pingpong(args, lg)
    return {"messages_per_s": result["round_trips_per_s"],
            "relay_cpu_us_per_frame": result["relay_cpu_us_per_frame"],
            "mib_per_s": result["round_trips_per_s"] * args.size / 2**20}


async def run_idle(args, lg: LoadGen) -> dict:
    before = tree_rss(args.pid)
    await lg.connect(args.conns)
    await asyncio.sleep(1.0)
    after = tree_rss(args.pid)
    return {"sessions": args.conns, "kib_per_session": (after - before) / 1024 / args.conns}


async def run_setup(args, lg: LoadGen) -> dict:
    opened = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + args.seconds

    async def worker():
        nonlocal opened
        while loop.time() < end:
            transport, _ = await ws_connect(lambda: Client(lg), args.url, use_aiofastnet=False)
            transport.send_close(1000)
            transport.disconnect()
            await transport.wait_disconnected()
            opened += 1
    cpu0, t0 = tree_cpu(args.pid), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.conns)))
    cpu1, t1 = tree_cpu(args.pid), time.perf_counter()
    return {"sessions_per_s": opened / (t1 - t0), "relay_cpu_ms_per_session": (cpu1 - cpu0) * 1e3 / max(opened, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=["pingpong", "audio", "large", "idle", "setup"])
    parser.add_argument("url")
    parser.add_argument("--pid", type=int, required=True, help="relay process (tree) to measure")
    parser.add_argument("--conns", type=int, default=10)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--rate", type=float, default=50)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    lg = LoadGen(args)
    runner = {"pingpong": run_pingpong, "audio": run_audio, "large": run_large,
              "idle": run_idle, "setup": run_setup}[args.workload]
    result = uvloop.run(asyncio.wait_for(runner(args, lg), args.seconds + args.warmup + 120))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()
    os._exit(0)                                    # do not wait for thousands of closes


if __name__ == "__main__":
    main()
