"""Every part of picows the relay uses beyond its public API, in one place, checked at import.

picows' public API covers a WebSocket client or server written on its listeners; a relay that
takes over a socket another protocol has read from, and sends a payload out of the buffer it
arrived in, needs more. What it uses, and where:

- ``PYTHON``: names the relay's Python code reaches (edge/handover.py, edge/upstream.py):
  ``picows.picows.WSProtocol``, which picows' stubs do not declare, built by hand with its
  positional constructor (edge/handover.py spells out its arguments); its ``listener`` once
  the handshake is done; ``get_buffer``/``buffer_updated``, the buffered-protocol calls
  ``ClientStream`` forwards; the ``WSUpgradeResponse`` fields that ``_Client101`` fills in
  place of picows' own response; ``picows.url.parse_url``, to parse an upstream URL once.
- ``C_LEVEL``: attributes and methods of picows' C classes the compiled pump uses through
  ``picows.pxd`` (csrc/wsrelay/pump/side.pxi) beyond what a listener is meant to touch:
  the header and write paths under ``send_reuse_external_buffer`` (``_get_header_size``,
  ``_prepare_header``, ``_fast_write``: coalesced sends of frames re-framed in place), the
  scratch write buffer shrunk once a side is connected (``_write_buffer``, ``_reserve``), and
  three attributes that are read-only from Python and written from C (``request`` and
  ``response``, dropped to free the parsed handshake; ``underlying_transport``, given back
  its real transport, edge/handover.py's ``PicowsView``).

Each is written against ``PICOWS_VERSION``, the one version wsrelay pins (pyproject.toml,
benchmarks/constraints.txt; tests/test_ci_files.py keeps them equal). ``check`` runs when
edge/handover.py is imported: another picows version, a missing Python-level name, or a
``picows.pxd`` that no longer declares a C-level one stops the relay with one sentence that
says what to install, rather than failing later inside a session.
"""

from __future__ import annotations

import importlib
from pathlib import Path

PICOWS_VERSION = "2.3.1"

# (module, attribute path) -> where the relay uses it
PYTHON: dict[tuple[str, str], str] = {
    ("picows.picows", "WSProtocol"): "edge/handover.py: RelayWSProtocol, bot_protocol, hand_over",
    ("picows.picows", "WSProtocol.get_buffer"): "csrc/wsrelay/pump/client_stream.pxi, pump/pure.py: ClientStream",
    ("picows.picows", "WSProtocol.buffer_updated"): "csrc/wsrelay/pump/client_stream.pxi, pump/pure.py: ClientStream",
    ("picows.picows", "WSProtocol.connection_made"): "edge/handover.py: RelayWSProtocol.connection_made",
    ("picows.picows", "WSUpgradeResponse"): "edge/handover.py: _Client101",
    ("picows.picows", "WSUpgradeResponseWithListener"): "edge/handover.py: hand_over",
    ("picows.url", "parse_url"): "edge/upstream.py: UpstreamConnector",
}

# name declared in picows.pxd -> where the compiled pump uses it
C_LEVEL: dict[str, str] = {
    "_get_header_size": "side.pxi: _relay (a frame re-framed in place)",
    "_prepare_header": "side.pxi: _relay",
    "_fast_write": "side.pxi: _flush (coalesced sends)",
    "_write_buffer": "side.pxi: _trim_picows_buffers",
    "_reserve": "side.pxi: _trim_picows_buffers",
    "request": "side.pxi: _trim_picows_buffers (written from C)",
    "response": "side.pxi: _trim_picows_buffers (written from C)",
    "underlying_transport": "side.pxi: Side.on_ws_connected (written from C)",
}


class PicowsMismatch(ImportError):
    """The installed picows is not the one wsrelay's use of its internals was written for."""


def check(version: str | None = None, pxd_text: str | None = None) -> None:
    """Raise ``PicowsMismatch`` unless the installed picows (or ``version``/``pxd_text``, for
    tests) is ``PICOWS_VERSION`` and still has every name in ``PYTHON`` and ``C_LEVEL``."""
    import picows

    version = picows.__version__ if version is None else version
    advice = (f"Install picows=={PICOWS_VERSION} (pip install --force-reinstall "
              f"'picows=={PICOWS_VERSION}') and rebuild wsrelay.")
    if version != PICOWS_VERSION:
        raise PicowsMismatch(f"wsrelay is built against picows {PICOWS_VERSION}, but picows {version} is "
                             f"installed: its internals differ between versions. {advice}")
    missing = [f"{module}.{path}" for module, path in PYTHON if not _has(module, path)]
    if pxd_text is None:
        # picows' wheels ship their .pxd; an install without it (it is needed only to build the
        # pump) is judged by its version alone.
        pxd = Path(picows.__file__).with_name("picows.pxd")
        pxd_text = pxd.read_text() if pxd.is_file() else None
    if pxd_text is not None:
        missing += [f"picows.pxd: {name}" for name in C_LEVEL if name not in pxd_text]
    if missing:
        raise PicowsMismatch(f"the installed picows {version} lacks what wsrelay uses of it "
                             f"({', '.join(missing)}). {advice}")


def _has(module: str, path: str) -> bool:
    try:
        obj: object = importlib.import_module(module)
    except ImportError:
        return False
    for part in path.split("."):
        obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return False
    return True


_MISSING = object()
