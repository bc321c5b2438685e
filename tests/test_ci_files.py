"""The CI and release files cannot silently rot: what they run must exist and agree.

The public repository's workflows (.github/workflows/) and cibuildwheel's configuration
(pyproject.toml [tool.cibuildwheel]) cannot run here, so they are checked instead: every
``make`` target they call is a target of the Makefile, cibuildwheel itself accepts the
configuration and expands it to the wheels the README promises, the Python versions and the
picows pin agree everywhere, and the release publishes with trusted publishing.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PYTHONS = ("3.11", "3.12", "3.13", "3.14")

# .github/ and .ci/ are the repository's, not the sdist's (MANIFEST.in): the tests reading them
# skip in an unpacked sdist (it has PKG-INFO) and nowhere else; a checkout without them fails.
FROM_SDIST = not (REPO / ".github").is_dir() and (REPO / "PKG-INFO").is_file()
needs_ci_files = pytest.mark.skipif(FROM_SDIST, reason="an unpacked sdist has no .github/ or .ci/")


def makefile_targets() -> set[str]:
    targets = set()
    for line in (REPO / "Makefile").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.$()/-]+)\s*:(?!=)", line)
        if match and not line.startswith("\t"):
            targets.add(match.group(1))
    return targets


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def run_steps(flow: dict) -> list[str]:
    return [step["run"] for job in flow["jobs"].values() for step in job.get("steps", []) if "run" in step]


def make_targets_called(command: str) -> list[str]:
    """``make [-C dir] [VAR=value ...] target ...`` anywhere in a shell command."""
    called = []
    lines = [line for line in command.splitlines() if not line.lstrip().startswith("#")]
    for part in re.split(r"&&|\|\||;|\n", "\n".join(lines)):
        words = shlex.split(part, comments=True)
        if not words or words[0] != "make":
            continue
        rest = words[1:]
        while rest:
            word = rest.pop(0)
            if word == "-C":
                rest.pop(0)
            elif "=" in word or word.startswith("-"):
                continue
            else:
                called.append(word)
    return called


def all_commands() -> dict[str, str]:
    commands = {f"{path.name}: {run}": run for path in sorted(WORKFLOWS.glob("*.yml"))
                for run in run_steps(yaml.safe_load(path.read_text()))}
    commands["[tool.cibuildwheel] test-command"] = PYPROJECT["tool"]["cibuildwheel"]["test-command"]
    commands[".ci/run"] = (REPO / ".ci" / "run").read_text()
    return commands


@needs_ci_files
def test_every_make_target_that_ci_calls_exists():
    targets = makefile_targets()
    called = {where: make_targets_called(command) for where, command in all_commands().items()}
    assert any(called.values()), "no make target found in any CI file"
    missing = {where: [t for t in names if t not in targets] for where, names in called.items()}
    assert {where: names for where, names in missing.items() if names} == {}


def test_the_target_finder_sees_targets_and_calls():
    """The two parsers above find what they must (so the check above cannot pass vacuously)."""
    assert {"test", "test-installed", "test-suite", "wheel", "wheels", "wheels-check", "sdist-check",
            "bench-short"} <= makefile_targets()
    assert make_targets_called("apt-get x && make -C {project} test-suite PY=python PYTEST_ARGS='-m x'") \
        == ["test-suite"]


@needs_ci_files
def test_ci_runs_the_readme_test_command():
    run = (REPO / ".ci" / "run").read_text()
    assert make_targets_called(run) == ["test"]
    assert "make test" in (REPO / "README.md").read_text()
    ci = workflow("ci.yml")
    assert "bash .ci/run" in run_steps(ci)
    uploads = [step["with"]["path"] for step in ci["jobs"]["test"]["steps"]
               if step.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads == ["benchmarks/results/"]
    bench = (REPO / "Makefile").read_text().split("\nbench-short:", 1)[1].split("\n\n", 1)[0]
    assert "--json benchmarks/results/" in bench and "--plot benchmarks/results/" in bench


def apt_installed(command: str) -> set[str]:
    """The packages of every ``apt-get install`` in a shell command (options left out)."""
    names = set()
    for part in re.split(r"&&|\|\||;|\n", command):
        words = shlex.split(part, comments=True)
        if words[:1] == ["apt-get"] and "install" in words:
            names |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return names


@needs_ci_files
def test_ci_installs_every_debian_package_the_tests_and_the_benchmark_use():
    """ci.yml's container installs up front what the system tests and `make bench-short` would
    otherwise apt-get one by one (support.DEBIAN_PACKAGES, and e2e.py's nginx and HAProxy)."""
    import support
    installed = set().union(*(apt_installed(run) for run in run_steps(workflow("ci.yml"))))
    ensure = (REPO / "benchmarks" / "e2e.py").read_text().split("def ensure_packages", 1)[1].split("\ndef ", 1)[0]
    bench = set(re.findall(r'\("([a-z0-9.+-]+)", "[a-z0-9.+-]+"\)', ensure))
    assert bench == {"nginx-light", "haproxy"}, "the parser must find the benchmark's packages"
    assert {"redis-server", "chromium"} <= set(support.DEBIAN_PACKAGES)
    assert set(support.DEBIAN_PACKAGES) | bench | {"make", "gcc"} <= installed
    assert apt_installed("apt-get update -qq && apt-get install -y -qq make redis-server") == \
        {"make", "redis-server"}


def test_a_test_not_marked_system_cannot_install_debian_packages():
    """cibuildwheel's containers run `-m "not system"` with no apt-get: support.debian_binary
    refuses a test without the marker even where the binary is already installed."""
    from support import debian_binary
    with pytest.raises(RuntimeError, match="must be marked @pytest.mark.system"):
        debian_binary("redis-server", "redis-server")


@needs_ci_files
def test_wheels_workflow_builds_tests_and_publishes_with_trusted_publishing():
    flow = workflow("wheels.yml")
    triggers = flow[True] if True in flow else flow["on"]      # YAML 1.1 reads `on:` as True
    assert triggers["push"]["tags"] == ["v*"]
    wheels = flow["jobs"]["wheels"]
    cibw = [s["uses"] for s in wheels["steps"] if s.get("uses", "").startswith("pypa/cibuildwheel@")]
    assert cibw == [f"pypa/cibuildwheel@v{importlib.metadata.version('cibuildwheel')}"], \
        "the workflow's cibuildwheel is the version the test extra pins and checks here"
    assert set(wheels["strategy"]["matrix"]["os"]) == {"ubuntu-latest", "ubuntu-24.04-arm"}
    publish = flow["jobs"]["publish"]
    assert publish["permissions"] == {"id-token": "write"}
    assert set(publish["needs"]) == {"sdist", "wheels"}
    assert any(s.get("uses", "").startswith("pypa/gh-action-pypi-publish@") for s in publish["steps"])
    assert not any("password" in s.get("with", {}) for s in publish["steps"]), "no stored API token"


def cibuildwheel_identifiers(arch: str) -> list[str]:
    cibw = Path(sys.executable).parent / "cibuildwheel"
    out = subprocess.run([str(cibw), "--print-build-identifiers", "--platform", "linux", "--archs", arch],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


MINORS = [int(v.split(".")[1]) for v in PYTHONS]


@pytest.mark.parametrize("arch, expected", [
    ("x86_64", {f"cp3{m}-{libc}_x86_64" for m in MINORS for libc in ("manylinux", "musllinux")}),
    ("aarch64", {f"cp3{m}-manylinux_aarch64" for m in MINORS}),
])
def test_cibuildwheel_accepts_the_config_and_builds_the_promised_wheels(arch, expected):
    """cibuildwheel parses [tool.cibuildwheel] (it rejects an unknown key) and expands it."""
    assert set(cibuildwheel_identifiers(arch)) == expected


# What the [test] extra has and cibuildwheel's containers do not install: large, and not
# installable everywhere (playwright has no musllinux wheel). Their tests are `system`, or skip
# in those containers only (support.needs_test_extra).
NOT_IN_TEST_REQUIRES = {"playwright", "pipecat-ai", "kubernetes-validate", "mypy", "pytest-benchmark", "atheris",
                        "mkdocs"}                  # make docs, not a test: cibuildwheel runs only the tests


def test_cibuildwheel_installs_a_short_test_requires_list_with_the_test_extras_versions():
    from packaging.requirements import Requirement
    import support
    cibw = PYPROJECT["tool"]["cibuildwheel"]
    assert "test-extras" not in cibw, "the whole [test] extra cannot install in every container"
    extra = {Requirement(r).name.lower(): str(Requirement(r)) for r in PYPROJECT["project"]["optional-dependencies"]["test"]}
    short = {Requirement(r).name.lower(): str(Requirement(r)) for r in cibw["test-requires"]}
    assert {name: spec for name, spec in short.items() if extra.get(name) != spec} == {}, \
        "each test-requires entry is the [test] extra's, with the same version"
    assert set(extra) - set(short) == NOT_IN_TEST_REQUIRES
    assert cibw["test-environment"] == {"WSRELAY_TEST_REQUIRES": "cibuildwheel"}
    assert "WSRELAY_TEST_REQUIRES" in (REPO / "tests" / "support.py").read_text()
    assert support.TEST_REQUIRES_ONLY == (os.environ.get("WSRELAY_TEST_REQUIRES") == "cibuildwheel")


def pytest_as_in_cibuildwheel(*args: str, test_requires_only: bool) -> subprocess.CompletedProcess:
    """pytest in this venv with only what cibuildwheel's test venv installs importable
    (tests/cibw_venv.py), with or without its WSRELAY_TEST_REQUIRES."""
    env = {k: v for k, v in os.environ.items() if k != "WSRELAY_TEST_REQUIRES"}
    env.update(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", PYTHONPATH=str(REPO / "tests"))
    if test_requires_only:
        env["WSRELAY_TEST_REQUIRES"] = "cibuildwheel"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "cibw_venv", "-p", "no:cacheprovider", "-q", "-rs",
                           "-m", "not system", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_the_tests_outside_system_need_only_cibuildwheels_test_requires():
    """Every test module collects with only test-requires installed; the tests needing the rest
    of the [test] extra skip there, and fail (not skip) anywhere else, as under `make test`."""
    collected = pytest_as_in_cibuildwheel("--collect-only", "tests", test_requires_only=True)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert re.search(r"^\d+/\d+ tests collected \(\d+ deselected\)", collected.stdout, re.M), collected.stdout[-500:]

    heavy = ("tests/test_deploy.py", "tests/test_telephony.py", "-k", "kubernetes or pipecat")
    there = pytest_as_in_cibuildwheel(*heavy, test_requires_only=True)
    assert there.returncode == 0, there.stdout[-3000:]
    for module in ("kubernetes_validate", "pipecat"):
        assert f"{module} is in the [test] extra, not in cibuildwheel's test-requires" in there.stdout
    assert re.search(r"^\d+ skipped, \d+ deselected in ", there.stdout, re.M), there.stdout[-500:]

    elsewhere = pytest_as_in_cibuildwheel(*heavy, test_requires_only=False)
    assert elsewhere.returncode == 1 and "skipped" not in elsewhere.stdout, elsewhere.stdout[-3000:]
    assert "No module named 'kubernetes_validate'" in elsewhere.stdout
    assert "No module named 'pipecat'" in elsewhere.stdout


def unguarded_imports(source: str, blocked: set[str]) -> list[tuple[int, str]]:
    """Imports of a ``blocked`` top-level module that would break a test in cibuildwheel's venv:
    not in a module marked system (pytestmark), not in a try/except ImportError, and with no
    ``needs_test_extra("<module>")`` before them in the same function (or module)."""
    tree = ast.parse(source)
    if re.search(r"^pytestmark = pytest\.mark\.system\b", source, re.M):
        return []
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for top in {name.partition(".")[0] for name in names} & blocked:
            scope, guarded = node, False
            while scope in parents and not guarded:
                scope = parents[scope]
                if isinstance(scope, ast.Try):
                    guarded = any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                                  for h in scope.handlers)
                if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
                    guarded = guarded or any(
                        isinstance(call, ast.Call) and getattr(call.func, "id", None) == "needs_test_extra"
                        and [getattr(a, "value", None) for a in call.args] == [top] and call.lineno < node.lineno
                        for call in ast.walk(scope))
                    break
            if not guarded:
                found.append((node.lineno, top))
    return found


def test_every_import_outside_test_requires_is_guarded():
    """The tests' imports of what cibuildwheel's venv lacks (tests/cibw_venv.py: this venv's
    distributions that test-requires and the wheel do not bring) are in system tests, or after
    needs_test_extra(), or optional: function-level imports included, which collection misses."""
    import cibw_venv
    blocked = set(cibw_venv.blocked())
    if "pipecat-ai" in {d.metadata["Name"] for d in importlib.metadata.distributions()}:
        assert {"pipecat", "kubernetes_validate", "playwright"} <= blocked
    unguarded = {path.name: found for path in sorted((REPO / "tests").glob("*.py"))
                 if (found := unguarded_imports(path.read_text(), blocked))}
    assert unguarded == {}, "add these to test-requires (and the [test] extra), or guard them"
    sample = "import yaml\ndef f():\n    import dnslib\ndef g():\n    needs_test_extra('dnslib')\n    import dnslib\n" \
             "try:\n    from dnslib.server import X\nexcept ImportError:\n    pass\n"
    assert unguarded_imports(sample, {"dnslib", "os"}) == [(3, "dnslib")]
    assert unguarded_imports("import pytest\npytestmark = pytest.mark.system\nimport dnslib\n", {"dnslib"}) == []


def test_python_versions_agree_everywhere():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import wheels
    finally:
        sys.path.pop(0)
    assert wheels.PYTHONS == PYTHONS
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    classified = {c.rsplit(" ", 1)[1] for c in PYPROJECT["project"]["classifiers"]
                  if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert classified == set(PYTHONS)
    built = PYPROJECT["tool"]["cibuildwheel"]["build"].split()
    assert built == [f"cp{v.replace('.', '')}-*" for v in PYTHONS]


@needs_ci_files
def test_every_list_of_python_versions_in_the_docs_and_ci_files_names_them_all():
    """The prose that lists the CPythons (docs/install.md's wheel table and make wheels line, the
    README's install paragraph, the Makefile's wheels comment, the release workflow's header)
    names exactly PYTHONS, so adding one (cp314) cannot leave a list behind."""
    listed = ", ".join(PYTHONS)
    span = f"{PYTHONS[0]}-{PYTHONS[-1]}"
    tags = f"cp{PYTHONS[0].replace('.', '')}–cp{PYTHONS[-1].replace('.', '')}"
    install = (REPO / "docs" / "install.md").read_text()
    rows = re.findall(r"^\| Linux [^|]+\| ([0-9., ]+) \| `(?:many|musl)linux", install, re.M)
    assert rows == [listed] * 3, "docs/install.md's wheel table: one row per platform cibuildwheel builds"
    assert f"one wheel per CPython {listed} found" in install
    assert f"`pyproject.toml`: {tags}," in install
    assert f"CPython {PYTHONS[0]} to {PYTHONS[-1]}" in (REPO / "README.md").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert f"# sdist + one wheel per CPython {listed} found" in makefile
    assert f"cibuildwheel's wheels (CPython {span};" in (WORKFLOWS / "wheels.yml").read_text()


def test_picows_is_pinned_to_one_version_everywhere():
    """The pump is compiled against picows' C ABI: build, run time and the import check agree."""
    from wsrelay.edge.picows_internals import PICOWS_VERSION

    def pins(requirements: list[str]) -> set[str]:
        return {r.split("==", 1)[1].split(";")[0].strip() for r in requirements if r.startswith("picows")}

    assert pins(PYPROJECT["build-system"]["requires"]) == {PICOWS_VERSION}
    assert pins(PYPROJECT["project"]["dependencies"]) == {PICOWS_VERSION}
    assert importlib.metadata.version("picows") == PICOWS_VERSION


def test_the_code_and_the_docs_refer_to_documentation_in_the_repository_only():
    """Users have the repository, not the specification it was built from: no ``SPEC §`` and
    no path outside the repository in the package, the Cython sources, the README, docs/, the
    changelog, the MkDocs configuration or --help."""
    import re
    import subprocess
    import sys

    texts = {p: p.read_text() for p in [*(REPO / "src").rglob("*.py"), *(REPO / "csrc").rglob("*.p*"),
                                        REPO / "README.md", *(REPO / "docs").glob("*.md"),
                                        REPO / "CHANGELOG.md", REPO / "mkdocs.yml"]}
    texts[REPO / "--help"] = subprocess.run([sys.executable, "-m", "wsrelay", "serve", "--help"],
                                            capture_output=True, text=True, timeout=60).stdout
    outside = {str(p): m.group(0) for p, text in texts.items()
               for m in [re.search(r"SPEC(\.md)? ?§|\.\./shared/", text)] if m}
    assert outside == {}
    assert "docs/configuration.md" in " ".join(texts[REPO / "--help"].split())   # however argparse wraps it
    assert (REPO / "docs" / "configuration.md").is_file()
    # The code names the docs page that documents a thing (the README is the front page only),
    # and every page it names is there.
    code = {p: text for p, text in texts.items() if p.suffix in (".py", ".pyx", ".pxi", ".pxd")}
    assert {str(p) for p, text in code.items() if "README" in text} == set()
    named = {m for text in code.values() for m in re.findall(r"docs/[\w-]+\.md", text)}
    assert named and {page for page in named if not (REPO / page).is_file()} == set()
