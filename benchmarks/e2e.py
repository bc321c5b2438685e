"""Side-by-side end-to-end benchmark: wsrelay against the relays a user would pick instead.

Relays: no relay (client straight to the bot), wsrelay (Cython pump), wsrelay with the
pure-Python pump, nginx (``proxy_pass`` + Upgrade headers, ``worker_processes 1``),
HAProxy (``mode http``, one thread), and a relay written with the ``websockets`` library.
All on 127.0.0.1, each its own process; the bot is the picows echo bot; the load
generator is picows (loadgen.py). Every relay is measured in every round and the order
is rotated round by round; the table shows the median over rounds, and the ratio to
nginx's CPU per frame measured in the same run.

    python benchmarks/e2e.py [--quick] [--repeats 3] [--json out.json] [--plot out.png]

Nothing here fails on a time: the CI gate (benchmarks/gate.py, ``make bench-gate``) gates on
instruction and system-call counts, and prints the ratios to nginx measured by this script's
quick workloads (``paired_ratio``), failing on one only when it is over its limit in three
consecutive runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable
WSRELAY_PATH = "/ws/generic/bench.perf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def ensure_packages() -> dict[str, str | None]:
    """Install nginx and HAProxy from Debian's packages when missing; reasons for what's not there."""
    missing = [p for p, binary in (("nginx-light", "nginx"), ("haproxy", "haproxy")) if not shutil.which(binary)]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], capture_output=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    return {"nginx": None if shutil.which("nginx") else "nginx is not installed and could not be installed",
            "haproxy": None if shutil.which("haproxy") else "haproxy is not installed and could not be installed"}


class Relay:
    """One relay under test: how to start it, and the URL clients use."""

    def __init__(self, name: str, bot_port: int, workdir: Path, workers: int = 1, cpus: str | None = None) -> None:
        self.name = name
        self.bot_port = bot_port
        self.workdir = workdir
        self.workers = workers
        self.cpus = cpus          # taskset's CPU list for the relay (all its workers), or None: unpinned
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        if self.name == "none":
            return f"ws://127.0.0.1:{self.bot_port}/"
        path = WSRELAY_PATH if self.name.startswith("wsrelay") else "/"
        return f"ws://127.0.0.1:{self.port}{path}"

    def command(self) -> tuple[list[str], dict]:
        env = dict(os.environ)
        d = self.workdir
        if self.name.startswith("wsrelay"):
            conf = d / f"{self.name}.toml"
            conf.write_text(f'[relay]\nhost = "127.0.0.1"\nport = {self.port}\nadmin_port = 0\n'
                            f'workers = {self.workers}\ndrain_seconds = 0\n'
                            f'[[agents]]\nname = "bench"\norganization = "perf"\n'
                            f'upstreams = ["ws://127.0.0.1:{self.bot_port}/"]\n')
            if "python" in self.name:
                env["WSRELAY_PURE_PYTHON"] = "1"
            else:
                env.pop("WSRELAY_PURE_PYTHON", None)
            return [PY, "-m", "wsrelay", "serve", "--config", str(conf), "--log-format", "json"], env
        if self.name == "nginx":
            conf = d / "nginx.conf"
            conf.write_text(f"""
