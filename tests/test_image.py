"""The container image's build and check (tools/image.py, `make image`, `make image-check`) agree
with the Dockerfile, the manifests, the Makefile and the documentation (docs/fleet.md).

Building and running the image needs buildah and root: `make image-check` does that, in
`make test` (so in .ci/run); these tests check only the text, and what tools/image.py derives
from the manifests, so they run anywhere (cibuildwheel's containers too).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from wsrelay.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()
FLEET_DOCS = (ROOT / "docs" / "fleet.md").read_text()     # "Container and Kubernetes"


def image_tool():
    spec = importlib.util.spec_from_file_location("image_tool", ROOT / "tools" / "image.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe(target: str) -> str:
    """A Makefile target's line and its recipe."""
    match = re.search(rf"^{re.escape(target)}:.*?(?=\n\n|\Z)", MAKEFILE, re.M | re.S)
    assert match, f"the Makefile has no {target} target"
    return match.group(0)


def arg_default(name: str) -> str:
    match = re.search(rf'^ARG {name}=("?)(.+?)\1\s*$', DOCKERFILE, re.M)
    assert match, f"the Dockerfile has no ARG {name} with a default"
    return match.group(2)


def test_the_base_is_a_build_argument_defaulting_to_the_official_slim_image():
    base = arg_default("BASE_IMAGE")
    assert base == "python:3.11-slim"
    first_from = DOCKERFILE.index("\nFROM ")
    assert DOCKERFILE.index("ARG BASE_IMAGE=") < first_from, "an ARG used in FROM is declared before the first FROM"
    assert re.findall(r"^FROM (\S+) AS (\S+)$", DOCKERFILE, re.M) == [("${BASE_IMAGE}", "build"),
                                                                   ("${BASE_IMAGE}", "runtime")]
    # The build stage installs BUILD_PACKAGES (default: the compiler), and the runtime stage nothing.
    assert arg_default("BUILD_PACKAGES") == "gcc libc6-dev"
    build, runtime = DOCKERFILE.split(" AS runtime", 1)
    assert "apt-get install -y --no-install-recommends ${BUILD_PACKAGES}" in build
    assert "apt-get" not in runtime and "gcc" not in runtime


def test_the_standin_base_is_the_same_python_and_adds_only_the_headers():
    """Debian's python3.11 for python:3.11-slim; BUILD_PACKAGES is the default plus the headers,
    which the official image carries and Debian's python keeps in python3.11-dev."""
    tool = image_tool()
    minor = re.fullmatch(r"python:(3\.\d+)-slim", arg_default("BASE_IMAGE")).group(1)
    assert f"apt-get install -y --no-install-recommends python{minor} python{minor}-venv" in tool.STANDIN_CONTAINERFILE
    assert tool.STANDIN.startswith(f"localhost/wsrelay-base:{minor}-")
    assert tool.STANDIN_BUILD_PACKAGES.split() == arg_default("BUILD_PACKAGES").split() + [f"python{minor}-dev"]
    assert "ENV PATH=/usr/local/python/bin:" in tool.STANDIN_CONTAINERFILE, "python and pip on PATH, as in the official image"


def test_the_make_targets_run_the_tool():
    image = recipe("image")
    assert "$(PYTHON) tools/image.py build $(if $(IMAGE_BASE),--base $(IMAGE_BASE))" in image
    check = recipe("image-check")
    assert check.startswith("image-check: image\n"), "image-check builds (or reuses) the image first"
    assert "$(PY) tools/image.py check" in check
    assert re.search(r"^\.PHONY:.* image image-check ", MAKEFILE, re.M)


def test_make_test_runs_the_image_check_and_ci_installs_its_tools():
    """`make image-check` is in `make test`'s path (it fits CI's time: docs/fleet.md says how long),
    and ci.yml's container installs buildah and debootstrap and is privileged enough to run them."""
    assert "$(MAKE) image-check PY=$(TESTBIN)/python" in recipe("test")
    ci = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text()) \
        if (ROOT / ".github").is_dir() else None
    if ci is None:
        pytest.skip("an unpacked sdist has no .github/")
    job = ci["jobs"]["test"]
    installs = " ".join(step.get("run", "") for step in job["steps"])
    assert re.search(r"apt-get install [^\n]*\bbuildah\b", installs)
    assert re.search(r"apt-get install [^\n]*\bdebootstrap\b", installs)
    assert "--privileged" in job["container"]["options"]


def test_the_checked_config_is_the_configmaps_relay_table_and_valid():
    """What the check mounts: the ConfigMap's [relay] (host and admin_host 0.0.0.0, the ports the
    manifests and the HEALTHCHECK use) with a short drain, and one agent on the host's bot."""
    tool = image_tool()
    docs = {}
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    table = tool.relay_table(docs["ConfigMap"]["data"]["relay.toml"])
    text = table + '\n[[agents]]\nname = "echo"\norganization = "host"\nupstreams = ["ws://127.0.0.1:9/bot"]\n'
    config = parse_config(text, source="image-check")
    assert (config.relay.host, config.relay.admin_host) == ("0.0.0.0", "0.0.0.0")
    assert (config.relay.port, config.relay.admin_port) == (8765, 9100)
    assert config.relay.drain_seconds == tool.DRAIN_SECONDS
    assert "127.0.0.1:9100/healthz" in DOCKERFILE
    assert not config.fleet.enabled


def test_the_docs_say_how_the_image_is_built_and_what_was_checked():
    section = FLEET_DOCS.split("\n## Container and Kubernetes\n", 1)[1].split("\n## ", 1)[0]
    for needed in ("make image", "make image-check", "BASE_IMAGE", "python:3.11-slim", "buildah",
                   "debootstrap", "tools/image.py", "1012", "HEALTHCHECK", "/healthz", "/readyz"):
        assert needed in section, f"docs/fleet.md 'Container and Kubernetes' does not mention {needed}"
    last = re.search(r"[Ll]ast result \((\d{4}-\d\d-\d\d)", section)
    assert last, "docs/fleet.md gives the date of the last make image-check"
    assert re.search(r"\b\d+ MB\b", section), "and the image's size"
    kube = (ROOT / "deploy" / "kubernetes" / "README.md").read_text()
    assert "make image" in kube
