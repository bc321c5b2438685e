"""Builds the container image from the repository's Dockerfile with buildah, and checks it.

    python3 tools/image.py build [--base IMAGE]   # `make image`
    python3 tools/image.py check [--json FILE]    # `make image-check`: run it as the manifests do

No Docker daemon is needed: ``buildah bud --isolation chroot`` builds the Dockerfile and
``buildah run --isolation chroot`` runs a command in the image (as root; Debian's buildah and
debootstrap are installed with apt-get when missing).

**The base.** The Dockerfile's ``BASE_IMAGE`` defaults to ``python:3.11-slim``. Where that
cannot be pulled (these machines reach PyPI and Debian's and npm's registries, no image
registry), ``build`` without ``--base`` builds a stand-in from Debian's packages: debootstrap
bookworm (minbase), Debian's python3.11 in a venv at /usr/local/python put first on PATH (so
``python`` and ``pip`` are what the official image has), tagged ``localhost/wsrelay-base``.
Debian's python keeps its headers in python3.11-dev, so the build stage gets it through the
Dockerfile's ``BUILD_PACKAGES``; the runtime stage has none. The stand-in also carries this
machine's CA bundle (``PIP_CERT``), which pip needs where TLS is intercepted. It is made once
per machine: the debootstrap tree is kept as a tar under ~/.cache/wsrelay-image/ and the
images in buildah's store; ``--layers`` reuses the Dockerfile's unchanged steps.

**The check** runs the image as deploy/kubernetes/deployment.yaml does: the image's
ENTRYPOINT with the Deployment's args, as the image's user (which must be the manifest's
``runAsUser``), the config mounted read-only at the manifest's mount path, ``/tmp`` a fresh
tmpfs (the emptyDir), ``WSRELAY_ADMIN_TOKEN`` and ``WSRELAY_AUTH_SECRET`` in the environment
(the Secret). The config is the ConfigMap's ``[relay]`` table (host and admin_host 0.0.0.0)
with ``drain_seconds`` cut to 3, no ``[fleet]`` (no Redis here) and one agent whose upstream
is an echo bot this script runs on the host. chroot isolation shares the host's network, so
the host reaches the relay's ports directly. From the host, with a real client (websockets):

- an echo through the relay (text, binary, 64 KiB), the bot seeing the relayed session;
- ``/healthz`` and ``/readyz`` on the admin port (200), ``/metrics`` 401 without the token,
  200 with it, naming the compiled pump;
- the image's ``HEALTHCHECK`` command run inside the container: exit 0 while the relay runs,
  non-zero once it has stopped (so it does check something);
- the relay's process runs with the manifest's uid and gid;
- ``SIGTERM`` to it with a session open: ``/readyz`` turns 503, ``/healthz`` stays 200, the
  session still echoes, a new connection is refused, and after ``drain_seconds`` both the
  client and the bot get close 1012 "relay restarting"; the process exits 0;
- nothing written to the image's filesystem while it ran (the manifest's readOnlyRootFilesystem);
- the image's size; no compiler (gcc, cc, cpp, clang, ld, their Debian packages) and no
  source tree (/src, /wheels, csrc/; .c, .pyx, .pxi, .h under wsrelay/) left in it; the pump compiled.

One JSON object goes to stdout (and to ``--json FILE``); exit 1 with the failed checks otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wsrelay-image"
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# As Debian's -slim images: no manuals, docs or translations (dpkg leaves them out from then on).
SLIM = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
"""
STANDIN_BUILD_PACKAGES = "gcc libc6-dev python3.11-dev"
ISOLATION = ["--isolation", "chroot"]
DRAIN_SECONDS = 3
ADMIN_TOKEN = "image-check-admin-token-0123456789"
AUTH_SECRET = "image-check-auth-secret-0123456789abcdef"
# What must not be left in the runtime image (its build stage has them).
COMPILERS = re.compile(r"^(gcc|cc|c\+\+|g\+\+|cpp|clang|clang\+\+|tcc|ld|ld\.bfd|ld\.gold|as|"
                       r"[a-z0-9_]+-linux-gnu-(gcc|g\+\+|cpp|ld|as))(-\d+)?$")
