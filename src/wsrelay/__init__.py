"""wsrelay: a self-hostable WebSocket relay for real-time voice and data bots."""

from . import compiled as _compiled

__version__ = "0.1.0"

# WSRELAY_PURE_PYTHON=1 runs the session path from its .py sources (wsrelay/compiled.py).
_compiled.install()
