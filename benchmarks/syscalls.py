"""System calls per relayed frame under audio load, or per session: wsrelay against nginx and HAProxy.

    python benchmarks/syscalls.py [--conns 1000] [--relays wsrelay,nginx,haproxy]
    python benchmarks/syscalls.py --setup [--relays wsrelay,nginx,haproxy]

For each relay: the picows echo bot, the relay, and the load generator's ``audio`` workload
(``--conns`` streams, 50 messages/s of 640 B each way). Over the middle of the measured
window, ``perf stat`` counts the relay process tree's system calls by kernel tracepoint
(no ptrace, so the relay runs at full speed, unlike under ``strace -c``). Reported per
relayed frame (each echoed message is two frames through the relay: up and down): reads,
sends, epoll waits, and frames per read, the figure that write coalescing or batched reads
would change. With ``--setup``, the load generator's ``setup`` workload instead (4 connections
opening and closing sessions back to back) and every system call by name, per session: where
the kernel's share of a session's setup goes. Nothing is asserted: it is a measurement for
docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import HERE, PY, Relay, ensure_packages, free_port, run_workload, wait_port  # noqa: E402

CALLS = ["read", "recvfrom", "readv", "write", "sendto", "sendmsg", "writev", "epoll_wait", "epoll_pwait"]


def count_syscalls(pid: int, seconds: float, calls: list[str] | None = CALLS) -> dict[str, int]:
    """System calls by ``pid`` (and its threads and children) over ``seconds``, from perf's
    tracepoints: those in ``calls``, or every one (None)."""
    events = ",".join(f"syscalls:sys_enter_{c}" for c in calls) if calls else "syscalls:sys_enter_*"
    out = subprocess.run(["perf", "stat", "-x", ",", "-e", events, "--pid", ",".join(_tree(pid)),
                          "--", "sleep", str(seconds)], capture_output=True, text=True)
    counts = {}
    for line in out.stderr.splitlines():
        fields = line.split(",")
        match = re.search(r"sys_enter_(\w+)", line)
        if match and fields[0].strip().isdigit():
            if int(fields[0]) or calls:
                counts[match.group(1)] = int(fields[0])
    return counts


def _tree(pid: int) -> list[str]:
    from loadgen import tree_pids
    return [str(p) for p in tree_pids(pid)]


def _count_during(name: str, bot_port: int, bot_pid: int, workdir: Path, workload: str, *, delay: float,
                  window: float, calls: list[str] | None, **params) -> tuple[dict, dict[str, int]]:
    """Run ``workload`` through relay ``name``, counting its system calls over ``window`` seconds
    from ``delay`` seconds in; the workload's result and the counts."""
    relay = Relay(name, bot_port, workdir)
    relay.start()
    try:
        assert relay.proc is not None
        pid = relay.proc.pid
        counted: dict[str, int] = {}
        timer = threading.Timer(delay, lambda: counted.update(count_syscalls(pid, window, calls)))
        timer.start()
        result = run_workload(relay, bot_pid, workload, **params)
        timer.join()
    finally:
        relay.stop()
    return result, counted


def measure(name: str, bot_port: int, bot_pid: int, workdir: Path, conns: int) -> dict:
    # The workload: 2 s warm-up, then 6 s measured; the count covers 4 s in its middle.
    window = 4.0
    result, counted = _count_during(name, bot_port, bot_pid, workdir, "audio", delay=3.0, window=window,
                                    calls=CALLS, conns=conns, rate=50, size=640, seconds=6, warmup=2)
    frames = 2 * result["messages_per_s"] * window        # up and down, over the counted window
    reads = sum(counted.get(c, 0) for c in ("read", "recvfrom", "readv"))
    sends = sum(counted.get(c, 0) for c in ("write", "sendto", "sendmsg", "writev"))
    waits = sum(counted.get(c, 0) for c in ("epoll_wait", "epoll_pwait"))
    return {"relay": name, "frames": round(frames), "reads_per_frame": round(reads / frames, 3),
            "sends_per_frame": round(sends / frames, 3), "epoll_waits_per_frame": round(waits / frames, 4),
            "frames_per_read": round(frames / reads, 3) if reads else None,
            "relay_cpu_us_per_frame": round(result["relay_cpu_us_per_frame"], 2),
            "p99_ms": round(result["p99_ms"], 1), "counts": counted}


def measure_setup(name: str, bot_port: int, bot_pid: int, workdir: Path) -> dict:
    """Every system call of the relay per session, over 3 s in the middle of a 5 s setup run."""
    window = 3.0
    result, counted = _count_during(name, bot_port, bot_pid, workdir, "setup", delay=1.0, window=window,
                                    calls=None, conns=4, seconds=5)
    sessions = result["sessions_per_s"] * window
    per_session = {call: round(n / sessions, 2) for call, n in sorted(counted.items(), key=lambda kv: -kv[1])
                   if n / sessions >= 0.05}
    return {"relay": name, "sessions": round(sessions), "syscalls_per_session": round(sum(counted.values()) / sessions, 1),
            "relay_cpu_ms_per_session": round(result["relay_cpu_ms_per_session"], 3), "by_call": per_session}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conns", type=int, default=1000)
    parser.add_argument("--relays", default="wsrelay,nginx,haproxy")
    parser.add_argument("--setup", action="store_true", help="per session (setup workload), every call by name")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if not shutil.which("perf"):
        print("perf is not installed (Debian: linux-perf)", file=sys.stderr)
        return 2
    ensure_packages()
    workdir = Path(tempfile.mkdtemp(prefix="wsrelay-syscalls-"))
    bot_port = free_port()
    bot = subprocess.Popen([PY, str(HERE / "echo_bot.py"), str(bot_port)])
    rows = []
    try:
        wait_port(bot_port, bot)
        for name in args.relays.split(","):
            rows.append(measure_setup(name, bot_port, bot.pid, workdir) if args.setup
                        else measure(name, bot_port, bot.pid, workdir, args.conns))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        bot.terminate()
        bot.wait()
    if args.setup:
        print_setup(rows)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0
    keys = ["reads_per_frame", "sends_per_frame", "epoll_waits_per_frame", "frames_per_read",
            "relay_cpu_us_per_frame", "p99_ms"]
    print(f"audio, {args.conns} streams × 50 msg/s × 640 B each way; per relayed frame")
    print("| relay | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for row in rows:
        print(f"| {row['relay']} | " + " | ".join(str(row[k]) for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def print_setup(rows: list[dict]) -> None:
    """System calls per session, the busiest first, one column per relay."""
    calls = sorted({c for row in rows for c in row["by_call"]},
                   key=lambda c: -max(row["by_call"].get(c, 0) for row in rows))
    print("setup (4 connections, back to back); system calls per session")
    print("| call | " + " | ".join(row["relay"] for row in rows) + " |")
    print("|---" * (len(rows) + 1) + "|")
    print("| **all** | " + " | ".join(f"**{row['syscalls_per_session']}**" for row in rows) + " |")
    for call in calls:
        print(f"| {call} | " + " | ".join(str(row["by_call"].get(call, "-")) for row in rows) + " |")
    print("| relay CPU per session (ms) | " + " | ".join(str(row["relay_cpu_ms_per_session"]) for row in rows) + " |")


if __name__ == "__main__":
    sys.exit(main())
