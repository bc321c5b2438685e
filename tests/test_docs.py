"""Every code example in README.md and docs/*.md runs here: an example that breaks fails a test.

The convention for fenced code blocks (``` followed by the language tag) in the documentation:

* every block has a tag; a block without one fails ``test_every_block_has_a_known_tag``;
* ``python``: a script, run with the installed wsrelay in a fresh interpreter, in a temporary
  folder holding ``relay.toml`` (``RELAY_TOML`` below: the agent ``my-agent.my-org`` with token
  auth, a signing key and the public key ``pk_live_abc123``); it must exit 0;
* ``toml``: a whole config file, which the config loader must accept (``wsrelay check``'s rules);
  a page shows a table or two on their own only when they make a valid file on their own;
* ``sh``: commands, one a line (a line ending in ``\\`` goes on; ``# ...`` is a comment, often
  the output). Each is either run, in that same folder (``RUN``), or listed in ``NOT_RUN``
  with the reason; a command in neither list fails ``test_every_command_is_run_or_says_why_not``.
  A run command must exit 0. A block that names ``localhost:8765`` talks to a relay: the test
  starts one on a free port of 127.0.0.1 (the demo for ``echo.demo``, else ``relay.toml``) and
  points the block at it;
* ``json``: one or more JSON values (log lines, answers), each must parse;
* ``xml`` (telephony providers' documents) must parse; ``yaml`` must parse;
* ``text``: output, diagrams and messages, not run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest

import wsrelay
from support import TEST_REQUIRES_ONLY

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TAGS = {"python", "toml", "sh", "json", "xml", "yaml", "text"}

RELAY_TOML = """\
[relay]
public_url = "wss://relay.example.com"

[auth]
secret = "a-long-random-string"

