"""User-space instructions per session of setup, counted by callgrind: a figure a noisy machine
does not move.

    python benchmarks/setup_instructions.py [--sessions 300]

Runs the relay under ``valgrind --tool=callgrind`` twice, with the picows echo bot as its
agent: once opening and closing ``--sessions`` sessions (4 at a time, as e2e.py's ``setup``
workload does, after 20 to warm up), once with the 20 alone. The difference of the two totals,
divided by ``--sessions``, is what one session's accept, head, bot connection, hand-over, close
handshakes, end, log line and metrics cost in instructions: the relay's own work, without the
kernel's (which ``syscalls.py --setup`` counts in system calls). Two runs of the same build
agree to about 0.1 %. Nothing is asserted: it is a measurement for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import HERE, PY, free_port, wait_port  # noqa: E402

WARMUP = 20


async def open_sessions(url: str, n: int) -> None:
    from picows import WSListener, ws_connect

    left = n

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            transport, _ = await ws_connect(WSListener, url, use_aiofastnet=False)
            transport.send_close(1000)
            transport.disconnect()
            await transport.wait_disconnected()

    await asyncio.gather(*(worker() for _ in range(4)))


def instructions(sessions: int, bot_port: int, workdir: Path) -> int:
    """Callgrind's total for a relay process that served WARMUP + ``sessions`` sessions."""
    import uvloop

    port = free_port()
    config = workdir / "relay.toml"
    config.write_text(f'[relay]\nhost = "127.0.0.1"\nport = {port}\nadmin_port = 0\ndrain_seconds = 0\n'
                      f'[[agents]]\nname = "bench"\norganization = "perf"\n'
                      f'upstreams = ["ws://127.0.0.1:{bot_port}/"]\n')
    out = workdir / f"callgrind.{sessions}.out"
    relay = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                              PY, "-m", "wsrelay", "serve", "--config", str(config), "--log-format", "json"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, relay, timeout=120)
        url = f"ws://127.0.0.1:{port}/ws/generic/bench.perf"
        uvloop.run(open_sessions(url, WARMUP))
        if sessions:
            uvloop.run(open_sessions(url, sessions))
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(120)
    match = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no total in {out}")
    return int(match.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=300)
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is not installed (Debian: valgrind)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="wsrelay-instructions-"))
    bot_port = free_port()
    bot = subprocess.Popen([PY, str(HERE / "echo_bot.py"), str(bot_port)])
    try:
        wait_port(bot_port, bot)
        base = instructions(0, bot_port, workdir)
        total = instructions(args.sessions, bot_port, workdir)
    finally:
        bot.terminate()
        bot.wait()
    per_session = (total - base) / args.sessions
    print(f"{per_session / 1e6:.3f} million user-space instructions per session "
          f"({args.sessions} sessions; callgrind totals {total:,} and {base:,} without them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
