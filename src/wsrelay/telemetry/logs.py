"""Structured logs: one line per session end and one per refused handshake or provider
session, never per frame.

Lines go to the ``wsrelay.session`` logger as JSON objects (``--log-format json``, the
default when stderr is not a terminal) or as ``key=value`` pairs for people reading a
terminal (``text``). The formatter below renders a record's ``fields`` either way.

Every line the relay process prints goes through that one formatter: ``setup_logging``
puts it on the root logger, so asyncio's own messages ("Task exception was never
retrieved"), Python warnings and any library's log lines are structured too, with a
traceback folded into one field rather than spread over thirty lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import msgspec

log = logging.getLogger("wsrelay.session")

# The handler ``setup_logging`` installed, while it is the only one a session line would
# reach: then a line is rendered and written straight to it (``_emit``).
_direct: logging.StreamHandler | None = None


def log_session(fields: dict) -> None:
    """Log one ended session."""
    _emit("session end", fields)


def log_refusal(*, status: int, reason: str, client: str, target: str | None) -> None:
    """Log one handshake refused before any upgrade."""
    _emit("handshake refused", {
        "event": "handshake_refused", "status": status, "reason": reason,
        "client": client, "target": target})


def log_session_refused(*, code: int, reason: str, client: str, target: str | None, provider: str,
                        service_host: str | None) -> None:
    """Log one provider session refused after its upgrade (a close frame, no bot contacted)."""
    _emit("session refused", {
        "event": "session_refused", "code": code, "reason": reason, "client": client,
        "target": target, "provider": provider, "service_host": service_host})


def _emit(message: str, fields: dict) -> None:
    """One INFO line of ``wsrelay.session`` with ``fields``.

    These lines are written once per session (and per refusal), so they are part of every
    session's cost. When the relay's own logging is in place (``setup_logging``) and
    nothing else listens, the line the formatter would make is written to its handler
    directly: the same bytes, without a ``LogRecord`` and the logging machinery's calls
    around it (about 40,000 instructions a session). Anywhere else (a test's log capture,
    an embedding application's handlers) it is an ordinary log record.
    """
    handler = _direct
    if (handler is not None and logging.root.handlers == [handler] and not log.handlers
            and log.isEnabledFor(logging.INFO)):
        formatter = handler.formatter
        assert isinstance(formatter, StructuredFormatter)
        line = formatter.render({**StructuredFormatter.head(time.time(), "INFO", log.name), **fields})
        handler.acquire()
        try:
            handler.stream.write(line + handler.terminator)
            handler.flush()
        finally:
            handler.release()
        return
    log.info(message, extra={"fields": fields})


class StructuredFormatter(logging.Formatter):
    """Renders records as JSON or key=value; a record's ``fields`` become top-level keys."""

    def __init__(self, style: str = "json") -> None:
        super().__init__()
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        fields = self.head(record.created, record.levelname, record.name)
        extra = getattr(record, "fields", None)
        if extra:
            fields.update(extra)
        else:
            fields["msg"] = record.getMessage()
        if record.exc_info and record.exc_info[0] is not None:
            fields.setdefault("exc_type", record.exc_info[0].__name__)
            fields["exc"] = self.formatException(record.exc_info)
        return self.render(fields)

    @staticmethod
    def head(created: float, level: str, logger: str) -> dict:
        """The fields every line starts with: time, level and logger."""
        return {"ts": round(created, 3), "level": level.lower(), "logger": logger}

    def render(self, fields: dict) -> str:
        """One line of ``fields``, in this formatter's style.

        JSON is encoded by msgspec (about a tenth of ``json.dumps``' cost for a session's
        thirty fields); a line with a character beyond ASCII is encoded by ``json.dumps``
        instead, which escapes it, so every line stays ASCII whatever the locale of stderr.
        Objects JSON has no type for become their ``str()`` either way.
        """
        if self.style == "json":
            line = _encode_json(fields)
            if line.isascii():
                return line.decode("ascii")
            return json.dumps(fields, separators=(",", ":"), default=str)
        return " ".join(f"{k}={_text(v)}" for k, v in fields.items())


_encode_json = msgspec.json.Encoder(enc_hook=str).encode


def _text(value) -> str:
    """One ``key=value`` value: quoted (JSON-escaped) when it has spaces, '=', quotes or line breaks."""
    text = str(value)
    if not text or any(c.isspace() or c in '="' or not c.isprintable() for c in text):
        return json.dumps(text)
    return text


def setup_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    """Route every log line of the process to stderr in ``fmt`` ("auto" = json unless a TTY).

    The handler sits on the root logger, so records of ``asyncio`` and other libraries
    are rendered like wsrelay's own; other loggers show warnings and errors only.
    Python warnings become log records too.
    """
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    global _direct
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(StructuredFormatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _direct = handler
    root.setLevel(logging.WARNING)
    ours = logging.getLogger("wsrelay")
    ours.handlers[:] = []
    ours.setLevel(level)
    ours.propagate = True
    # picows logs every connection at INFO; keep only its warnings.
    logging.getLogger("wsrelay.picows").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    # The formatter prints none of the caller's file and line, thread or process: don't
    # have every record look them up (the logging HOWTO's "Optimization"). A session's
    # line is one of them, so this is part of every session's setup cost.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def log_loop_exception(loop, context: dict) -> None:
    """The event loop's exception handler: one structured line per unhandled error.

    asyncio's default handler writes the message, the future's repr and the traceback
    over many lines; here they are fields of one record (``exc`` holds the traceback).
    """
    exception = context.get("exception")
    fields = {"event": "loop_exception", "msg": str(context.get("message") or "unhandled error in the event loop")}
    for key in ("future", "task", "handle", "protocol", "transport", "socket"):
        if context.get(key) is not None:
            fields[key] = _short_repr(context[key])
    if exception is not None:
        fields["exc_type"] = type(exception).__name__
        fields["exc_text"] = str(exception)
        exc_info = (type(exception), exception, exception.__traceback__)
    else:
        exc_info = None
    logging.getLogger("wsrelay.loop").error(fields["msg"], exc_info=exc_info, extra={"fields": fields})


def _short_repr(value, limit: int = 300) -> str:
    """``repr`` of a loop object, bounded; a broken ``__repr__`` must not lose the line."""
    try:
        text = repr(value)
    except Exception as exc:                 # pragma: no cover - a repr that raises
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."
