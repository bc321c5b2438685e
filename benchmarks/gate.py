"""The CI benchmark gate: counts that a busy machine does not move, and ratios to nginx as figures.

    python benchmarks/gate.py                  # what `make bench-gate` (and so `make test`) runs
    python benchmarks/gate.py --counts-only    # the counts alone (about a minute)
    python benchmarks/gate.py --record         # measure 3 times, write the medians as this environment's baseline

**What fails the gate: counts.** For each pump (the compiled one and its pure-Python twin)
the relay serves the picows echo bot to a client that does one thing at a time, and two
things are counted in the relay process:

- user-space instructions, with callgrind (``valgrind --tool=callgrind``; the counters are
  dumped around each measured window with ``callgrind_control``, so one relay start serves
  every window);
- system calls, with ``perf stat`` over a whole native run of the relay (start, the same
  warm-up, one window, shutdown), once per window: every call (``raw_syscalls:sys_enter``)
  and, apart, the event loop's waits (``epoll_wait``/``epoll_pwait``/``epoll_pwait2``).

Three windows, each after the same warm-up: ``one`` (one session with one round trip),
``sessions`` (N + 1 such sessions, one after the other) and ``frames`` (one session with
K + 1 round trips of 640-byte binary messages). Differences cancel what every window shares
(start, warm-up, one session, the end of a window), so::

    per session = (sessions - one) / N          # accept, head, bot connect, 101s, a round trip, close, log, metrics
    per frame   = (frames - one) / (2 K)        # a round trip is two relayed frames, one each way

A machine busy with something else changes how long these take, not how many instructions
or system calls they need. Instructions agree between runs to within about 1 % (the
garbage collector's passes fall a little differently; per frame, the fewest of several
sessions counts, see ``count_instructions``). System calls other than the loop's
waits are exact: the same integer per session and per frame in every run. The waits are
not: how many a session needs depends on whether the bot's answer is already there when
the relay next waits (9 to 12 a session, run to run), so they are printed as a figure and
left out of the gated count. Each gated count is compared with ``benchmarks/baseline.json``
and fails above ``baseline x tolerance``: 5 % for instructions, 1 % for system calls (one
more call per session fails it).

A baseline holds for one Python minor version and one set of the packages that run in the
relay's hot path (``GATED_PACKAGES``, pinned for the test environment by
``benchmarks/constraints.txt``). Measured with another, the counts are not comparable: the
gate says so and exits 2 instead of passing or failing on numbers that mean nothing.

**What is printed, and fails only when it is clearly real: ratios to nginx.** e2e.py's
quick pingpong, audio and setup workloads, wsrelay and nginx in interleaved rounds, each
ratio the median of per-round ratios. Times move with whatever else the machine runs, so a
ratio over its limit fails the gate only when it is over in three consecutive runs of
that workload (the first run and two re-runs of it alone).

Exit status: 0 passed, 1 a regression, 2 the gate could not measure or compare.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402
from e2e import HERE, PY, free_port, wait_port  # noqa: E402
from loadgen import tree_cpu  # noqa: E402

BASELINE = HERE / "baseline.json"
PUMPS = ("cython", "python")
GATED_PACKAGES = ("picows", "uvloop", "httptools", "prometheus-client", "Cython", "msgspec")
COUNTS = ("instructions_per_session", "instructions_per_frame", "syscalls_per_session", "syscalls_per_frame")
SIZE = 640                 # bytes per message: a web client's 20 ms of 16 kHz PCM
WARMUP_SESSIONS = 10
WARMUP_ROUND_TRIPS = 100


@dataclass(frozen=True)
class Plan:
    """How much each window does, per counting tool (callgrind is about 50 times slower)."""

    sessions: int          # N: sessions beyond the first
    round_trips: int       # K: round trips beyond the first


PLANS = {"instructions": Plan(sessions=100, round_trips=2000), "syscalls": Plan(sessions=200, round_trips=2000)}
WAITS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
WINDOWS = ("one", "sessions", "frames")
FRAME_WINDOWS = 8          # instructions: the frames window this many times, a session each; the fewest count
IDLE_SECONDS = 4.0         # how long the idle rate is measured (callgrind)


# --- the client: one thing at a time ---------------------------------------------------------

async def _session(url: str, round_trips: int) -> None:
    """One session: connect, ``round_trips`` 640-byte round trips, a 1000 close, wait for the end."""
    from picows import WSListener, WSMsgType, ws_connect

    class Client(WSListener):
        def __init__(self) -> None:
            self.echo: asyncio.Future | None = None

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type == WSMsgType.BINARY and self.echo is not None and not self.echo.done():
                self.echo.set_result(frame.payload_size)

    transport, client = await ws_connect(Client, url, use_aiofastnet=False)
    payload = bytes(SIZE)
    loop = asyncio.get_running_loop()
    for _ in range(round_trips):
        client.echo = loop.create_future()
        transport.send(WSMsgType.BINARY, payload)
        if await asyncio.wait_for(client.echo, 30) != SIZE:
            raise RuntimeError("the echo came back with another size")
    transport.send_close(1000)
    await asyncio.wait_for(transport.wait_disconnected(), 30)


async def drive(url: str, sessions: int, round_trips: int) -> None:
    for _ in range(sessions):
        await _session(url, round_trips)


def run_client(url: str, window: str, plan: Plan | None) -> None:
    """The warm-up (``plan`` None) or one window, each session after the one before."""
    import uvloop

    if plan is None:
        uvloop.run(_warm_up(url))
    elif window == "one":
        uvloop.run(drive(url, 1, 1))
    elif window == "sessions":
        uvloop.run(drive(url, plan.sessions + 1, 1))
    else:
        uvloop.run(drive(url, 1, plan.round_trips + 1))


async def _warm_up(url: str) -> None:
    await drive(url, WARMUP_SESSIONS, 1)
    await drive(url, 1, WARMUP_ROUND_TRIPS)


# --- the relay under a counting tool --------------------------------------------------------

def relay_config(workdir: Path, port: int, bot_port: int) -> Path:
    config = workdir / f"relay-{port}.toml"
    config.write_text(f'[relay]\nhost = "127.0.0.1"\nport = {port}\nadmin_port = 0\ndrain_seconds = 0\n'
                      f'[[agents]]\nname = "bench"\norganization = "perf"\n'
                      f'upstreams = ["ws://127.0.0.1:{bot_port}/"]\n')
    return config


def relay_env(pump: str) -> dict[str, str]:
    """The relay's environment: ``pump`` chosen, and string hashing fixed, since the random seed
    moves dict probing, and so instruction counts, from one process to the next."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    if pump == "python":
        env["WSRELAY_PURE_PYTHON"] = "1"
    else:
        env.pop("WSRELAY_PURE_PYTHON", None)
    return env


