"""Structured logs: one line per session end and one per refused handshake, never per frame.

Lines go to the ``wsrelay.session`` logger as JSON objects (``--log-format json``, the
default when stderr is not a terminal) or as ``key=value`` pairs for people reading a
terminal (``text``). The formatter below renders a record's ``fields`` either way.
"""

from __future__ import annotations

import json
import logging
import sys

log = logging.getLogger("wsrelay.session")


def log_session(fields: dict) -> None:
    """Log one ended session."""
    log.info("session end", extra={"fields": fields})


def log_refusal(*, status: int, reason: str, client: str, target: str | None) -> None:
    """Log one handshake refused before any upgrade."""
    log.info("handshake refused", extra={"fields": {
        "event": "handshake_refused", "status": status, "reason": reason,
        "client": client, "target": target}})


class StructuredFormatter(logging.Formatter):
    """Renders records as JSON or key=value; a record's ``fields`` become top-level keys."""

    def __init__(self, style: str = "json") -> None:
        super().__init__()
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                  "logger": record.name}
        extra = getattr(record, "fields", None)
        if extra:
            fields.update(extra)
        else:
            fields["msg"] = record.getMessage()
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.style == "json":
            return json.dumps(fields, separators=(",", ":"), default=str)
        return " ".join(f"{k}={_text(v)}" for k, v in fields.items())


def _text(value) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def setup_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    """Route wsrelay's logs to stderr in ``fmt`` ("auto" = json unless stderr is a TTY)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(fmt))
    root = logging.getLogger("wsrelay")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # picows logs every connection at INFO; keep only its warnings.
    logging.getLogger("wsrelay.picows").setLevel(logging.WARNING)
