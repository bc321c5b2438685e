"""Chooses the frame pump: the compiled one, or its pure-Python twin.

Like aiohttp's reader: ``wsrelay._pump`` (Cython, csrc/_pump.pyx) when it is built,
``wsrelay.pump_py`` otherwise or when ``WSRELAY_PURE_PYTHON=1``. Both expose ``Side``,
``totals()`` and ``IMPLEMENTATION``; ``load(name)`` returns a specific one (the test
suite runs every relay test against both).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

NAMES = ("cython", "python")


def load(name: str | None = None) -> ModuleType:
    """The pump module called ``name`` ("cython" or "python"); None picks the default."""
    if name is None:
        name = default_name()
    if name == "python":
        return importlib.import_module("wsrelay.pump_py")
    if name == "cython":
        try:
            return importlib.import_module("wsrelay._pump")
        except ImportError as exc:
            raise ImportError(
                "The compiled pump wsrelay._pump is not built: reinstall with "
                "'pip install .' (needs a C compiler), or set WSRELAY_PURE_PYTHON=1 "
                "to use the pure-Python pump."
            ) from exc
    raise ValueError(f"unknown pump implementation {name!r}; use one of {NAMES}")


def default_name() -> str:
    """'python' when forced by WSRELAY_PURE_PYTHON=1 or when the extension is missing."""
    if os.environ.get("WSRELAY_PURE_PYTHON") == "1":
        return "python"
    try:
        importlib.import_module("wsrelay._pump")
    except ImportError:
        return "python"
    return "cython"


def totals() -> dict[str, int]:
    """Relayed frames and bytes of this process, summed over every loaded implementation."""
    result = {"frames_up": 0, "bytes_up": 0, "frames_down": 0, "bytes_down": 0}
    for module_name in ("wsrelay._pump", "wsrelay.pump_py"):
        module = importlib.sys.modules.get(module_name)
        if module is not None:
            for key, value in module.totals().items():
                result[key] += value
    return result
