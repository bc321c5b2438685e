"""The CI benchmark gate (`make bench-gate`, benchmarks/gate.py), proved both ways.

- Its rules, on hand-made figures: a count over baseline x tolerance fails and one under
  passes; a baseline from another Python or other pinned packages is refused with a
  sentence, never compared; a ratio fails only when it is over its limit in three runs in
  a row.
- The gate itself, on this machine against the installed wheel: it passes five times in a
  row, once while another process keeps a core busy; a 25 % slower session setup fails it,
  and so does one more system call per relayed frame.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import gate  # noqa: E402

BASELINE = json.loads((ROOT / "benchmarks" / "baseline.json").read_text())
PINS = dict(line.split("==") for line in (ROOT / "benchmarks" / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#"))


def recorded(scale: float = 1.0) -> dict:
    counts = {"instructions_per_session": 1_000_000, "instructions_per_frame": 5_000,
              "syscalls_per_session": 70.0, "syscalls_per_frame": 2.0}
    return {"packages": dict(PINS), "pumps": {p: {k: v * scale for k, v in counts.items()} for p in gate.PUMPS}}


# --- the rules ----------------------------------------------------------------------------

def test_the_baseline_pins_what_the_test_environment_installs():
    """Every gated package is pinned, and the recorded counts name exactly those pins."""
    assert set(PINS) == set(gate.GATED_PACKAGES)
    assert BASELINE["tolerance"] == {"instructions": 1.05, "syscalls": 1.01}
    for python, entry in BASELINE["counts"].items():
        assert entry["packages"] == PINS, f"the counts for Python {python} are for other pins"
        assert set(entry["pumps"]) == set(gate.PUMPS)
        assert all(set(c) == set(gate.COUNTS) for c in entry["pumps"].values())


@pytest.mark.parametrize("key", gate.COUNTS)
def test_a_count_over_its_tolerance_fails_and_under_passes(key):
    base = recorded()
    tolerance = BASELINE["tolerance"][key.split("_")[0]]
    for pump in gate.PUMPS:
        measured = {p: dict(c) for p, c in base["pumps"].items()}
        measured[pump][key] = base["pumps"][pump][key] * (tolerance + 0.005)
        lines = gate.compare_counts(measured, base, BASELINE["tolerance"])
        assert [line for line in lines if line.endswith("REGRESSION")] == [
            next(line for line in lines if line.startswith(f"count {pump} {key}:"))]
        measured[pump][key] = base["pumps"][pump][key] * (tolerance - 0.005)
        assert not any(line.endswith("REGRESSION") for line in gate.compare_counts(measured, base,
                                                                                  BASELINE["tolerance"]))


def test_one_more_system_call_per_session_fails():
    base = recorded()
    measured = {p: dict(c) for p, c in base["pumps"].items()}
    measured["cython"]["syscalls_per_session"] += 1
    assert any(line.endswith("REGRESSION") for line in gate.compare_counts(measured, base, BASELINE["tolerance"]))


def test_a_count_well_under_its_baseline_asks_for_a_new_baseline():
    base = recorded()
    measured = {p: {k: v * 0.8 for k, v in c.items()} for p, c in base["pumps"].items()}
    lines = gate.compare_counts(measured, base, BASELINE["tolerance"])
    assert all("improved: lower the baseline" in line for line in lines)


def test_counts_from_another_python_are_refused_with_a_sentence():
    env = {"python": "3.99", "packages": dict(PINS)}
    entry, why = gate.baseline_for({"counts": {"3.11": recorded()}}, env)
    assert entry is None
    assert "no counts for Python 3.99 (it has: 3.11)" in why and "make bench-gate-record" in why


def test_counts_from_other_packages_are_refused_naming_each():
    entry, why = gate.baseline_for({"counts": {"3.11": recorded()}},
                                   {"python": "3.11", "packages": dict(PINS, uvloop="9.9.9")})
    assert entry is None
    assert f"uvloop {PINS['uvloop']} in the baseline, 9.9.9 here" in why
    assert "benchmarks/constraints.txt" in why
    entry, why = gate.baseline_for({"counts": {"3.11": recorded()}}, {"python": "3.11", "packages": dict(PINS)})
    assert entry is not None and why == ""


def test_per_unit_subtracts_the_shared_window():
    plan = gate.Plan(sessions=10, round_trips=100)
    assert gate.per_unit({"one": 1000, "sessions": 1000 + 10 * 70, "frames": 1000 + 200 * 2}, plan) == (70, 2)


def scripted(values: dict[str, list[float | None]]):
    """A measure_ratios stand-in: each workload's ratios, run by run; records who was re-run."""
    calls: list[list[str]] = []

    def measure(workloads, repeats):
        calls.append(list(workloads))
        return {w: values[w][len([c for c in calls if w in c]) - 1] for w in workloads}
    return measure, calls


