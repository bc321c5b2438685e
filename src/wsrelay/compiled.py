"""Which modules of a session's life are compiled, and how to run them as Python instead.

Like aiohttp's ``reader_py.py``/``reader_c``: the Python source is the only source. setup.py
compiles each module named in ``SESSION_PATH`` from its own ``.py`` with Cython (no ``.pxd``:
the classes stay Python classes, so both builds behave the same) into an extension of the
same name, which Python imports before the ``.py`` beside it. The ``.py`` stays in the wheel
and is what runs when:

- the package was built with ``WSRELAY_NO_EXTENSIONS=1`` (no compiler), or
- ``WSRELAY_PURE_PYTHON=1`` is set (or ``wsrelay serve --pure-python``): ``PythonSources``,
  installed on ``sys.meta_path`` when the package is imported, then finds these modules'
  ``.py`` files before the import system finds their extensions. The same variable selects
  the pure-Python pump (``wsrelay.pump``), so one switch gives the whole pure-Python relay;
  the benchmark gate counts both builds.

Why these modules: they run for every session (its head, decision, bot connect, hand-over,
close handshakes, end, log line and metrics). Compiled, a session costs 5.7 % fewer
instructions (``python benchmarks/gate.py --counts-only``, README "Performance"); modules
that run once at start (config, CLI, admin) are left as Python, where compiling gains nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

SESSION_PATH = (
    "wsrelay.admission.auth",
    "wsrelay.admission.capacity",
    "wsrelay.admission.registry",
    "wsrelay.core.balancer",
    "wsrelay.core.deadline_wheel",
    "wsrelay.core.routing",
    "wsrelay.core.session_ids",
    "wsrelay.core.session_machine",
    "wsrelay.core.tokens",
    "wsrelay.core.upgrade",
    "wsrelay.edge.deadlines",
    "wsrelay.edge.gate",
    "wsrelay.edge.handover",
    "wsrelay.edge.http",
    "wsrelay.edge.live_sessions",
    "wsrelay.edge.logs",
    "wsrelay.edge.metrics",
    "wsrelay.edge.peer_watch",
    "wsrelay.edge.relay",
    "wsrelay.edge.session",
    "wsrelay.edge.upstream",
)


def pure_python() -> bool:
    """True when ``WSRELAY_PURE_PYTHON=1`` asks for the pure-Python relay."""
    return os.environ.get("WSRELAY_PURE_PYTHON") == "1"


class PythonSources(importlib.abc.MetaPathFinder):
    """Imports the ``SESSION_PATH`` modules from their ``.py`` files when ``pure_python()``.

    Asked before the standard finders; it answers only for those names, and only while the
    variable is set, so it decides at each module's first import (``wsrelay serve
    --pure-python`` sets the variable before the relay's modules are imported).
    """

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in SESSION_PATH or not path or not pure_python():
            return None
        leaf = fullname.rpartition(".")[2] + ".py"
        for folder in path:
            source = os.path.join(folder, leaf)
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def install() -> None:
    """Put ``PythonSources`` first on ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, PythonSources) for finder in sys.meta_path):
        sys.meta_path.insert(0, PythonSources())


def implementation(module: ModuleType) -> str:
    """'cython' for a module that runs compiled, 'python' for one that runs from its source."""
    return "python" if (module.__file__ or "").endswith(".py") else "cython"
