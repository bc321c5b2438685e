"""Collecting the errors of one file, and the check every declared key gets from its declaration.

A file's errors are all reported at once (up to ``MAX_ERRORS``), each naming its dotted key
and the line it stands on, so one run of ``wsrelay check`` shows everything to fix.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from ..errors import ConfigError, ConfigErrors
from .schema import Key

MAX_ERRORS = 100                      # a hostile file cannot make the report (or the work) huge


def show(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message quotes values, not megabytes."""
    if isinstance(value, str) and len(value) > 4 * limit:
        value = value[:4 * limit]                    # repr of the head only: linear, bounded
    text = repr(value) if not isinstance(value, (list, dict)) or len(value) <= 8 else \
        f"<{type(value).__name__} of {len(value)} items>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def did_you_mean(name: str, allowed: list[str]) -> str | None:
    """The allowed name closest to a misspelt one, if any is close (long names are not compared)."""
    hint = difflib.get_close_matches(name, allowed, n=1) if len(name) <= 64 else []
    return hint[0] if hint else None


class Checker:
    """Collects the errors of one file, each with its dotted key and line.

    Rules between two keys are checked only on values that passed their own check
    (``valid``), and name a key present in the table, so that an error always points at
    something the user wrote and can change, never at a default.
    """

    def __init__(self, lines: Mapping[str, int], source: str | None) -> None:
        self.lines = lines
        self.source = source
        self.errors: list[ConfigError] = []
        self.failed: set[str] = set()                # keys with an error: no second one about them
        self.dropped = 0

    @property
    def full(self) -> bool:
        return len(self.errors) >= MAX_ERRORS

    def line_of(self, key: str) -> int | None:
        """The line of ``key``, or of the nearest enclosing key or table that has one."""
        probe = key
        for _ in range(16):                          # depth is small; a key can be long
            if probe in self.lines:
                return self.lines[probe]
            cut = max(probe.rfind("."), probe.rfind("[") if probe.endswith("]") else -1)
            if cut <= 0:
                return None
            probe = probe[:cut]
        return None

    def valid(self, *keys: str) -> bool:
        """None of ``keys`` had an error (a rule between keys is checked on good values only)."""
        return not self.failed.intersection(keys)

    def error(self, key: str, message: str) -> None:
        self.failed.add(key)
        if self.full:
            self.dropped += 1
            return
        line = self.line_of(key)
        shown = key if len(key) <= 120 else key[:117] + "..."
        self.errors.append(ConfigError(message, key=shown, line=line, source=self.source))

    def finish(self) -> None:
        """Raise ConfigErrors when anything was found."""
        if self.dropped:
            self.errors.append(ConfigError(f"... and {self.dropped} more error(s); fix these first",
                                           source=self.source))
        if self.errors:
            raise ConfigErrors(self.errors)

    def unknown_keys(self, table: Mapping, allowed: list[str], prefix: str, label: str) -> None:
        for key in table:
            if key in allowed:
                continue
            if self.full:                            # difflib is not free: skip once full
                self.dropped += 1
                continue
            hint = did_you_mean(key, allowed)
            suggestion = f"; did you mean '{hint}'?" if hint else f"; allowed: {', '.join(allowed)}"
            self.error(f"{prefix}.{key}", f"unknown key {show(key)} in {label}{suggestion}")

    def value(self, table: Mapping, prefix: str, key: Key) -> object:
        """The value of a declared scalar key, checked against its declaration; its default when
        the key is left out or wrong (after an error naming ``prefix.key``)."""
        if key.name not in table or (table[key.name] is None and key.extra.get("null_is_absent")):
            return key.default
        value, dotted = table[key.name], f"{prefix}.{key.name}"
        if not key.accepts(value):
            wanted = "a string" if key.pattern is not None else key.want
            self.error(dotted, f"{dotted} must be {wanted}, got {show(value)}")
            return key.default
        if key.pattern is not None and not key.pattern.fullmatch(str(value)):
            self.error(dotted, f"{dotted} must be {key.want}, got {show(value)}")
            return key.default
        if key.extra.get("path") and "\x00" in str(value):
            self.error(dotted, f"{dotted} must be a file path, without NUL characters")
            return key.default
        return float(value) if key.kind == "number" else value
