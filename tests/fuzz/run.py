"""Coverage-guided fuzzing of one harness (tests/fuzz/harnesses.py) with atheris.

    python tests/fuzz/run.py NAME [--seconds 60]      # `make fuzz` runs every harness

Starts from the seeds in ``tests/fuzz/corpus/NAME/`` (read only: what the fuzzer finds is
written to a temporary corpus, not into the checkout), runs for ``--seconds``, and fails
on the first input that raises, breaks the harness's contract, or takes over a second
(libFuzzer's ``-timeout``). The crashing input is written to ``--artifacts`` (default:
the current folder): add it to the corpus, so tests/test_fuzz_corpus.py keeps it as a
regression, and fix the parser. Prints libFuzzer's closing line (executions and
executions per second).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

with atheris.instrument_imports(include=["wsrelay"]):
    from harnesses import HARNESSES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(HARNESSES))
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--artifacts", default=".", help="where a crashing input is written")
    args = parser.parse_args()
    seeds = HERE / "corpus" / args.name
    with tempfile.TemporaryDirectory(prefix=f"wsrelay-fuzz-{args.name}-") as found:
        libfuzzer = [sys.argv[0], found, str(seeds), f"-max_total_time={args.seconds}", "-timeout=1",
                     "-rss_limit_mb=2048", "-max_len=16384", "-print_final_stats=1",
                     f"-artifact_prefix={Path(args.artifacts).resolve()}/fuzz-{args.name}-"]
        atheris.Setup(libfuzzer, HARNESSES[args.name])
        atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