COMPILER_PACKAGES = re.compile(r"^(gcc|g\+\+|cpp|clang|binutils|build-essential)(-\d+)?$")
STANDIN_CONTAINERFILE = """\
# The stand-in for python:3.11-slim (tools/image.py): Debian's python3.11 in a venv first on PATH.
FROM {debian}
COPY ca-bundle.crt /usr/local/share/wsrelay-standin/ca-bundle.crt
ENV PIP_CERT=/usr/local/share/wsrelay-standin/ca-bundle.crt
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3.11 python3.11-venv \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \\
 && python3.11 -m venv /usr/local/python \\
 && /usr/local/python/bin/python -m pip --version
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
CMD ["python3"]
"""


# The cached tree and images are named by a digest of how they are made: a changed recipe rebuilds.
RECIPE = hashlib.sha256((SUITE + MIRROR + SLIM + STANDIN_CONTAINERFILE).encode()).hexdigest()[:10]
DEBIAN_IMAGE = f"localhost/wsrelay-debian:{SUITE}-minbase-{RECIPE}"
STANDIN = f"localhost/wsrelay-base:3.11-{SUITE}-{RECIPE}"


class ImageError(Exception):
    """A step failed; the message says which."""


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], what: str, timeout: float = 1800, **kwargs) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if proc.returncode != 0:
        raise ImageError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                         f"{(proc.stdout + proc.stderr)[-4000:]}")
    return proc.stdout