def settle(pid: int, quiet: float = 0.3, timeout: float = 60.0) -> None:
    """Wait until process ``pid`` has used no CPU for ``quiet`` seconds: its session ends are done.

    The client sees its connection end before the relay has written the session's log line
    and metrics; a window ends only once the relay is idle again.
    """
    deadline = time.monotonic() + timeout
    last, since = tree_cpu(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = tree_cpu(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise RuntimeError(f"the relay (pid {pid}) did not go idle within {timeout:g}s")


def stop(proc: subprocess.Popen, pid: int | None = None) -> None:
    """SIGTERM to the relay (``pid``, when a counting tool is its parent), then wait for ``proc``."""
    try:
        os.kill(pid or proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def count_instructions(pump: str, bot_port: int, workdir: Path) -> dict[str, int]:
    """Instructions of each window, from one relay process under callgrind, less its idle work.

    An idle relay still runs a little on a clock (the config file's watcher, once a second:
    about 60,000 instructions a second under callgrind), and a window lasts longer when the
    machine is busy, so each window's total is corrected by the idle rate measured first in
    the same process, times the window's length. Without it, per-frame counts moved by 5 %
    with the machine's load.

    The frames window runs ``FRAME_WINDOWS`` times, a session each, and the fewest
    instructions count: picows masks and unmasks a payload 32 bytes at a time (AVX2) from
    the first 32-byte boundary, and the bytes before it one at a time; malloc aligns its
    buffers to 16 bytes, so where a session's buffers fall moves its per-frame count in
    steps of about 100 instructions (2 %) from one session to the next: 5,212 to 5,522 in
    one relay process. The fewest is the count with aligned buffers, the same in every run.
    """
    plan = PLANS["instructions"]
    port = free_port()
    out = workdir / f"callgrind-{pump}.out"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
                             PY, "-m", "wsrelay", "serve", "--config", str(relay_config(workdir, port, bot_port)),
                             "--log-format", "json"],
                            env=relay_env(pump), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"ws://127.0.0.1:{port}/ws/generic/bench.perf"
    totals: dict[str, int] = {}
    try:
        wait_port(port, proc, timeout=300)
        run_client(url, "", None)
        settle(proc.pid)
        dumps = _dump(proc.pid, 0)                    # start and warm-up: not used
        started = time.monotonic()
        time.sleep(IDLE_SECONDS)
        dumps = _dump(proc.pid, dumps)
        idle_rate = _callgrind_total(out, dumps) / (time.monotonic() - started)
        for window in WINDOWS:
            for _ in range(FRAME_WINDOWS if window == "frames" else 1):
                started = time.monotonic()
                run_client(url, window, plan)
                settle(proc.pid)
                dumps = _dump(proc.pid, dumps)
                total = round(_callgrind_total(out, dumps) - idle_rate * (time.monotonic() - started))
                totals[window] = min(total, totals.get(window, total))
    finally:
        stop(proc)
    return totals


def _dump(pid: int, dumps: int) -> int:
    """callgrind writes the counts since its last dump to ``<out>.<n>`` and starts again from 0;
    returns ``n``, the number of dumps so far."""
    done = subprocess.run(["callgrind_control", "--dump", str(pid)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or "OK" not in done.stdout:
        raise RuntimeError(f"callgrind_control --dump {pid} failed: {(done.stdout + done.stderr).strip()}")
    return dumps + 1


def _callgrind_total(out: Path, n: int) -> int:
    path = Path(f"{out}.{n}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if path.exists():
            match = re.search(r"^totals: (\d+)", path.read_text(), re.MULTILINE)
            if match:
                return int(match.group(1))
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no totals to {path}")


def count_syscalls(pump: str, bot_port: int, workdir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """System calls of each window, and the loop's waits among them: one native relay run per
    window under ``perf stat``."""
    plan = PLANS["syscalls"]
    events = ",".join(["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{w}" for w in WAITS])
    totals, waits = {}, {}
    for window in WINDOWS:
        port = free_port()
        out = workdir / f"perf-{pump}-{window}.txt"
        proc = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-o", str(out), "--",
                                 PY, "-m", "wsrelay", "serve", "--config", str(relay_config(workdir, port, bot_port)),
                                 "--log-format", "json"],
                                env=relay_env(pump), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        relay_pid = None
        try:
            wait_port(port, proc, timeout=60)
            relay_pid = _only_child(proc.pid)
            url = f"ws://127.0.0.1:{port}/ws/generic/bench.perf"
            run_client(url, "", None)
            run_client(url, window, plan)
            settle(relay_pid)
        finally:
            stop(proc, relay_pid)
        counted = {m.group(2): int(m.group(1))
                   for m in re.finditer(r"^(\d+),[^\n]*?sys_enter_?(\w*)", out.read_text(), re.MULTILINE)}
        if "" not in counted:
            raise RuntimeError(f"perf stat counted nothing: {out.read_text().strip()[-300:]}")
        waits[window] = sum(counted.get(w, 0) for w in WAITS)
        totals[window] = counted[""] - waits[window]
    return totals, waits


def _only_child(pid: int) -> int:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(c) for c in f.read().split()]
    if len(children) != 1:
        raise RuntimeError(f"expected perf (pid {pid}) to run one relay process, found {children}")
    return children[0]


def per_unit(totals: dict[str, int], plan: Plan) -> tuple[float, float]:
    """(per session, per relayed frame) from the three windows' totals."""
    return ((totals["sessions"] - totals["one"]) / plan.sessions,
            (totals["frames"] - totals["one"]) / (2 * plan.round_trips))


def measure_counts(pumps: tuple[str, ...] = PUMPS, figures: dict | None = None) -> dict[str, dict[str, float]]:
    """Every gated count for each pump (and, into ``figures``, the loop's waits: not gated)."""
    figures = {} if figures is None else figures
    workdir = Path(tempfile.mkdtemp(prefix="wsrelay-gate-"))
    bot_port = free_port()
    bot = subprocess.Popen([PY, str(HERE / "echo_bot.py"), str(bot_port)])
    counts: dict[str, dict[str, float]] = {}
    try:
        wait_port(bot_port, bot)
        for pump in pumps:
            started = time.monotonic()
            i_session, i_frame = per_unit(count_instructions(pump, bot_port, workdir), PLANS["instructions"])
            calls, waits = count_syscalls(pump, bot_port, workdir)
            s_session, s_frame = per_unit(calls, PLANS["syscalls"])
            w_session, w_frame = per_unit(waits, PLANS["syscalls"])
            counts[pump] = {"instructions_per_session": round(i_session), "instructions_per_frame": round(i_frame),
                            "syscalls_per_session": round(s_session, 2), "syscalls_per_frame": round(s_frame, 3)}
            figures[pump] = {"loop_waits_per_session": round(w_session, 2), "loop_waits_per_frame": round(w_frame, 3)}
            print(f"counted {pump} pump in {time.monotonic() - started:.0f}s: {json.dumps(counts[pump])}; "
                  f"not gated: {json.dumps(figures[pump])}", file=sys.stderr, flush=True)
    finally:
        bot.terminate()
        bot.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return counts


# --- what the counts are compared with ------------------------------------------------------

def environment() -> dict:
    """What a baseline holds for: the Python minor version and the hot path's package versions."""
    packages = {}
    for name in GATED_PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": "%d.%d" % sys.version_info[:2], "packages": packages}


def baseline_for(baseline: dict, env: dict) -> tuple[dict | None, str]:
    """This environment's recorded counts, or None and the sentence that says why not."""
    recorded = baseline.get("counts", {}).get(env["python"])
    record = "measure and record them with `make bench-gate-record` (benchmarks/gate.py --record)"
    if recorded is None:
        known = ", ".join(sorted(baseline.get("counts", {}))) or "none"
        return None, (f"benchmarks/baseline.json has no counts for Python {env['python']} (it has: {known}); "
                      f"counts from another Python are not comparable: {record}")
    differ = [f"{name} {recorded['packages'].get(name)} in the baseline, {version} here"
              for name, version in env["packages"].items() if recorded["packages"].get(name) != version]
    if differ:
        return None, (f"the counts in benchmarks/baseline.json for Python {env['python']} were recorded with other "
                      f"packages ({'; '.join(differ)}): install the versions of benchmarks/constraints.txt, or, "
                      f"if the pins moved on purpose, {record}")
    return recorded, ""


def compare_counts(measured: dict[str, dict[str, float]], recorded: dict, tolerance: dict[str, float]) -> list[str]:
    """One line per count (ok, improved or REGRESSION); the regressions' lines end in REGRESSION."""
    lines = []
    for pump, counts in measured.items():
        for key, value in counts.items():
            base = recorded["pumps"][pump][key]
            limit = base * tolerance[key.split("_")[0]]
            change = value / base - 1 if base else 0.0
            verdict = "REGRESSION" if value > limit else ("improved: lower the baseline (make bench-gate-record)"
                                                           if change < -(tolerance[key.split("_")[0]] - 1) else "ok")
            lines.append(f"count {pump} {key}: {value:,} (baseline {base:,}, limit {limit:,.6g}, "
                         f"{change:+.1%}) {verdict}")
    return lines


# --- the ratios: printed, and failed only when over three runs in a row --------------------

RATIO_RUNS = 3
RECORD_RUNS = 3            # --record writes the median of this many measurements of each count


def measure_ratios(workloads: list[str], repeats: int) -> dict[str, float | None]:
    """wsrelay's CPU ratio to nginx for each workload, from one e2e.py --quick run."""
    with tempfile.TemporaryDirectory(prefix="wsrelay-gate-ratios-") as tmp:
        out = Path(tmp) / "e2e.json"
        subprocess.run([PY, str(HERE / "e2e.py"), "--quick", "--relays", "wsrelay,nginx", "--workloads",
                        ",".join(workloads), "--repeats", str(repeats), "--json", str(out)], check=False)
        if not out.exists():
            return {w: None for w in workloads}
        report = json.loads(out.read_text())
    if "nginx" in report.get("skipped", {}):
        raise GateUnavailable(f"nginx is needed for the ratios: {report['skipped']['nginx']}")
    keys = {w: k for w, k, _ in e2e.CHECKED}
    return {w: e2e.paired_ratio(report, w, keys[w]) for w in workloads}


class GateUnavailable(Exception):
    """The gate cannot measure here (a tool missing, no comparable baseline): exit 2."""


def ratios_over(ratios: dict[str, float | None], limits: dict[str, float]) -> list[str]:
    return [w for w, r in ratios.items() if r is None or r > limits[w]]


def gate_ratios(limits: dict[str, float], repeats: int, measure=measure_ratios) -> tuple[list[str], list[str]]:
    """(lines to print, workloads that failed): a workload fails when over its limit in RATIO_RUNS runs in a row."""
    lines, history = [], {w: [] for w in limits}
    pending = list(limits)
    for run in range(1, RATIO_RUNS + 1):
        ratios = measure(pending, repeats)
        for w in pending:
            history[w].append(ratios.get(w))
        over = ratios_over({w: ratios.get(w) for w in pending}, limits)
        for w in pending:
            r = ratios.get(w)
            shown = "no measurement" if r is None else f"{r:.2f}"
            state = "over" if w in over else "ok"
            lines.append(f"ratio {w}: wsrelay/nginx = {shown} (limit {limits[w]:.2f}), run {run}: {state}")
        pending = over
        if not pending:
            break
    failed = [w for w in limits if len(history[w]) == RATIO_RUNS and all(r is None or r > limits[w]
                                                                         for r in history[w])]
    for w in failed:
        lines.append(f"ratio {w}: over its limit in {RATIO_RUNS} consecutive runs: REGRESSION")
    return lines, failed


def ratio_limits(baseline: dict) -> dict[str, float]:
    ratios = baseline["ratios"]
    return {w: ratios[w] * ratios["tolerance"] for w, _, _ in e2e.CHECKED}


# --- the command ---------------------------------------------------------------------------

TOOLS = (("valgrind", "valgrind"), ("callgrind_control", "valgrind"), ("perf", "linux-perf"))


def check_tools() -> None:
    """nginx and HAProxy (e2e.py), valgrind and perf from Debian's packages when missing (as root)."""
    e2e.ensure_packages()
    missing = sorted({package for tool, package in TOOLS if not shutil.which(tool)})
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True, env=env)
    missing = [f"{tool} (Debian: {package})" for tool, package in TOOLS if not shutil.which(tool)]
    if missing:
        raise GateUnavailable("the counts need " + ", ".join(missing) + ", which could not be installed")
    from wsrelay import pump
    if pump.default_name() != "cython" and os.environ.get("WSRELAY_PURE_PYTHON") != "1":
        raise GateUnavailable("the installed wsrelay has no compiled pump: the gate measures the built wheel")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", default=str(BASELINE))
    parser.add_argument("--counts-only", action="store_true", help="skip the ratios to nginx")
    parser.add_argument("--ratios-only", action="store_true", help="skip the counts")
    parser.add_argument("--record", action="store_true", help="write the measured counts into the baseline")
    parser.add_argument("--json", help="write what was measured here")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per ratio run")
    parser.add_argument("--pumps", default=",".join(PUMPS), help="count these pumps only (not with --record)")
    args = parser.parse_args(argv)
    baseline_path = Path(args.baseline)
    baseline = json.loads(baseline_path.read_text())
    env = environment()
    report: dict = {"environment": env}
    failed = False
    try:
        check_tools()
        if not args.ratios_only:
            recorded, why = baseline_for(baseline, env)
            if recorded is None and not args.record:
                raise GateUnavailable(why)
            report["loop_waits"] = {}
            pumps = tuple(p for p in args.pumps.split(",") if p)
            if args.record and set(pumps) != set(PUMPS) or not set(pumps) <= set(PUMPS):
                raise GateUnavailable(f"--pumps takes some of {', '.join(PUMPS)} (all of them with --record)")
            if args.record:
                runs = [measure_counts(pumps, figures=report["loop_waits"]) for _ in range(RECORD_RUNS)]
                measured = {p: {k: statistics.median(run[p][k] for run in runs) for k in COUNTS} for p in pumps}
            else:
                measured = measure_counts(pumps, figures=report["loop_waits"])
            report["counts"] = measured
            if args.record:
                record(baseline_path, baseline, env, measured)
                return 0
            else:
                lines = compare_counts(measured, recorded, baseline["tolerance"])
                print("\n".join(lines))
                failed |= any(line.endswith("REGRESSION") for line in lines)
        if not args.counts_only and not args.record:
            lines, over = gate_ratios(ratio_limits(baseline), args.repeats)
            print("\n".join(lines))
            report["ratios_failed"] = over
            failed |= bool(over)
    except GateUnavailable as exc:
        print(f"bench-gate: cannot compare: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2))
    print("bench-gate: " + ("REGRESSION" if failed else "passed"))
    return 1 if failed else 0


def record(path: Path, baseline: dict, env: dict, measured: dict) -> None:
    """This environment's counts into the baseline file (the other Pythons' entries are kept)."""
    import platform
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip() or "unknown"
    baseline.setdefault("counts", {})[env["python"]] = {
        "recorded": f"{time.strftime('%Y-%m-%d')} at {commit}, Python {platform.python_version()}",
        "packages": env["packages"], "pumps": measured}
    path.write_text(json.dumps(baseline, indent=2) + "\n")
    print(f"recorded the counts for Python {env['python']} in {path}")


if __name__ == "__main__":
    sys.exit(main())