LIMITS = {"pingpong": 1.44, "audio": 1.54, "setup": 6.6}     # any limits: the rule is what is tested


def test_a_ratio_over_its_limit_once_or_twice_is_noise():
    measure, calls = scripted({"pingpong": [1.58, 1.50, 1.30], "audio": [1.3], "setup": [7.3, 6.0]})
    lines, failed = gate.gate_ratios(LIMITS, 3, measure)
    assert failed == []
    assert calls == [["pingpong", "audio", "setup"], ["pingpong", "setup"], ["pingpong"]]
    assert "ratio pingpong: wsrelay/nginx = 1.58 (limit 1.44), run 1: over" in lines


def test_a_ratio_over_its_limit_three_runs_in_a_row_fails():
    measure, calls = scripted({"pingpong": [1.3], "audio": [1.6, 1.7, 1.9], "setup": [5.0]})
    lines, failed = gate.gate_ratios(LIMITS, 3, measure)
    assert failed == ["audio"]
    assert calls == [["pingpong", "audio", "setup"], ["audio"], ["audio"]]
    assert lines[-1] == "ratio audio: over its limit in 3 consecutive runs: REGRESSION"


def test_a_missing_ratio_counts_as_over():
    measure, _ = scripted({"pingpong": [None, None, None], "audio": [1.0], "setup": [5.0]})
    _, failed = gate.gate_ratios(LIMITS, 3, measure)
    assert failed == ["pingpong"]


# --- the gate itself, on this machine -----------------------------------------------------

def run_gate(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, dict]:
    """`make bench-gate` against the installed wheel; make's exit status (2 whenever the gate
    fails), the output and the gate's JSON report."""
    report = tmp_path / f"gate-{len(list(tmp_path.glob('gate-*.json')))}.json"
    gate_args = " ".join([f"--json {report}", *args])
    done = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), "bench-gate", f"PY={sys.executable}",
                           f"GATE_ARGS={gate_args}"], capture_output=True, text=True, timeout=1500,
                          env=dict(os.environ, **(env or {})))
    output = done.stdout + done.stderr
    return done.returncode, output, json.loads(report.read_text()) if report.exists() else {}


needs_gate = pytest.mark.skipif(gate.environment()["python"] not in BASELINE["counts"],
                                reason="benchmarks/baseline.json has no counts for this Python "
                                       "(the gate itself refuses it; see the rule tests above)")


@needs_gate
@pytest.mark.system
@pytest.mark.slow
@pytest.mark.timeout(4800)
def test_the_gate_passes_five_times_in_a_row_once_with_a_core_busy(tmp_path):
    if shutil.which("make") is None:
        pytest.fail("make is needed to run `make bench-gate`")
    for attempt in range(5):
        busy = None
        if attempt == 2:
            busy = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
        try:
            status, output, report = run_gate(tmp_path)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        assert status == 0, f"run {attempt + 1} of 5{' (a core busy)' if busy else ''} failed:\n{output[-6000:]}"
        assert "bench-gate: passed" in output
        assert set(report["counts"]) == set(gate.PUMPS)


