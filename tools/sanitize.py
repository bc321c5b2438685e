"""The compiled pump under AddressSanitizer and UndefinedBehaviorSanitizer (`make sanitize`).

    python tools/sanitize.py [-- PYTEST_ARGS...]

Builds ``wsrelay.pump._compiled`` with clang (Debian's ``clang``, installed when missing as
root) and ``-fsanitize=address,undefined`` into ``build/sanitize/``, beside a copy of the
package's Python sources, then runs the tests that drive the pump hardest (transparency,
hostile peers, paused sides, coalescing, the two pumps' equivalence) for the compiled pump
against that build, relay subprocesses included: ASan's runtime is preloaded into every
Python process, ``PYTHONMALLOC=malloc`` gives Python's objects (and picows' buffers) ASan's
red zones instead of pymalloc's arenas, and the first error aborts the process, so a test
fails. The pump is the only instrumented code: what is checked is its own reads and writes
(picows' read buffers, payload pointers, the client stream's scan).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "sanitize"
TESTS = ["tests/test_transparency.py", "tests/test_hostile.py", "tests/test_paused.py",
         "tests/test_coalescing.py", "tests/test_pump_equivalence.py"]
FLAGS = "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g -O1"


def clang() -> str:
    path = shutil.which("clang")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "clang"], env=env, capture_output=True)
        path = shutil.which("clang")
    if path is None:
        raise SystemExit("sanitize: clang is needed (Debian: apt-get install clang)")
    return path


def build(cc: str) -> Path:
    """The package's Python sources and the sanitized pump in BUILD; the ASan runtime's path."""
    shutil.rmtree(BUILD, ignore_errors=True)
    shutil.copytree(REPO / "src" / "wsrelay", BUILD / "wsrelay",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    env = dict(os.environ, CC=cc, LDSHARED=f"{cc} -shared", CFLAGS=FLAGS, LDFLAGS=f"{FLAGS} -shared-libasan")
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--force", "--build-lib", str(BUILD),
                    "--build-temp", str(BUILD.parent / "sanitize-tmp")], cwd=REPO, env=env, check=True)
    built = list((BUILD / "wsrelay" / "pump").glob("_compiled*.so"))
    if len(built) != 1:
        raise SystemExit(f"sanitize: expected one built pump in {BUILD}, found {built}")
    symbols = subprocess.run(["nm", "-D", "--undefined-only", str(built[0])], capture_output=True, text=True).stdout
    if "__asan_" not in symbols or "__ubsan_" not in symbols:
        raise SystemExit(f"sanitize: {built[0].name} is not instrumented (no __asan_/__ubsan_ symbols)")
    runtime = subprocess.run([cc, "-print-file-name=libclang_rt.asan-x86_64.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    if not Path(runtime).exists():
        raise SystemExit(f"sanitize: clang's ASan runtime is missing ({runtime})")
    return Path(runtime)


# Proof that the setup catches what it is for: an overflow through an intercepted libc call,
# and undefined behaviour in code built with the pump's flags, each abort their process.
SELF_CHECKS = {
    "heap-buffer-overflow": "import ctypes; libc = ctypes.CDLL(None); libc.malloc.restype = ctypes.c_void_p; "
                            "ctypes.memset(libc.malloc(16), 0, 17)",
    "signed integer overflow": "import ctypes, sys; ctypes.CDLL(sys.argv[1]).next_int(2147483647)",
}
UB_SOURCE = "int next_int(int x) { return x + 1; }\n"


def self_check(cc: str, env: dict[str, str]) -> None:
    source = BUILD.parent / "sanitize-ub.c"
    library = BUILD.parent / "sanitize-ub.so"
    source.write_text(UB_SOURCE)
    subprocess.run([cc, *FLAGS.split(), "-shared-libasan", "-shared", "-fPIC", "-o", str(library), str(source)],
                   check=True)
    for expected, code in SELF_CHECKS.items():
        # The report goes to a file, not a pipe: ASan's symbolizer may outlive the aborted process.
        report = BUILD.parent / "sanitize-self-check.txt"
        with report.open("w") as out:
            done = subprocess.run([sys.executable, "-c", code, str(library)], env=env, stdout=out, stderr=out,
                                  timeout=120)
        text = report.read_text()
        if done.returncode == 0 or expected not in text:
            raise SystemExit(f"sanitize: the sanitizers did not catch a {expected} (exit {done.returncode}): "
                             f"{text[-1000:]}")
    print(f"sanitize: self-check: {' and '.join(SELF_CHECKS)} abort as they must", flush=True)


def main(argv: list[str]) -> int:
    cc = clang()
    runtime = build(cc)
    env = dict(os.environ, PYTHONPATH=str(BUILD), LD_PRELOAD=str(runtime), PYTHONMALLOC="malloc",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:verify_asan_link_order=0:strict_init_order=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    env.pop("WSRELAY_EXPECT_INSTALLED", None)            # the sanitized build, not the installed wheel
    env.pop("WSRELAY_PURE_PYTHON", None)
    check = subprocess.run([sys.executable, "-c", "import wsrelay.pump._compiled as c; print(c.__file__)"],
                           env=env, capture_output=True, text=True, timeout=120)
    if check.returncode != 0 or not check.stdout.strip().startswith(str(BUILD)):
        raise SystemExit(f"sanitize: the sanitized pump does not load: {check.stdout}{check.stderr[-2000:]}")
    print(f"sanitize: {check.stdout.strip()} (ASan + UBSan, runtime {runtime.name})", flush=True)
    self_check(cc, env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS,
                           "-k", "not python", *argv], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