def version() -> str:
    text = (REPO / "src" / "wsrelay" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        raise ImageError("src/wsrelay/__init__.py has no __version__ line")
    return match.group(1)


BUILD_STAGE = "localhost/wsrelay-build:latest"     # the Dockerfile's build stage, kept as the cache


def image_name() -> str:
    """The Deployment's image (wsrelay:<version>), in buildah's local namespace."""
    return f"localhost/wsrelay:{version()}"


def ensure_tools(*programs: str) -> None:
    """buildah (and debootstrap for the stand-in) from Debian's packages, as root, when missing."""
    missing = [p for p in programs if shutil.which(p) is None]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {' '.join(missing)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True)
        run(["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=120", *missing],
            f"apt-get install {' '.join(missing)}", env=env)
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise ImageError(f"{', '.join(missing)} needed (Debian: apt-get install {' '.join(missing)}, as root)")


def image_exists(name: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", name], capture_output=True).returncode == 0


def ca_bundle() -> Path:
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ImageError("no CA bundle found for the stand-in base (PIP_CERT, SSL_CERT_FILE, /etc/ssl/certs)")


def ensure_standin() -> dict:
    """The stand-in base, from cache when there: returns what was (re)built and how long it took."""
    timings: dict = {}
    if image_exists(STANDIN):
        log(f"stand-in base {STANDIN} is in buildah's store: reused")
        return {"reused": True}
    ensure_tools("buildah", "debootstrap")
    tarball = CACHE / f"debian-{SUITE}-minbase-{RECIPE}.tar"
    if not image_exists(DEBIAN_IMAGE):
        if not tarball.exists():
            started = time.monotonic()
            CACHE.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="wsrelay-debootstrap-", dir=CACHE) as tmp:
                root = Path(tmp) / "root"
                log(f"debootstrap {SUITE} (minbase) from {MIRROR}")
                run(["debootstrap", "--variant=minbase", "--include=ca-certificates", SUITE, str(root), MIRROR],
                    "debootstrap")
                (root / "etc/dpkg/dpkg.cfg.d/wsrelay-slim").write_text(SLIM)
                for pattern in ("usr/share/doc/*/*", "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*",
                                "usr/share/lintian/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb",
                                "var/lib/apt/lists/*"):
                    for leftover in root.glob(pattern):
                        if leftover.name in ("copyright", "locale.alias", "partial", "lock"):
                            continue
                        if leftover.is_dir() and not leftover.is_symlink():
                            shutil.rmtree(leftover)
                        else:
                            leftover.unlink()
                (root / "etc" / "apt" / "sources.list").write_text(
                    f"deb {MIRROR} {SUITE} main\ndeb {MIRROR} {SUITE}-updates main\n"
                    f"deb http://deb.debian.org/debian-security {SUITE}-security main\n")
                partial = tarball.with_suffix(".tar.partial")
                run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], "packing the debootstrap tree")
                partial.rename(tarball)
            timings["debootstrap_s"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        ctr = run(["buildah", "from", "scratch"], "buildah from scratch").strip()
        try:
            run(["buildah", "add", "--quiet", ctr, str(tarball), "/"], "adding the Debian tree")
            run(["buildah", "config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "--cmd", '["bash"]', ctr], "buildah config")
            run(["buildah", "commit", "--quiet", ctr, DEBIAN_IMAGE], f"committing {DEBIAN_IMAGE}")
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
        timings["import_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wsrelay-standin-") as tmp:
        shutil.copyfile(ca_bundle(), Path(tmp) / "ca-bundle.crt")
        (Path(tmp) / "Containerfile").write_text(STANDIN_CONTAINERFILE.format(debian=DEBIAN_IMAGE))
        log(f"building the stand-in base {STANDIN} (Debian's python3.11)")
        run(["buildah", "bud", *ISOLATION, "--quiet", "-t", STANDIN, "-f", "Containerfile", "."],
            "building the stand-in base", cwd=tmp)
    timings["python_s"] = round(time.monotonic() - started, 1)
    return timings


def prune_older_layers(since: int) -> None:
    """--layers keeps each step's result (what makes a rebuild of an unchanged tree take seconds);
    the untagged ones of earlier builds (the tags moved on) are only disk: remove those made
    before this build."""
    listed = json.loads(run(["buildah", "images", "--filter", "dangling=true", "--json"], "buildah images") or "[]")
    old = [image["id"] for image in listed if int(image.get("created", since)) < since - 1]
    if old:
        subprocess.run(["buildah", "rmi", *old], capture_output=True)
        log(f"removed {len(old)} untagged layer image(s) of earlier builds")


def cmd_build(args: argparse.Namespace) -> int:
    ensure_tools("buildah")
    started = time.monotonic()
    build_args = []
    if args.base:
        base, standin = args.base, None
    else:
        standin = ensure_standin()
        base = STANDIN
        build_args = ["--build-arg", f"BUILD_PACKAGES={STANDIN_BUILD_PACKAGES}"]
    name = image_name()
    log(f"buildah bud {name} on {base}")
    bud_started, bud_clock = time.monotonic(), int(time.time())
    bud = ["buildah", "bud", *ISOLATION, "--layers", "--format", "docker", "--build-arg", f"BASE_IMAGE={base}",
           *build_args, "-f", "Dockerfile"]
    # The build stage tagged too, so that its cached result is not taken for an earlier build's.
    run([*bud, "--target", "build", "-t", BUILD_STAGE, "."], "buildah bud (the build stage)", cwd=REPO)
    run([*bud, "-t", name, "."], "buildah bud", cwd=REPO)
    prune_older_layers(bud_clock)
    print(json.dumps({"image": name, "base": base, "standin": standin,
                      "bud_s": round(time.monotonic() - bud_started, 1),
                      "seconds": round(time.monotonic() - started, 1)}))
    return 0


# -- check ----------------------------------------------------------------------------------------

def manifests() -> dict:
    import yaml
    docs = {}
    for path in sorted((REPO / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def relay_table(configmap_toml: str) -> str:
    """The ConfigMap's [relay] table, with drain_seconds cut to DRAIN_SECONDS."""
    match = re.search(r"^\[relay\]\n(.*?)(?=^\[)", configmap_toml, re.M | re.S)
    if not match:
        raise ImageError("the ConfigMap's relay.toml has no [relay] table")
    body = re.sub(r"^drain_seconds\s*=.*$", f"drain_seconds = {DRAIN_SECONDS}", match.group(1), flags=re.M)
    if f"drain_seconds = {DRAIN_SECONDS}" not in body:
        body += f"drain_seconds = {DRAIN_SECONDS}\n"
    return "[relay]\n" + body


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(port: int, path: str, token: str | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def http_body(port: int, path: str, token: str) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=3) as response:
        return response.read().decode()


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def relay_process(launcher: int, deadline: float) -> int:
    """The relay's own process among buildah run's descendants (chroot isolation: no pid namespace)."""
    while time.monotonic() < deadline:
        for pid in descendants(launcher):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                exe = os.readlink(f"/proc/{pid}/exe")
            except OSError:
                continue
            # python3.X .../bin/wsrelay serve ... (not buildah-chroot-exec, which runs it)
            if Path(exe).name.startswith("python") and argv[1:2] and argv[1].endswith(b"/wsrelay") \
                    and b"serve" in argv:
                return pid
        time.sleep(0.1)
    raise ImageError("the relay's process did not appear under buildah run")


def ids(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    gid = int(re.search(r"^Gid:\s+(\d+)", status, re.M).group(1))
    return uid, gid


class EchoBot:
    """The agent's upstream on the host: echoes every message, records how each session closed."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.closes: list[tuple[int | None, str | None]] = []
        self.server = None
        self.port = 0

    async def handler(self, ws) -> None:
        import websockets
        self.paths.append(ws.request.path)
        try:
            async for message in ws:
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass
        self.closes.append((ws.close_code, ws.close_reason))

    async def start(self) -> None:
        import websockets
        self.server = await websockets.serve(self.handler, "127.0.0.1", 0, max_size=None)
        self.port = self.server.sockets[0].getsockname()[1]


class Checks:
    def __init__(self) -> None:
        self.results: dict[str, object] = {}
        self.failed: list[str] = []

    def record(self, name: str, ok: bool, seen: object) -> None:
        self.results[name] = {"ok": bool(ok), "seen": seen}
        if not ok:
            self.failed.append(f"{name}: {seen}")
        log(f"{'ok  ' if ok else 'FAIL'} {name}: {seen}")


def inspect_image(name: str) -> dict:
    return json.loads(run(["buildah", "inspect", "--type", "image", name], f"buildah inspect {name}"))


def contents_checks(ctr: str, checks: Checks) -> None:
    """Compiler, source tree and the installed pump, read from the image's mounted filesystem."""
    root = Path(run(["buildah", "mount", ctr], "buildah mount").strip())
    try:
        compilers = []
        for bindir in ("usr/bin", "usr/local/bin", "bin", "usr/local/python/bin", "usr/sbin"):
            directory = root / bindir
            if directory.is_dir():
                compilers += [f"/{bindir}/{p.name}" for p in directory.iterdir() if COMPILERS.match(p.name)]
        status = (root / "var/lib/dpkg/status").read_text() if (root / "var/lib/dpkg/status").exists() else ""
        packages = [name for name, state in re.findall(r"^Package: (\S+)\nStatus: ([^\n]+)", status, re.M)
                    if COMPILER_PACKAGES.match(name) and "installed" in state.split()]
        checks.record("no compiler in the image", not compilers and not packages,
                      {"binaries": compilers, "dpkg packages": packages})
        sources = [f"/{p}" for p in ("src", "wheels", "csrc") if (root / p).exists()]
        site = sorted(root.glob("usr/local/lib/python3*/site-packages/wsrelay")) + \
            sorted(root.glob("usr/local/python/lib/python3*/site-packages/wsrelay"))
        for package in site:
            sources += ["/" + str(p.relative_to(root)) for p in package.rglob("*")
                        if p.suffix in (".c", ".pyx", ".pxi", ".h", ".cpp")]
        sources += ["/" + str(p.relative_to(root)) for p in root.glob("*/csrc")]
        compiled = [str(p.name) for package in site for p in package.glob("pump/_compiled*.so")]
        checks.record("no source tree in the image", not sources and bool(site),
                      {"sources found": sources, "wsrelay installed at": ["/" + str(p.relative_to(root)) for p in site]})
        checks.record("the compiled pump is installed", bool(compiled), compiled)
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True)


def files_written_since(ctr: str, since: float) -> list[str]:
    """Files of the container's root changed since ``since`` (the mounts and buildah's own excepted)."""
    root = Path(run(["buildah", "mount", ctr], "buildah mount").strip())
    skip = {"proc", "sys", "dev", "run", "tmp"}
    own = {"etc/hosts", "etc/resolv.conf", "etc/hostname", "etc/wsrelay"}
    found = []
    try:
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(root)
            if rel.parts and rel.parts[0] in skip or str(rel) in own:
                dirnames[:] = []
                continue
            for name in filenames:
                path = Path(dirpath) / name
                relname = str(path.relative_to(root))
                try:
                    if relname not in own and path.lstat().st_mtime >= since:
                        found.append("/" + relname)
                except OSError:
                    pass
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True)
    return found


def healthcheck(ctr: str, test: list[str], env: list[str]) -> tuple[int, str]:
    if not test or test[0] not in ("CMD", "CMD-SHELL"):
        raise ImageError(f"the image's HEALTHCHECK is {test!r}")
    command = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
    proc = subprocess.run(["buildah", "run", *ISOLATION, *env, ctr, "--", *command],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, (proc.stdout + proc.stderr).strip()[-300:]


async def session_checks(checks: Checks, ws_port: int, admin_port: int, bot: EchoBot, relay_pid: int,
                         launcher: subprocess.Popen, ctr: str, test: list[str], env: list[str]) -> None:
    import websockets
    url = f"ws://127.0.0.1:{ws_port}/ws/generic/echo.host"
    deadline = time.monotonic() + 60
    while True:
        try:
            if http(admin_port, "/readyz") == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or launcher.poll() is not None:
            raise ImageError("the relay did not become ready in 60 s")
        await asyncio.sleep(0.2)
    checks.record("/healthz on the admin port", http(admin_port, "/healthz") == 200, http(admin_port, "/healthz"))
    checks.record("/readyz on the admin port", http(admin_port, "/readyz") == 200, http(admin_port, "/readyz"))
    no_token, with_token = http(admin_port, "/metrics"), http(admin_port, "/metrics", ADMIN_TOKEN)
    metrics = http_body(admin_port, "/metrics", ADMIN_TOKEN) if with_token == 200 else ""
    pump = re.search(r'wsrelay_build_info\{pump="(\w+)"', metrics)
    checks.record("/metrics needs the Secret's admin token", (no_token, with_token) == (401, 200),
                  {"without": no_token, "with": with_token, "pump": pump and pump.group(1)})
    checks.record("the relay reports the compiled pump", bool(pump) and pump.group(1) == "cython",
                  pump and pump.group(1))

    async with websockets.connect(url, max_size=None) as ws:
        sent = ["hello through the image", b"\x00\x01binary\xff", os.urandom(65536)]
        echoed = []
        for message in sent:
            await ws.send(message)
            echoed.append(await asyncio.wait_for(ws.recv(), 10))
        checks.record("WebSocket echo through the image", echoed == sent,
                      {"messages": len(sent), "bytes": sum(len(m) for m in sent), "bot saw": bot.paths[-1:]})

    rc, out = await asyncio.to_thread(healthcheck, ctr, test, env)
    checks.record("HEALTHCHECK command while running", rc == 0, {"exit": rc, "output": out})

    uid, gid = ids(relay_pid)
    checks.results["process"] = {"pid": relay_pid, "uid": uid, "gid": gid}

    # SIGTERM with a session open: drain, then 1012 to both sides.
    ws = await websockets.connect(url, max_size=None)
    await ws.send("before SIGTERM")
    await asyncio.wait_for(ws.recv(), 10)
    bot_closes_before = len(bot.closes)
    os.kill(relay_pid, signal.SIGTERM)
    signalled = time.monotonic()
    ready, ready_after = None, None
    while time.monotonic() - signalled < DRAIN_SECONDS - 1:
        ready = http(admin_port, "/readyz")
        if ready == 503:
            ready_after = round(time.monotonic() - signalled, 3)
            break
        await asyncio.sleep(0.05)
    healthz = http(admin_port, "/healthz")
    await ws.send("during the drain")
    during = await asyncio.wait_for(ws.recv(), 5)
    try:
        async with websockets.connect(url, open_timeout=3) as late:
            refused = f"accepted ({late.response.status_code if late.response else '?'})"
    except (OSError, websockets.InvalidStatus, websockets.InvalidHandshake, asyncio.TimeoutError) as exc:
        refused = type(exc).__name__ + (f" {exc.response.status_code}" if getattr(exc, "response", None) else "")
    checks.record("SIGTERM: /readyz 503, /healthz 200, live session echoes, new session refused",
                  ready == 503 and healthz == 200 and during == "during the drain" and not refused.startswith("accepted"),
                  {"readyz": ready, "healthz": healthz, "echo during drain": during == "during the drain",
                   "new connection": refused,
                   "readyz 503 after_s": ready_after})
    try:
        await asyncio.wait_for(ws.recv(), DRAIN_SECONDS + 10)
    except websockets.ConnectionClosed:
        pass
    closed_after = round(time.monotonic() - signalled, 2)
    await asyncio.sleep(0.5)
    bot_close = bot.closes[bot_closes_before] if len(bot.closes) > bot_closes_before else None
    checks.record(f"SIGTERM: after drain_seconds ({DRAIN_SECONDS}) close 1012 to client and bot",
                  ws.close_code == 1012 and bot_close is not None and bot_close[0] == 1012
                  and DRAIN_SECONDS - 0.5 <= closed_after <= DRAIN_SECONDS + 6,
                  {"client": [ws.close_code, ws.close_reason], "bot": bot_close, "after_s": closed_after})
    try:
        rc = await asyncio.to_thread(launcher.wait, 30)
    except subprocess.TimeoutExpired:
        rc = None
    checks.record("SIGTERM: the relay exits 0", rc == 0,
                  {"exit": rc, "after_s": round(time.monotonic() - signalled, 2)})


def client_python() -> None:
    """Re-run under a venv with websockets and PyYAML when this Python lacks them (a fresh clone:
    `make image-check` with the system python3); the versions are the [test] extra's."""
    try:
        import websockets  # noqa: F401
        import yaml  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get("WSRELAY_IMAGE_CLIENT_VENV"):
        raise ImageError("the client venv lacks websockets or PyYAML")
    venv = CACHE / "client-venv"
    python = venv / "bin" / "python"
    if subprocess.run([str(python), "-c", "import websockets, yaml"], capture_output=True).returncode != 0 \
            if python.exists() else True:
        log(f"making {venv} with websockets and PyYAML (this Python has not both)")
        run([sys.executable, "-m", "venv", str(venv)], "creating the client venv")
        run([str(python), "-m", "pip", "install", "--quiet", "websockets>=13", "PyYAML>=6"], "installing the clients")
    os.execve(str(python), [str(python), *sys.argv], dict(os.environ, WSRELAY_IMAGE_CLIENT_VENV="1"))


def cmd_check(args: argparse.Namespace) -> int:
    client_python()
    ensure_tools("buildah")
    started = time.monotonic()
    name = image_name()
    if not image_exists(name):
        raise ImageError(f"{name} is not built: run 'make image' first")
    checks = Checks()
    info = inspect_image(name)
    config = info.get("Docker", {}).get("config", {}) or info.get("OCIv1", {}).get("config", {})
    docs = manifests()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = pod["securityContext"]
    user = f"{security['runAsUser']}:{security['runAsGroup']}"
    checks.record("the image's USER is the manifest's runAsUser:runAsGroup", config.get("User") == user,
                  {"image": config.get("User"), "manifest": user})
    checks.record("the Deployment's image is the one built", container["image"] == name.removeprefix("localhost/"),
                  {"manifest": container["image"], "built": name})
    test = (config.get("Healthcheck") or {}).get("Test") or []
    checks.record("the image keeps its HEALTHCHECK (docker format)", bool(test), test)
    sizes = {"buildah images": run(["buildah", "images", "--format", "{{.Size}}", "--noheading", name],
                                   "buildah images").strip()}

    ws_port = int(re.search(r"^port\s*=\s*(\d+)", docs["ConfigMap"]["data"]["relay.toml"], re.M).group(1))
    admin_port = int(re.search(r"^admin_port\s*=\s*(\d+)", docs["ConfigMap"]["data"]["relay.toml"], re.M).group(1))
    if not port_free(admin_port):
        raise ImageError(f"port {admin_port} (the admin port, which the HEALTHCHECK asks) is in use on this host: "
                         "chroot isolation shares the host's network; stop what listens there")
    if not port_free(ws_port):
        log(f"port {ws_port} is in use on this host: the relay listens on a free port instead")
        ws_port = free_port()

    ctr = run(["buildah", "from", "--pull-never", name], "buildah from").strip()
    try:
        contents_checks(ctr, checks)
        rootfs = Path(run(["buildah", "mount", ctr], "buildah mount").strip())
        sizes["rootfs_bytes"] = int(run(["du", "-sb", "--exclude=./proc", "--exclude=./sys", str(rootfs)], "du")
                                    .split()[0])
        subprocess.run(["buildah", "umount", ctr], capture_output=True)
        checks.results["size"] = sizes
        checks.record("image size under 400 MB", sizes["rootfs_bytes"] < 400e6, sizes)

        with tempfile.TemporaryDirectory(prefix="wsrelay-image-check-") as tmp:
            asyncio.run(run_relay(checks, ctr, Path(tmp), docs, ws_port, admin_port, test, config))
    finally:
        subprocess.run(["buildah", "rm", ctr], capture_output=True)
    checks.results["seconds"] = round(time.monotonic() - started, 1)
    summary = {"image": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "failed": checks.failed, "checks": checks.results}
    text = json.dumps(summary, indent=1, default=str)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    if checks.failed:
        log(f"{len(checks.failed)} check(s) failed")
        return 1
    return 0


async def run_relay(checks: Checks, ctr: str, tmp: Path, docs: dict, ws_port: int, admin_port: int,
                    test: list[str], config: dict) -> None:
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    bot = EchoBot()
    await bot.start()
    configdir = tmp / "config"
    configdir.mkdir()
    configdir.chmod(0o755)
    toml = relay_table(docs["ConfigMap"]["data"]["relay.toml"])
    toml = re.sub(r"^port\s*=.*$", f"port = {ws_port}", toml, count=1, flags=re.M)
    toml += (f'\n[[agents]]\nname = "echo"\norganization = "host"\n'
             f'upstreams = ["ws://127.0.0.1:{bot.port}/bot"]\nwebsocket_auth = "none"\n')
    (configdir / "relay.toml").write_text(toml)
    (configdir / "relay.toml").chmod(0o644)
    checks.results["config"] = toml
    secret_env = {"WSRELAY_ADMIN_TOKEN": ADMIN_TOKEN, "WSRELAY_AUTH_SECRET": AUTH_SECRET}
    named = {e["name"] for e in container["env"]}
    if named != set(secret_env):
        raise ImageError(f"the Deployment's env names {sorted(named)}, this check sets {sorted(secret_env)}")
    env = [a for k, v in secret_env.items() for a in ("--env", f"{k}={v}")]
    mounts = ["--volume", f"{configdir}:{mount['mountPath']}:ro",
              "--mount", "type=tmpfs,destination=/tmp"]
    command = [*(config.get("Entrypoint") or []), *container["args"]]
    checks.results["command"] = command
    since = time.time()
    logfile = tmp / "relay.log"
    with open(logfile, "w") as out:
        launcher = subprocess.Popen(["buildah", "run", *ISOLATION, *env, *mounts, ctr, "--", *command],
                                    stdout=out, stderr=subprocess.STDOUT)
    try:
        relay_pid = relay_process(launcher.pid, time.monotonic() + 30)
        uid, gid = ids(relay_pid)
        want = (docs["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
                docs["Deployment"]["spec"]["template"]["spec"]["securityContext"]["runAsGroup"])
        checks.record("the relay runs as the manifest's non-root uid and gid", (uid, gid) == want and uid != 0,
                      {"uid": uid, "gid": gid, "manifest": list(want)})
        await session_checks(checks, ws_port, admin_port, bot, relay_pid, launcher, ctr, test, env)
        rc, out = await asyncio.to_thread(healthcheck, ctr, test, env)
        checks.record("HEALTHCHECK command fails once the relay has stopped", rc != 0, {"exit": rc})
    except ImageError as exc:
        checks.record("the relay ran", False, str(exc))
    finally:
        if launcher.poll() is None:
            launcher.terminate()
            try:
                launcher.wait(30)
            except subprocess.TimeoutExpired:
                launcher.kill()
        bot.server.close()
        relay_log = logfile.read_text()
        checks.results["relay log tail"] = relay_log.splitlines()[-6:]
    written = files_written_since(ctr, since)
    checks.record("nothing written to the image's filesystem (readOnlyRootFilesystem)", not written, written[:20])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the image (`make image`)")
    build.add_argument("--base", help="BASE_IMAGE (default: the stand-in built from Debian's packages)")
    check = sub.add_parser("check", help="run the image as the manifests do and check it (`make image-check`)")
    check.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    try:
        return {"build": cmd_build, "check": cmd_check}[args.command](args)
    except ImageError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"image: a step took too long: {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
