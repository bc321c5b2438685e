"""The CI benchmark gate (benchmarks/e2e.py --check): ratios to nginx, paired by round.

No machine is measured here: reports are built by hand, so what is tested is the rule
itself — a 20 % regression of any gated ratio fails, noise between rounds does not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from e2e import CHECKED, check, paired_ratio  # noqa: E402

BASELINE = json.loads((ROOT / "benchmarks" / "baseline.json").read_text())


def report(scale: dict[str, float], *, drift: float = 1.0) -> dict:
    """Five rounds in which nginx's figures drift by ``drift`` per round; wsrelay is baseline x scale."""
    rounds: dict = {"wsrelay": {}, "nginx": {}}
    for workload, key, _ in CHECKED:
        theirs = [{key: 10.0 * drift ** i} for i in range(5)]
        mine = [{key: r[key] * BASELINE[f"{workload}_ratio"] * scale.get(workload, 1.0)} for r in theirs]
        rounds["nginx"][workload], rounds["wsrelay"][workload] = theirs, mine
    summary = {name: {w: {key: sorted(r[key] for r in rounds[name][w])[2]} for w, key, _ in CHECKED}
               for name in rounds}
    return {"summary": summary, "rounds": rounds, "errors": {}, "skipped": {},
            "workloads": {w: {} for w, _, _ in CHECKED}}


@pytest.fixture
def baseline_path(tmp_path):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(BASELINE))
    return str(path)


def test_the_baseline_gates_every_workload_at_20_percent():
    assert BASELINE["tolerance"] == 1.2
    assert all(f"{w}_ratio" in BASELINE for w, _, _ in CHECKED)


@pytest.mark.parametrize("workload", [w for w, _, _ in CHECKED])
def test_a_20_percent_regression_fails_and_19_passes(baseline_path, workload, capsys):
    assert check(report({workload: 1.19}), baseline_path) == 0
    assert check(report({workload: 1.21}), baseline_path) == 1
    assert f"check {workload}" in capsys.readouterr().out


def test_a_machine_that_slows_down_round_by_round_is_not_a_regression(baseline_path):
    """nginx's own figures grow 15 % a round (another tenant): paired ratios stay the baseline."""
    drifting = report({}, drift=1.15)
    assert check(drifting, baseline_path) == 0
    for workload, key, _ in CHECKED:
        assert paired_ratio(drifting, workload, key) == pytest.approx(BASELINE[f"{workload}_ratio"])


def test_a_missing_measurement_fails(baseline_path):
    broken = report({})
    broken["rounds"]["wsrelay"]["audio"] = [{"error": "relay exited"}] * 5
    broken["summary"]["wsrelay"]["audio"] = {}
    assert check(broken, baseline_path) == 1