worker_processes 1;
worker_rlimit_nofile 20000;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 16000; }}
http {{
    access_log off;
    client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
    uwsgi_temp_path {d}; scgi_temp_path {d};
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{self.bot_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
""")
            return ["nginx", "-p", str(d), "-c", str(conf), "-g", "daemon off;"], env
        if self.name == "haproxy":
            conf = d / "haproxy.cfg"
            conf.write_text(f"""
global
    maxconn 9000
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 3600s
    timeout server 3600s
    timeout tunnel 3600s
frontend fe
    bind 127.0.0.1:{self.port}
    default_backend be
backend be
    server bot 127.0.0.1:{self.bot_port} maxconn 9000
""")
            return ["haproxy", "-db", "-f", str(conf)], env
        if self.name == "websockets":
            return [PY, str(HERE / "ws_relay.py"), str(self.port), str(self.bot_port)], env
        raise ValueError(self.name)

    def start(self) -> None:
        if self.name == "none":
            return
        cmd, env = self.command()
        cmd = pinned(cmd, self.cpus)
        log = open(self.workdir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)
        time.sleep(0.3 if self.workers == 1 else 1.0)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """``cmd`` run on the CPUs ``cpus`` (taskset's list syntax), or as it is when None."""
    return ["taskset", "-c", cpus, *cmd] if cpus is not None else cmd


def cpu_busy() -> dict[str, tuple[int, int]]:
    """Per CPU ("cpu0", ...): (busy, total) jiffies since boot, from /proc/stat."""
    times = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name != "cpu":
                ticks = [int(x) for x in fields]
                idle = ticks[3] + ticks[4]                  # idle + iowait
                times[name] = (sum(ticks[:8]) - idle, sum(ticks[:8]))
    return times


def run_workload(relay: Relay, bot_pid: int, workload: str, cpus: str | None = None, **params) -> dict:
    """One loadgen run against ``relay`` (the load generator on ``cpus`` when given)."""
    pid = relay.proc.pid if relay.proc is not None else bot_pid
    args = pinned([PY, str(HERE / "loadgen.py"), workload, relay.url, "--pid", str(pid)], cpus)
    for key, value in params.items():
        args += [f"--{key}", str(value)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1][:200] if (out.stderr or out.stdout) else "failed"}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if relay.name == "none":      # the "relay" measured was the bot itself: no relay cost
        for key in list(result):
            if key.startswith("relay_") or key == "kib_per_session":
                result[key] = None
    return result


def workloads(quick: bool) -> dict[str, dict]:
    if quick:
        return {"pingpong": dict(conns=10, size=640, seconds=2, warmup=0.5),
                "audio": dict(conns=200, rate=50, size=640, seconds=3, warmup=1),
                "large": dict(conns=4, size=1 << 20, seconds=2, warmup=0.5),
                "idle": dict(conns=500),
                "setup": dict(conns=4, seconds=2)}
    return {"pingpong": dict(conns=10, size=640, seconds=5, warmup=1),
            "audio": dict(conns=1000, rate=50, size=640, seconds=5, warmup=2),
            "large": dict(conns=4, size=1 << 20, seconds=4, warmup=1),
            "idle": dict(conns=5000),
            "setup": dict(conns=4, seconds=3)}


HEADLINES = {
    "pingpong": ["relay_cpu_us_per_frame", "round_trips_per_s", "p99_ms"],
    "audio": ["relay_cpu_us_per_frame", "p50_ms", "p99_ms", "lost"],
    "large": ["messages_per_s", "relay_cpu_us_per_frame"],
    "idle": ["kib_per_session"],
    "setup": ["sessions_per_s", "relay_cpu_ms_per_session"],
}


def median_of(rounds: list[dict], key: str):
    values = [r[key] for r in rounds if r.get(key) is not None and not isinstance(r.get(key), str)]
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts and short windows (CI)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--relays", default="none,wsrelay,wsrelay-python,nginx,haproxy,websockets")
    parser.add_argument("--workloads", default="pingpong,audio,large,idle,setup,scaling")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="draw CPU/frame and p99 against audio connections here (PNG)")
    parser.add_argument("--sweep", help="audio connection counts for --plot (default 100,500,1000,2000,5000)")
    parser.add_argument("--from-json", help="print the table (and --plot) of an earlier --json run; measure nothing")
    args = parser.parse_args()
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        print(render_table(report))
        if args.plot and report.get("sweep"):
            draw(report["sweep"], args.plot)
        return 0

    reasons = ensure_packages()
    names = [n for n in args.relays.split(",") if n]
    skipped = {n: reasons[n] for n in names if reasons.get(n)}
    names = [n for n in names if n not in skipped]
    wanted = args.workloads.split(",")
    plan = {k: v for k, v in workloads(args.quick).items() if k in wanted}
    workdir = Path(tempfile.mkdtemp(prefix="wsrelay-bench-"))
    bot_port = free_port()
    bot = subprocess.Popen([PY, str(HERE / "echo_bot.py"), str(bot_port)])
    results: dict[str, dict[str, list[dict]]] = {n: {w: [] for w in plan} for n in names}
    started = time.monotonic()
    try:
        wait_port(bot_port, bot)
        for round_index in range(args.repeats):
            order = names[round_index % len(names):] + names[:round_index % len(names)]
            for name in order:
                relay = Relay(name, bot_port, workdir)
                try:
                    relay.start()
                    for workload, params in plan.items():
                        results[name][workload].append(run_workload(relay, bot.pid, workload, **params))
                except Exception as exc:       # report, go on with the others
                    for workload in plan:
                        results[name][workload].append({"error": str(exc)[:200]})
                finally:
                    relay.stop()
                print(f"round {round_index + 1}/{args.repeats}: {name} done "
                      f"({time.monotonic() - started:.0f}s)", file=sys.stderr, flush=True)
        scaling = measure_scaling(bot_port, bot.pid, workdir, args) if "scaling" in wanted else {}
        sweep = measure_sweep(bot_port, bot.pid, workdir, names, args) if args.plot else {}
    finally:
        bot.terminate()
        bot.wait()

    summary = {n: {w: {k: median_of(rounds, k) for k in rounds[0]} if rounds else {}
                   for w, rounds in per.items()} for n, per in results.items()}
    errors = {n: {w: [r["error"] for r in rounds if "error" in r] for w, rounds in per.items()}
              for n, per in results.items()}
    report = {"quick": args.quick, "repeats": args.repeats, "workloads": plan, "summary": summary,
              "errors": errors, "skipped": skipped, "scaling": scaling, "sweep": sweep,
              "rounds": results, "seconds": time.monotonic() - started}
    print(render_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if args.plot and sweep:
        draw(sweep, args.plot)
    return 0


SCALING_LADDER = [250, 500, 750, 1000, 1250, 1500, 2000, 3000]


def measure_scaling(bot_port, bot_pid, workdir, args) -> dict:
    """Audio capacity of wsrelay with 1 and 2 workers: the most connections kept at p99 < 100 ms, no loss.

    Measured twice. Unpinned, everything shares the machine's cores, as a one-machine
    deployment would. Pinned (where ``taskset`` and two CPUs exist): the bot and the load
    generator on CPU 0, the relay (all its workers) on the last CPU, so the relay's figure
    is not the load generator's; each step also records how busy both CPUs were. The
    ladder stops at the first step over the bounds, or whose load generator could not send
    the load asked for (``generator_short``: then the figure is the generator's limit).
    """
    ladder = [100, 200] if args.quick else SCALING_LADDER
    result: dict = {}
    last = (os.cpu_count() or 1) - 1
    modes = [("unpinned", None, None, bot_port, bot_pid)]
    pinned_bot = None
    if last >= 1 and shutil.which("taskset"):
        port = free_port()
        pinned_bot = subprocess.Popen(pinned([PY, str(HERE / "echo_bot.py"), str(port)], "0"))
        wait_port(port, pinned_bot)
        modes.append(("pinned", "0", str(last), port, pinned_bot.pid))
    try:
        for mode, load_cpus, relay_cpus, port, pid in modes:
            for workers in (1, 2):
                best, steps = 0, []
                for conns in ladder:
                    relay = Relay("wsrelay", port, workdir, workers=workers, cpus=relay_cpus)
                    try:
                        relay.start()
                        before = cpu_busy()
                        r = run_workload(relay, pid, "audio", cpus=load_cpus, conns=conns, rate=50, size=640,
                                         seconds=2 if args.quick else 4, warmup=1)
                        after = cpu_busy()
                    finally:
                        relay.stop()
                    r["cpu_busy_percent"] = {cpu: round(100 * (after[cpu][0] - before[cpu][0])
                                                        / max(1, after[cpu][1] - before[cpu][1]), 1)
                                             for cpu in sorted(after)}
                    # The load asked for: conns x 50 messages/s. A step whose load generator sent
                    # less (its CPU was full) measured the generator, not the relay: the ladder ends.
                    r["generator_short"] = "error" not in r and r["messages_per_s"] < 0.95 * conns * 50
                    steps.append(dict(r, conns=conns))
                    print(f"scaling {mode} workers={workers} {conns}: {r}", file=sys.stderr, flush=True)
                    if "error" in r or r["lost"] or r["p99_ms"] > 100 or r["generator_short"]:
                        break
                    best = conns
                key = f"workers_{workers}" if mode == "unpinned" else f"pinned_workers_{workers}"
                result[key] = best
                result[f"{key}_steps"] = steps
    finally:
        if pinned_bot is not None:
            pinned_bot.terminate()
            pinned_bot.wait()
    return result


def measure_sweep(bot_port, bot_pid, workdir, names, args) -> dict:
    counts = [int(c) for c in (args.sweep or ("100,300" if args.quick else "100,500,1000,2000,5000")).split(",")]
    sweep: dict[str, list[dict]] = {}
    for name in [n for n in names if n != "none"]:
        for conns in counts:
            relay = Relay(name, bot_port, workdir)
            try:
                relay.start()
                r = run_workload(relay, bot_pid, "audio", conns=conns, rate=50, size=640,
                                 seconds=2 if args.quick else 4, warmup=1)
            except Exception as exc:
                r = {"error": str(exc)}
            finally:
                relay.stop()
            sweep.setdefault(name, []).append(dict(r, conns=conns))
            print(f"sweep {name} {conns}: {r}", file=sys.stderr, flush=True)
    return sweep


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def render_table(report: dict) -> str:
    summary = report["summary"]
    nginx = {w: (summary.get("nginx", {}).get(w, {}) or {}).get("relay_cpu_us_per_frame")
             for w in ("pingpong", "audio", "large")}
    lines = []
    for workload, keys in HEADLINES.items():
        if not any(workload in per for per in summary.values()):
            continue
        header = ["relay"] + keys + (["cpu/frame vs nginx"] if workload in nginx else [])
        rows = []
        for name, per in summary.items():
            values = per.get(workload) or {}
            row = [name] + [fmt(values.get(k)) for k in keys]
            if workload in nginx:
                mine, theirs = values.get("relay_cpu_us_per_frame"), nginx[workload]
                row.append(f"{mine / theirs:.2f}x" if mine and theirs else "-")
            rows.append(row)
        widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
        lines.append(f"\n{workload} ({json.dumps(report['workloads'][workload])})")
        lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    if report.get("scaling"):
        s = report["scaling"]
        lines.append(f"\nscaling (audio capacity at p99 < 100 ms, no loss): workers=1: {s.get('workers_1')} conns, "
                     f"workers=2: {s.get('workers_2')} conns")
        if "pinned_workers_1" in s:
            lines.append(f"pinned (bot and load generator on CPU 0, the relay on the other): "
                         f"workers=1: {s['pinned_workers_1']} conns, workers=2: {s['pinned_workers_2']} conns")
    for name, reason in report["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    for name, per in report["errors"].items():
        for workload, errs in per.items():
            if errs:
                lines.append(f"errors {name}/{workload}: {errs[0]}")
    lines.append(f"\n({report['repeats']} interleaved rounds, medians; {report['seconds']:.0f}s)")
    return "\n".join(lines)


def draw(sweep: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        subprocess.run([PY, "-m", "pip", "install", "-q", "matplotlib"], capture_output=True)
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib unavailable: no plot", file=sys.stderr)
            return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, points in sweep.items():
        ok = [p for p in points if "error" not in p]
        xs = [p["conns"] for p in ok]
        ax1.plot(xs, [p.get("relay_cpu_us_per_frame") for p in ok], marker="o", label=name)
        ax2.plot(xs, [p.get("p99_ms") for p in ok], marker="o", label=name)
    ax1.set(title="relay CPU per relayed frame", xlabel="audio connections (50 msg/s, 640 B)", ylabel="µs",
            yscale="log")
    ax2.set(title="p99 round-trip latency", xlabel="audio connections (50 msg/s, 640 B)", ylabel="ms",
            yscale="log")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def paired_ratio(report: dict, workload: str, key: str) -> float | None:
    """wsrelay's ``key`` over nginx's, round by round (both measured minutes apart), then the median.

    Pairing each round's wsrelay with the same round's nginx cancels what the machine does
    between rounds (another tenant, frequency scaling), which the ratio of two medians does not.
    """
    rounds = report.get("rounds") or {}
    mine, theirs = (rounds.get(name, {}).get(workload, []) for name in ("wsrelay", "nginx"))
    ratios = [m[key] / t[key] for m, t in zip(mine, theirs) if m.get(key) and t.get(key)]
    if ratios:
        return statistics.median(ratios)
    a = (report["summary"].get("wsrelay", {}).get(workload) or {}).get(key)
    b = (report["summary"].get("nginx", {}).get(workload) or {}).get(key)
    return a / b if a and b else None


# The ratios the gate prints (benchmarks/gate.py): wsrelay's figure over nginx's in the same run.
CHECKED = [("pingpong", "relay_cpu_us_per_frame", "CPU per frame"),
           ("audio", "relay_cpu_us_per_frame", "CPU per frame"),
           ("setup", "relay_cpu_ms_per_session", "CPU per session")]


if __name__ == "__main__":
    sys.exit(main())
