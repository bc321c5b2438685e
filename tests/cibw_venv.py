"""A pytest plugin that makes any venv look like cibuildwheel's test venv, for test_ci_files.

cibuildwheel installs the wheel and ``[tool.cibuildwheel] test-requires`` (pyproject.toml),
not the whole [test] extra. Loaded with ``-p cibw_venv`` (tests/ on PYTHONPATH) and
``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``, this plugin makes importing a distribution that neither
test-requires nor wsrelay's own dependencies bring in (transitively, as pip would) fail with
ModuleNotFoundError, as it would there, and loads the pytest plugins of the others only.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_requires() -> list[str]:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["cibuildwheel"]["test-requires"]


def installed_by_pip(requirements: list[str]) -> set[str]:
    """The distributions pip installs for ``requirements`` (normalized names), dependencies
    included, read from what this venv has installed."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if normalized(req.name) in seen:
            continue
        seen.add(normalized(req.name))
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        extras = {""} | set(req.extras)
        for dep in map(Requirement, requires):
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                todo.append(dep)
    return seen


def allowed() -> set[str]:
    """The distributions of cibuildwheel's test venv: the wheel's and test-requires' (normalized)."""
    return installed_by_pip([*test_requires(), "wsrelay"])


def blocked() -> dict[str, list[str]]:
    """Top-level module -> its distributions, for what this venv has and that test venv would not."""
    keep = allowed()
    return {module: dists for module, dists in importlib.metadata.packages_distributions().items()
            if module not in sys.stdlib_module_names and not any(normalized(d) in keep for d in dists)}


class NotInTestRequires(importlib.abc.MetaPathFinder):
    """One of the import system's finders, blind to the distributions that venv would not have:
    an import of one fails with ModuleNotFoundError, and ``importlib.util.find_spec`` (a
    library probing for an optional module, as yarl does for pydantic_core) gets None, both as
    there. Raising from here instead would fail the probe, which that venv would not."""

    def __init__(self, finder, blocked: dict[str, list[str]]) -> None:
        self.finder = finder
        self.blocked = blocked

    def find_spec(self, fullname, path, target=None):
        if fullname.partition(".")[0] in self.blocked:
            return None
        find_spec = getattr(self.finder, "find_spec", None)
        return find_spec(fullname, path, target) if find_spec is not None else None

    def invalidate_caches(self) -> None:
        invalidate = getattr(self.finder, "invalidate_caches", None)
        if invalidate is not None:
            invalidate()


def pytest_load_initial_conftests(early_config, parser, args) -> None:
    """As a plugin (``-p cibw_venv``), before conftest.py is imported; test_ci_files also imports
    this module to read it, which blocks nothing."""
    hidden = blocked()
    sys.meta_path[:] = [NotInTestRequires(finder, hidden) for finder in sys.meta_path]


# The pytest plugins pip would have installed there (pytest-timeout, hypothesis' plugin).
_ALLOWED = allowed()
pytest_plugins = [ep.module for ep in importlib.metadata.entry_points(group="pytest11")
                  if ep.dist is not None and normalized(ep.dist.name) in _ALLOWED]