SLOWER_SESSION = """
import importlib.abc, importlib.util, sys

LOOPS = {loops}


class _Slower(importlib.abc.MetaPathFinder):
    # After wsrelay.edge.session is imported, each Session() first spins LOOPS times.
    def find_spec(self, name, path=None, target=None):
        if name != "wsrelay.edge.session":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            init = module.Session.__init__

            def slower(self, *args, **kwargs):
                for _ in range(LOOPS):
                    pass
                init(self, *args, **kwargs)
            module.Session.__init__ = slower
        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Slower())
"""

ONE_MORE_CALL = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

/* Every send of the process makes one more system call (getppid) first. */
#define WRAP(ret, name, params, args)                         \
    ret name params {                                         \
        static ret (*real) params;                            \
        if (!real) real = (ret (*) params) dlsym(RTLD_NEXT, #name); \
        syscall(SYS_getppid);                                 \
        return real args;                                     \
    }
WRAP(ssize_t, write, (int fd, const void *b, size_t n), (fd, b, n))
WRAP(ssize_t, writev, (int fd, const struct iovec *v, int n), (fd, v, n))
WRAP(ssize_t, send, (int fd, const void *b, size_t n, int f), (fd, b, n, f))
WRAP(ssize_t, sendto, (int fd, const void *b, size_t n, int f, const struct sockaddr *a, socklen_t l),
     (fd, b, n, f, a, l))
WRAP(ssize_t, sendmsg, (int fd, const struct msghdr *m, int f), (fd, m, f))
"""


@needs_gate
@pytest.mark.system
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_25_percent_slower_session_setup_fails_the_gate(tmp_path):
    """Each session spins a Python loop first: about a quarter more instructions per session."""
    per_session = BASELINE["counts"][gate.environment()["python"]]["pumps"]["cython"]["instructions_per_session"]
    site = tmp_path / "site"
    site.mkdir()
    # An empty loop costs about 200 instructions an iteration on CPython 3.11 (callgrind).
    (site / "sitecustomize.py").write_text(SLOWER_SESSION.format(loops=int(per_session * 0.25 / 200)))
    status, output, report = run_gate(tmp_path, "--counts-only", env={"PYTHONPATH": str(site)})
    assert status != 0, output[-6000:]
    assert "bench-gate: REGRESSION" in output
    for pump in gate.PUMPS:
        grown = report["counts"][pump]["instructions_per_session"] / per_session
        assert 1.15 < grown < 1.5, f"{pump}: the slowdown was {grown:.2f}x, not about 1.25x"
        assert f"count {pump} instructions_per_session:" in output
        line = next(x for x in output.splitlines() if x.startswith(f"count {pump} instructions_per_session:"))
        assert line.endswith("REGRESSION")


@needs_gate
@pytest.mark.system
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_one_more_system_call_per_relayed_frame_fails_the_gate(tmp_path):
    """A preloaded library makes every send of the relay one system call more."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler is needed to build the preloaded library")
    source = tmp_path / "one_more_call.c"
    source.write_text(textwrap.dedent(ONE_MORE_CALL))
    library = tmp_path / "one_more_call.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"], check=True)
    base = BASELINE["counts"][gate.environment()["python"]]["pumps"]
    status, output, report = run_gate(tmp_path, "--counts-only", env={"LD_PRELOAD": str(library)})
    assert status != 0 and "bench-gate: REGRESSION" in output, output[-6000:]
    for pump in gate.PUMPS:
        added = report["counts"][pump]["syscalls_per_frame"] - base[pump]["syscalls_per_frame"]
        assert 0.95 < added < 1.05, f"{pump}: {added:+.3f} system calls per frame, not one more"
        line = next(x for x in output.splitlines() if x.startswith(f"count {pump} syscalls_per_frame:"))
        assert line.endswith("REGRESSION")
