"""The frame pump: the compiled one, or its pure-Python twin, and the choice between them.

Like aiohttp's reader: ``wsrelay.pump._compiled`` (Cython, csrc/wsrelay/pump/) when it
is built, ``wsrelay.pump.pure`` otherwise or when ``WSRELAY_PURE_PYTHON=1``. Both expose
``Side``, ``ClientStream``, ``totals()`` and ``IMPLEMENTATION``; ``load(name)`` returns a
specific one (the test suite runs every relay test against both).

Why two sources and not one compiled from the other (as aiohttp compiles reader_py.py):
the compiled side sends each payload from picows' read buffer through a C pointer
(``frame.payload_ptr`` into ``send_reuse_external_buffer``, both C-level picows API
reached with ``cimport``), which pure Python cannot express; compiling the pure file in
Cython's pure-Python mode would need Cython at run time for ``cython.cimports`` and would
turn that zero-copy send into a copy. The two are kept equal by tests instead:
tests/test_pump_equivalence.py drives both with the same inputs and compares.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

NAMES = ("cython", "python")


def load(name: str | None = None) -> ModuleType:
    """The pump module called ``name`` ("cython" or "python"); None picks the default."""
    if name is None:
        name = default_name()
    if name == "python":
        return importlib.import_module("wsrelay.pump.pure")
    if name == "cython":
        try:
            return importlib.import_module("wsrelay.pump._compiled")
        except ImportError as exc:
            raise ImportError(
                "The compiled pump wsrelay.pump._compiled is not built: reinstall with "
                "'pip install .' (needs a C compiler), or set WSRELAY_PURE_PYTHON=1 "
                "to use the pure-Python pump."
            ) from exc
    raise ValueError(f"unknown pump implementation {name!r}; use one of {NAMES}")


def default_name() -> str:
    """'python' when forced by WSRELAY_PURE_PYTHON=1 or when the extension is missing."""
    if os.environ.get("WSRELAY_PURE_PYTHON") == "1":
        return "python"
    try:
        importlib.import_module("wsrelay.pump._compiled")
    except ImportError:
        return "python"
    return "cython"


def totals() -> dict[str, int]:
    """Relayed frames and bytes of this process, summed over every loaded implementation."""
    result = {"frames_up": 0, "bytes_up": 0, "sends_up": 0, "frames_down": 0, "bytes_down": 0, "sends_down": 0}
    for module_name in ("wsrelay.pump._compiled", "wsrelay.pump.pure"):
        module = sys.modules.get(module_name)
        if module is not None:
            for key, value in module.totals().items():
                result[key] += value
    return result
