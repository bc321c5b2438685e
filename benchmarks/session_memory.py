"""What an idle relayed session costs in memory, and where it goes.

    python benchmarks/session_memory.py [--sessions 5000] [--pump cython|python] [--json out.json]

Runs the relay in this process (the bot and the clients are other processes, so only the
relay's memory is counted), opens N idle sessions through it, and reports per session:

- RSS growth of the relay process (what the operator pays; includes the kernel-independent
  part of every allocator: Python's, libc's malloc for picows' and uvloop's buffers);
- tracemalloc's growth, by file (what Python's allocators handed out, and from where);
- the live objects that appeared, by type, with ``sys.getsizeof`` (shallow sizes).

Nothing here is asserted: it is a measurement for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import resource
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent

CLIENT = r"""
import asyncio, sys, resource
import uvloop
from picows import WSListener, ws_connect
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def main(url, n):
    transports = []
    async def one():
        t, _ = await ws_connect(WSListener, url, use_aiofastnet=False)
        transports.append(t)
    for start in range(0, n, 200):
        await asyncio.gather(*(one() for _ in range(min(200, n - start))))
    print("ready", len(transports), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for t in transports:
        t.disconnect()
uvloop.run(main(sys.argv[1], int(sys.argv[2])))
"""


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(wanted, hard), max(wanted, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def type_name(obj: object) -> str:
    cls = type(obj)
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls.__name__)}"


def live_types() -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for obj in gc.get_objects():
        counts[type_name(obj)] += 1
    return counts


def type_sizes() -> dict[str, int]:
    sizes: dict[str, int] = collections.defaultdict(int)
    for obj in gc.get_objects():
        try:
            sizes[type_name(obj)] += sys.getsizeof(obj)
        except Exception:
            pass
    return sizes


async def measure(n: int, pump: str | None, trace: bool) -> dict:
    from wsrelay.config import AgentConfig, Config, RelayConfig
    from wsrelay.edge.relay import Relay

    bot_port = free_port()
    bot = subprocess.Popen([sys.executable, str(HERE / "echo_bot.py"), str(bot_port)])
    try:
        time.sleep(1.0)
        config = Config(relay=RelayConfig(host="127.0.0.1", port=0, admin_port=0),
                        agents=(AgentConfig("bench", "perf", (f"ws://127.0.0.1:{bot_port}/",)),))
        relay = Relay(config, pump=pump)
        await relay.start()
        url = f"ws://127.0.0.1:{relay.port}/ws/generic/bench.perf"
        # Warm up: the first sessions import and allocate what every later one shares.
        await _open(url, 50)
        await asyncio.sleep(0.5)
        gc.collect()
        if trace:           # tracemalloc's own bookkeeping grows RSS: RSS is read in a run without it
            types0, sizes0 = live_types(), type_sizes()
            tracemalloc.start(1)
            snap0 = tracemalloc.take_snapshot()
        rss0 = rss_bytes()
        client = await _open(url, n, keep=True)
        await asyncio.sleep(1.0)
        gc.collect()
        rss1 = rss_bytes()
        if trace:
            snap1 = tracemalloc.take_snapshot()
            tracemalloc.stop()
            types1, sizes1 = live_types(), type_sizes()
        live = len(relay.sessions)
        client.stdin.write(b"\n")
        await client.stdin.drain()
        await client.wait()
        await relay.stop()
    finally:
        bot.kill()
    result = {"sessions": n, "live_sessions": live, "pump": pump or "default",
              "rss_bytes_per_session": (rss1 - rss0) / n}
    if not trace:
        return result
    by_file = snap1.compare_to(snap0, "filename")
    files = [(Path(s.traceback[0].filename).as_posix().split("site-packages/")[-1], s.size_diff)
             for s in by_file if s.size_diff > 0][:12]
    grown = {t: types1[t] - types0.get(t, 0) for t in types1 if types1[t] - types0.get(t, 0) >= n // 2}
    objects = sorted(((t, c, sizes1.get(t, 0) - sizes0.get(t, 0)) for t, c in grown.items()),
                     key=lambda r: -r[2])
    traced = sum(s.size_diff for s in by_file)
    return {
        **result,
        "traced_bytes_per_session": traced / n,
        "by_file": [(f, d / n) for f, d in files],
        "objects": [(t, c / n, s / n) for t, c, s in objects[:40]],
    }


async def _open(url: str, n: int, keep: bool = False):
    client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, url, str(n),
                                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdout is not None
    line = await asyncio.wait_for(client.stdout.readline(), 300)
    assert line.startswith(b"ready"), line
    if keep:
        return client
    client.stdin.write(b"\n")
    await client.stdin.drain()
    await client.wait()
    return None


def show(r: dict) -> None:
    print(f"\n{r['sessions']} idle sessions ({r['live_sessions']} live in the relay), pump {r['pump']}")
    print(f"  RSS per session:        {r['rss_bytes_per_session'] / 1024:.2f} KiB")
    if "traced_bytes_per_session" not in r:
        return
    print(f"  tracemalloc per session: {r['traced_bytes_per_session'] / 1024:.2f} KiB (Python's allocators)")
    print("  by file (bytes per session):")
    for f, b in r["by_file"]:
        print(f"    {b:8.0f}  {f}")
    print("  objects per session (count, shallow bytes from sys.getsizeof):")
    for t, c, s in r["objects"]:
        print(f"    {c:5.2f}  {s:7.0f}  {t}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[5000])
    parser.add_argument("--pump", choices=["cython", "python"], default=None)
    parser.add_argument("--json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)      # internal: one measurement, JSON out
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import uvloop
    if args.one:
        raise_fd_limit(2 * args.one + 1000)
        print(json.dumps(uvloop.run(measure(args.one, args.pump, trace=args.trace))))
        return 0
    # Each measurement in a fresh process: memory a previous one freed would be reused, and
    # the next one's RSS would grow by less than its sessions cost.
    results = []
    for n, trace in [(n, False) for n in args.sessions] + [(args.sessions[0], True)]:
        command = [sys.executable, __file__, "--one", str(n)] + (["--trace"] if trace else [])
        if args.pump:
            command += ["--pump", args.pump]
        out = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            print(f"{n} sessions: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        if trace:
            print("\nwith tracemalloc (its own bookkeeping makes RSS meaningless in this run):")
        show(r)
        results.append(r)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"\n(open files limit here: {hard}; a relayed session holds two descriptors)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
