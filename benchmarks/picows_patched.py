"""Idle memory with the upstream picows patches (patches/picows/) against stock picows.

    python benchmarks/picows_patched.py [--sessions 3000] [--venv DIR]

Builds picows from its sdist (the pinned version, from PyPI) with every patch in
patches/picows/ applied, into a venv of its own (``--venv``, default
benchmarks/results/picows-patched), installs this checkout of wsrelay beside it, and runs
``session_memory.py`` there and with the running Python's own (stock) picows, each in a
fresh process. The patches leave ``picows.pxd`` as it is, so wsrelay's compiled pump is the
same build either way. Prints both figures; ``--json`` writes them.

Nothing here is asserted: it is the benchmark that goes with the upstream change.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PATCHES = sorted((ROOT / "patches" / "picows").glob("*.patch"))


def pinned_picows() -> str:
    from wsrelay.edge.handover import PICOWS_VERSION
    return PICOWS_VERSION


def run(*command: str | Path, cwd: Path | None = None) -> None:
    print("+", " ".join(map(str, command)), flush=True)
    subprocess.run([str(c) for c in command], cwd=cwd, check=True)


def build_patched_venv(target: Path, version: str) -> Path:
    """A venv with picows ``version`` built from its sdist with PATCHES, and wsrelay; its python."""
    python = target / "bin" / "python"
    stamp = target / ".patched-picows"
    wanted = f"{version} " + " ".join(p.name for p in PATCHES)
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(target)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run(python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "picows",
            f"picows=={version}", "-d", work)
        (sdist,) = work.glob(f"picows-{version}.tar.gz")
        with tarfile.open(sdist) as archive:
            archive.extractall(work, filter="data")
        source = work / f"picows-{version}"
        for patch in PATCHES:
            run("patch", "-p1", "--forward", "-i", patch, cwd=source)
        run(python, "-m", "pip", "install", "--quiet", source)
    run(python, "-m", "pip", "install", "--quiet", ROOT)       # its picows==version is the patched one
    stamp.write_text(wanted)
    return python


def idle_kib(python: Path | str, sessions: int) -> float:
    out = subprocess.run([str(python), str(HERE / "session_memory.py"), "--one", str(sessions)],
                         capture_output=True, text=True, timeout=900, cwd=HERE)
    if out.returncode != 0:
        raise SystemExit(f"session_memory.py failed under {python}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["rss_bytes_per_session"] / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--venv", type=Path, default=HERE / "results" / "picows-patched")
    parser.add_argument("--json")
    args = parser.parse_args()
    if not PATCHES:
        raise SystemExit(f"no patches in {ROOT / 'patches' / 'picows'}: run this from a checkout or the sdist")
    version = pinned_picows()
    patched = build_patched_venv(args.venv.resolve(), version)
    result = {"picows": version, "patches": [p.name for p in PATCHES], "sessions": args.sessions,
              "stock_kib_per_session": idle_kib(sys.executable, args.sessions),
              "patched_kib_per_session": idle_kib(patched, args.sessions)}
    print(f"\nidle memory per relayed session, {args.sessions} sessions, picows {version}:")
    print(f"  stock:   {result['stock_kib_per_session']:.2f} KiB RSS")
    print(f"  patched: {result['patched_kib_per_session']:.2f} KiB RSS  ({', '.join(result['patches'])})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