[[agents]]
name = "my-agent"
organization = "my-org"
upstreams = ["ws://10.0.0.5:7860/ws"]
websocket_auth = "token"
public_keys = ["pk_live_abc123"]
"""

# Commands run as the documentation shows them (a regular expression over the whole command).
RUN = [
    r"wsrelay --version",
    r"wsrelay --help",
    r"wsrelay check --config relay\.toml",
    r"wsrelay token my-agent\.my-org --config relay\.toml( --ttl \d+)?",
    r"curl -s -X POST http://localhost:8765/v1/public/my-agent/start .*",
]

# Commands not run, with the reason (a prefix of the command).
NOT_RUN = {
    "pip install": "installs from PyPI: `make test` installs the wheel and the sdist it built (tools/wheels.py)",
    "WSRELAY_NO_EXTENSIONS=1 pip install": "the same, from the sdist: tools/wheels.py check-sdist does it",
    "make demo": "runs until stopped; the demo echoes in tests/test_real_clients.py and tools/wheels.py check",
    "make test": "it is the run this test is part of",
    "make docs": "make test runs it",
    "make wheels": "builds a wheel per Python on the machine, minutes each",
    "make wheels-check": "after make wheels",
    "make bench": "about 13 minutes on 2 cores",
    "make bench-short": "CI runs it after make test",
    "make bench-gate": "make test runs it (about 3 minutes)",
    "make bench-gate-record": "writes benchmarks/baseline.json",
    "make bench-picows-patch": "builds picows from its sdist, minutes",
    "make fuzz": "make test runs it, 10 s a harness",
    "make sanitize": "make test runs it (about 2 minutes)",
    "make soak": "make test runs it for 2 minutes",
    "make image": "buildah, as root, about 3 minutes cold; make test runs make image-check",
    "wsrelay serve": "runs until stopped; tests/test_cli.py and tests/test_real_clients.py run it",
    "wscat -c": "interactive; tests/test_real_clients.py runs wscat against the demo",
    ".venv/bin/python -m websockets": "interactive; this test's Python examples connect to the demo",
    "python benchmarks/": "a measurement of minutes (docs/performance.md says how long)",
    "python3 -c \"import secrets": "prints a random token",
    "wsrelay agents": "needs the fleet's Redis: tests/test_fleet.py runs apply, delete and list",
    "kill -HUP": "needs a running relay: tests/test_cli.py reloads on SIGHUP",
    "kill -TERM": "needs a running relay: tests/test_cli.py drains on SIGTERM",
    "python -m aiohttp.web": "a bot that runs until stopped: tests/session_api_support.py serves the same routes",
    "curl -s http://localhost:8765/v1/public/my-agent/sessions/": "needs a live session of a bot with HTTP routes: "
                                                                   "tests/test_session_api.py makes such calls",
}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    tag: str
    text: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line} ({self.tag or 'no tag'})"


def blocks() -> list[Block]:
    found = []
    for page in PAGES:
        lines = page.read_text().split("\n")
        i = 0
        while i < len(lines):
            match = re.match(r"^( *)```(\S*)\s*$", lines[i])
            if match:
                indent, tag, start = match.group(1), match.group(2), i
                body = []
                i += 1
                while i < len(lines) and lines[i].strip() != "```":
                    body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
                    i += 1
                found.append(Block(page, start + 1, tag, "\n".join(body) + "\n"))
            i += 1
    return found


BLOCKS = blocks()


def of(tag: str) -> list:
    return [pytest.param(b, id=str(b)) for b in BLOCKS if b.tag == tag]


def commands(block: Block) -> list[str]:
    """The commands of a ``sh`` block: continuation lines joined, comments and blank lines dropped."""
    out, pending = [], ""
    for raw in block.text.split("\n"):
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        line = re.sub(r"\s+#.*$", "", line) if not line.startswith("#") else ""
        if line:
            out.append(line)
    return out


def not_run_reason(command: str) -> str | None:
    return next((why for prefix, why in NOT_RUN.items() if command.startswith(prefix)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(proc: subprocess.Popen, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the relay exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, "the relay did not listen"
            time.sleep(0.05)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "relay.toml").write_text(RELAY_TOML)
    return tmp_path


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSRELAY_") or k == "WSRELAY_PURE_PYTHON"}
    if env.get("PYTHONPATH"):               # the examples run in another folder: keep what this test imports
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep))
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")       # `wsrelay` is the installed one
    return env


@pytest.fixture(scope="module")
def relays(tmp_path_factory):
    """Two relays on free ports, started when a block first needs one: the demo and relay.toml's."""
    started: dict[str, tuple[subprocess.Popen, int]] = {}
    folder = tmp_path_factory.mktemp("relays")
    (folder / "relay.toml").write_text(RELAY_TOML)

    def port_of(kind: str) -> int:
        if kind not in started:
            port = free_port()
            config = [] if kind == "demo" else ["--config", "relay.toml"]
            proc = subprocess.Popen([sys.executable, "-m", "wsrelay", "serve", *config, "--host", "127.0.0.1",
                                     "--port", str(port), "--admin-port", "0"], cwd=folder, env=environment(),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started[kind] = (proc, port)
            wait_port(proc, port)
        return started[kind][1]

    yield port_of
    for proc, _ in started.values():
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def aimed(text: str, relays) -> str:
    """The block pointed at a relay of the test's when it names ``localhost:8765``."""
    if "localhost:8765" not in text:
        return text
    port = relays("demo" if "echo.demo" in text else "config")
    return text.replace("localhost:8765", f"127.0.0.1:{port}")


def test_the_pages_have_code_blocks_and_the_readme_fits_in_300_lines():
    assert len(BLOCKS) > 30
    assert {b.page.name for b in BLOCKS} >= {"README.md", "tokens.md", "config-file.md"}
    assert len((REPO / "README.md").read_text().split("\n")) <= 300


def test_every_block_has_a_known_tag():
    unknown = [str(b) for b in BLOCKS if b.tag not in TAGS]
    assert unknown == [], f"tag each block with one of {sorted(TAGS)} (tests/test_docs.py says what each means)"


def test_every_command_is_run_or_says_why_not():
    unclassified = [f"{b}: {c}" for b in BLOCKS if b.tag == "sh" for c in commands(b)
                    if not any(re.fullmatch(p, c) for p in RUN) and not_run_reason(c) is None]
    assert unclassified == [], "add each command to RUN or NOT_RUN (with the reason) in tests/test_docs.py"


@pytest.mark.parametrize("block", of("python"))
def test_python_examples_run(block, folder, relays):
    script = folder / "example.py"
    script.write_text(aimed(block.text, relays))
    result = subprocess.run([sys.executable, str(script)], cwd=folder, env=environment(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"{block} failed:\n{result.stderr}"


@pytest.mark.parametrize("block", of("toml"))
def test_config_examples_are_valid_config_files(block):
    try:
        wsrelay.parse_config(block.text, source=str(block), environ={})
    except wsrelay.ConfigErrors as exc:
        pytest.fail(f"{block} is not a valid config file:\n{exc}")


@pytest.mark.parametrize("block", of("sh"))
def test_shell_examples_run(block, folder, relays):
    for command in commands(block):
        if not_run_reason(command) is not None:
            continue
        assert any(re.fullmatch(p, command) for p in RUN), f"{block}: {command}"
        if command.startswith("curl") and shutil.which("curl") is None and TEST_REQUIRES_ONLY:
            continue            # cibuildwheel's containers may have no curl; make test's Debian has it
        result = subprocess.run(aimed(command, relays), shell=True, cwd=folder, env=environment(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{block}: {command} exited {result.returncode}:\n{result.stderr}"
        if command.startswith("curl"):
            answer = json.loads(result.stdout)
            assert set(answer) >= {"wsUrl", "sessionId", "token"}, f"{block}: {command} answered {answer}"
        if command == "wsrelay --version":
            shown = re.search(r"wsrelay --version +# (.*)", block.text)
            assert shown is None or result.stdout.split("(")[0] == shown.group(1).split("(")[0], \
                f"{block}: `wsrelay --version` prints {result.stdout!r}"


@pytest.mark.parametrize("block", of("json"))
def test_json_examples_parse(block):
    decoder, text, position, values = json.JSONDecoder(), block.text, 0, 0
    while text[position:].strip():
        position += len(text[position:]) - len(text[position:].lstrip())
        try:
            _, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            pytest.fail(f"{block}: {exc}")
        values += 1
    assert values >= 1


@pytest.mark.parametrize("block", of("xml"))
def test_xml_examples_parse(block):
    ElementTree.fromstring(block.text)


@pytest.mark.parametrize("block", of("yaml"))
def test_yaml_examples_parse(block):
    import yaml
    assert yaml.safe_load(block.text)


def test_the_commands_here_are_the_ones_the_relay_knows():
    """The NOT_RUN list names real make targets, so a renamed target cannot hide behind it."""
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    for prefix in NOT_RUN:
        if prefix.startswith("make "):
            assert shlex.split(prefix)[1] in targets, prefix


def test_the_public_api_example_is_on_the_tokens_page():
    text = (REPO / "docs" / "tokens.md").read_text()
    assert "wsrelay.mint_token(" in text and "wsrelay.load_config(" in text
    assert "from wsrelay.auth import" not in (REPO / "README.md").read_text()


def architecture_tree() -> dict[str, set[str]]:
    """docs/architecture.md's package tree: folder ('' for the package root) -> the modules it lists.

    A line starting at column 0 names a folder (``name/``, and the modules its description
    names) or a root module (``name.py``); a line indented by two spaces lists modules of the
    folder above it; deeper lines continue a description."""
    page = (REPO / "docs" / "architecture.md").read_text()
    tree = page.split("```text\n", 1)[1].split("```", 1)[0]
    listed: dict[str, set[str]] = {"": set()}
    current = ""
    for line in tree.splitlines():
        if not line.strip() or line.strip() == "│":
            continue
        words = line.split()
        if not line.startswith(" "):
            if words[0].endswith("/"):
                current = words[0].rstrip("/")
                listed.setdefault(current, set()).update(w.rstrip(",") for w in words[1:]
                                                         if re.fullmatch(r"\w+\.py,?", w))
                continue
            current = ""
            listed[""].update(w for w in words if re.fullmatch(r"\w+\.py", w))
            continue
        if line.startswith("  ") and not line.startswith("   "):
            listed[current].update(w for w in words if re.fullmatch(r"\w+\.pyi?", w))
    return listed


def test_the_architecture_page_lists_every_module_where_it_is():
    """The Architecture page's tree is the package's: every module in its folder, none that is gone."""
    package = REPO / "src" / "wsrelay"
    actual: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        relative = path.relative_to(package)
        if path.name in ("__init__.py", "__main__.py") or len(relative.parts) > 2:
            continue
        actual.setdefault(relative.parts[0] if len(relative.parts) == 2 else "", set()).add(path.name)
    listed = architecture_tree()
    assert {folder for folder in listed if folder} >= {folder for folder in actual if folder}
    missing = {folder: sorted(names - listed.get(folder, set())) for folder, names in actual.items()
               if names - listed.get(folder, set())}
    gone = {folder: sorted(names - actual.get(folder, set()) - {"__init__.py"})
            for folder, names in listed.items() if names - actual.get(folder, set()) - {"__init__.py"}}
    assert missing == {}, "modules the Architecture page does not list"
    assert gone == {}, "modules the Architecture page lists that are not there"
