"""Configuration: the TOML file of README "Configuration" as typed, validated, immutable objects.

Sans-I/O apart from ``load_config`` reading a file: ``parse_config(text)`` does the work,
so every rule is testable on a string. Unknown keys are errors, not silence, and every
error names its dotted key and the line it stands on.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .core.cors import origin_problem
from .errors import ConfigError, ConfigErrors

DEFAULT_PORT = 8765
DEFAULT_ADMIN_PORT = 9100


@dataclass(frozen=True)
class RelayConfig:
    """The ``[relay]`` table: the listener, its bounds and its flow control."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    admin_port: int = DEFAULT_ADMIN_PORT          # 0 disables the admin listener
    drain_seconds: float = 30.0
    public_url: str | None = None                 # e.g. "wss://relay.example.com"
    workers: int = 1
    handshake_timeout: float = 10.0               # whole request head must arrive within this
    provider_start_timeout: float = 10.0          # provider endpoints: first messages within this
    max_request_head_bytes: int = 8192            # 1024 .. 16384 (picows' own head limit is 16 KiB)
    max_frame_size: int = 16 * 1024 * 1024        # larger frames close the session with 1009
    upstream_connect_timeout: float = 5.0         # TCP connect + the bot's 101, per instance
    close_timeout: float = 5.0                    # a close's wait for its reply; a live peer reading nothing
    stall_timeout: float = 60.0                   # a peer that takes nothing (network gone) is dropped after it
    write_buffer_high: int = 256 * 1024           # pause reading the source above this
    write_buffer_low: int = 64 * 1024             # resume reading the source below this
    read_buffer_size: int = 2048                  # initial per-socket read buffer (grows for big frames)
    keepalive_interval: float = 0.0               # relay's own pings to each side; 0 = off
    keepalive_timeout: float = 10.0               # pong must arrive within this
    tls_cert: str | None = None                   # serve wss:// when both cert and key are set
    tls_key: str | None = None
    upstream_ca_file: str | None = None           # CA bundle for wss:// upstreams (default: system CAs)
    upstream_tls_verify: bool = True              # false only for testing
    log_format: str = "auto"                      # "auto" | "json" | "text"
    nonce_store: str = "memory"                   # "memory" | "redis" (at redis_url; [fleet] implies it)
    redis_url: str | None = None
    cors_origins: tuple[str, ...] = ()            # start API: exact origins, ("*",) = any; () = no CORS
    region: str | None = None                     # serve only agents deployed here (agent ``regions``)
    dns_refresh_seconds: float = 5.0              # upstream host names are re-resolved this often
    dns_servers: tuple[str, ...] = ()             # "ip" or "ip:port"; () = the system resolver
    gap_threshold_ms: float = 100.0               # a pause between two data frames longer than this is a gap
    admin_token: str | None = None                # Bearer token for the admin port (all but /healthz, /readyz)
    admin_host: str = "127.0.0.1"                 # the admin listener's address: loopback unless told otherwise


@dataclass(frozen=True)
class AuthConfig:
    """The ``[auth]`` table: signing keys by id, the active one, token lifetime."""

    keys: dict[str, str] = field(default_factory=dict)   # key id -> secret
    active_key: str | None = None
    token_ttl: int = 300
    clock_skew: int = 30


@dataclass(frozen=True)
class AgentConfig:
    """One ``[[agents]]`` entry."""

    name: str
    organization: str
    upstreams: tuple[str, ...]
    websocket_auth: str = "none"                  # "none" | "token" | "twilio-signature"
    public_keys: tuple[str, ...] = ()
    max_sessions: int | None = None               # None = unlimited
    max_session_seconds: float = 7200.0
    idle_timeout: float | None = None             # None = no idle limit
    regions: tuple[str, ...] = ()                 # () = every region
    twilio_auth_token: str | None = None          # with websocket_auth = "twilio-signature"
    line: int | None = None                       # where the entry starts in the file

    @property
    def service_host(self) -> str:
        return f"{self.name}.{self.organization}"


@dataclass(frozen=True)
class FleetConfig:
    """The ``[fleet]`` table: relays sharing one Redis act as one relay (README "Running a fleet")."""

    redis_url: str | None = None                  # None = not in a fleet
    relay_id: str | None = None                   # None = "hostname:pid", chosen when the relay starts
    lease_seconds: float = 10.0                   # a dead relay's capacity slots come back after this

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None


@dataclass(frozen=True)
class Config:
    relay: RelayConfig = field(default_factory=RelayConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    agents: tuple[AgentConfig, ...] = ()
    source: str | None = None                     # file path, for messages
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)  # key -> line


# -- locating keys: tomllib gives values, not lines ---------------------------------------
#
# One forward pass over the text, position-aware, never backtracking: every step either
# consumes characters with a regex that cannot backtrack (character classes, possessive
# repeats) or a str.find, so the time is linear in the file whatever its shape. It only
# maps where things start; tomllib decides whether the text is valid TOML. On text that
# is not, the pass still ends (every step consumes at least one character), and the
# lines it found are simply not used.

_SPACES = re.compile(r"[ \t]*+")
_BLANKS = re.compile(r"(?:[ \t\r\n]++|#[^\n]*+)*+")        # whitespace, newlines, comments
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]++")
_SCALAR = re.compile(r"[^,\[\]{}#\n\"']++")                 # numbers, booleans, dates, inf, nan
_ARRAY_RUN = re.compile(r"[^\[\]{}#\n\"']++")               # scalars and commas inside an array
_BASIC_STOP = re.compile(r'["\\\n]')
_ML_BASIC_STOP = re.compile(r'["\\]')
_LITERAL_STOP = re.compile(r"['\n]")
_QUOTES = re.compile(r'"++')
_APOSTROPHES = re.compile(r"'++")
_ESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|(.))", re.S)
MAX_KEY_PARTS = 64                    # tomllib's time and memory grow with the square of a key's parts
MAX_NESTING = 100                     # arrays and inline tables; tomllib itself recurses
MAX_PATH_CHARS = 1024                 # longer dotted paths are not recorded (nor built: their cost
                                      # would grow with the square of the nesting)
_ESCAPED = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def _unescape(match: re.Match) -> str:
    """One TOML basic-string escape, decoded (a quoted key must match tomllib's key)."""
    code = match.group(1) or match.group(2)
    if code is not None:
        value = int(code, 16)
        return chr(value) if value <= 0x10FFFF else match.group(0)
    return _ESCAPED.get(match.group(3), match.group(0))


def _end(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """Where ``pattern``'s match at ``pos`` ends, for the patterns that cannot fail there.

    ``_SPACES`` and ``_BLANKS`` match the empty string anywhere; ``_QUOTES`` and
    ``_APOSTROPHES`` are only used at a position holding a quote or an apostrophe.
    """
    match = pattern.match(text, pos)
    assert match is not None, f"{pattern.pattern!r} cannot fail at a position the pass gives it"
    return match.end()


def _child(path: str | None, suffix: str) -> str | None:
    """``path + suffix``, or None (not recorded) once the path is absurdly long."""
    if path is None or len(path) + len(suffix) > MAX_PATH_CHARS:
        return None
    return path + suffix


class _Frame:
    """An open array or inline table while the pass is inside a value."""

    __slots__ = ("kind", "path", "commas")

    def __init__(self, kind: str, path: str | None) -> None:
        self.kind = kind          # "array" or "table"
        self.path = path
        self.commas = 0           # in an array: the index of the next element


class _Locator:
    """The single pass behind ``locate_keys``; ``where`` is its answer."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.where: dict[str, int] = {}
        self.arrays: dict[str, int] = {}       # resolved [[name]] -> index of its last table
        self.table = ""
        self.too_deep: tuple[int, str] | None = None      # (line, why) of a key or value too deep
        self._line_pos = 0                     # line numbers are counted incrementally:
        self._line_no = 1                      # positions only ever move forward

    def run(self) -> dict[str, int]:
        text, size = self.text, len(self.text)
        while True:
            self.pos = _end(_BLANKS, text, self.pos)
            if self.pos >= size or self.too_deep:
                return self.where
            start = self.pos
            if text[start] == "[":
                self._header()
            else:
                self._key_value()
            # Only a comment may follow a statement on its line; skip whatever does.
            newline = text.find("\n", max(self.pos, start + 1))
            self.pos = size if newline < 0 else newline + 1

    # -- lines --------------------------------------------------------------------------

    def _line(self, pos: int) -> int:
        if pos < self._line_pos:                            # not reached; kept correct anyway
            self._line_pos, self._line_no = 0, 1
        self._line_no += self.text.count("\n", self._line_pos, pos)
        self._line_pos = pos
        return self._line_no

    def _record(self, path: str | None, pos: int) -> None:
        if path is None or path in self.where:
            return
        self.where[path] = self._line(pos)

    def _refuse(self, pos: int, why: str) -> None:
        """Stop the pass: the file is too deep for tomllib to be asked (parse_config says so)."""
        if self.too_deep is None:
            self.too_deep = (self._line(pos), why)


    # -- statements -----------------------------------------------------------------------

    def _header(self) -> None:
        """``[a.b]`` or ``[[a.b]]``: the table the following keys belong to."""
        start = self.pos
        is_array = self.text.startswith("[[", start)
        self.pos += 2 if is_array else 1
        segments = self._key()
        if not segments:
            return
        path = ""
        for segment in segments[:-1]:
            path = f"{path}.{segment}" if path else segment
            if path in self.arrays:                         # [[agents]] then [agents.x]
                path = f"{path}[{self.arrays[path]}]"
        name = f"{path}.{segments[-1]}" if path else segments[-1]      # as long as its own line
        if is_array:
            index = self.arrays.get(name, -1) + 1
            self.arrays[name] = index
            name = f"{name}[{index}]"
        elif name in self.arrays:
            name = f"{name}[{self.arrays[name]}]"
        self.table = name
        self._record(name, start)

    def _key_value(self) -> None:
        """``key = value`` (``key`` may be dotted or quoted) in the current table."""
        start = self.pos
        segments = self._key()
        if not segments:
            return
        self.pos = _end(_SPACES, self.text, self.pos)
        if not self.text.startswith("=", self.pos):
            return
        self.pos = _end(_SPACES, self.text, self.pos + 1)
        key = ".".join(segments)
        path = _child(self.table, "." + key) if self.table else key
        self._record(path, start)
        self._value(path)

    def _key(self) -> list[str]:
        """A dotted key's segments, as tomllib decodes them; [] when there is none."""
        text = self.text
        segments: list[str] = []
        start = self.pos
        while True:
            self.pos = _end(_SPACES, text, self.pos)
            if text.startswith('"', self.pos):
                begin = self.pos + 1
                end = self._skip_basic()
                segment = text[begin:end]
                if "\\" in segment:
                    segment = _ESCAPE.sub(_unescape, segment)
            elif text.startswith("'", self.pos):
                begin = self.pos + 1
                end = self._skip_literal()
                segment = text[begin:end]
            else:
                bare = _BARE_KEY.match(text, self.pos)
                if bare is None:
                    return segments
                segment = bare.group()
                self.pos = bare.end()
            segments.append(segment)
            if len(segments) > MAX_KEY_PARTS:
                self._refuse(start, f"a key of over {MAX_KEY_PARTS} dotted parts")
                return []
            self.pos = _end(_SPACES, text, self.pos)
            if not text.startswith(".", self.pos):
                return segments
            self.pos += 1

    # -- values -----------------------------------------------------------------------------

    def _value(self, path: str | None) -> None:
        """Skip one value, recording array elements and the keys of inline tables.

        Iterative, with an explicit stack, so no nesting depth can exhaust Python's stack.
        """
        text, size = self.text, len(self.text)
        stack: list[_Frame] = []
        starting = True                    # a value starts at self.pos; its path is ``current``
        current = path
        while self.pos < size:
            if starting:
                starting = False
                char = text[self.pos]
                if char == "[" or char == "{":
                    if len(stack) >= MAX_NESTING:
                        self._refuse(self.pos, f"values nested over {MAX_NESTING} levels deep")
                        return
                    stack.append(_Frame("array" if char == "[" else "table", current))
                    self.pos += 1
                elif char == '"' or char == "'":
                    self._skip_string()
                else:
                    scalar = _SCALAR.match(text, self.pos)
                    if scalar is not None:             # else a missing value: leave the ',', ']'
                        self.pos = scalar.end()        # or '}' to the container below
                if not stack:
                    return
                continue
            frame = stack[-1]
            self.pos = _end(_BLANKS, text, self.pos)
            if self.pos >= size:
                return
            char = text[self.pos]
            if char == ("]" if frame.kind == "array" else "}"):
                self.pos += 1
                stack.pop()
                if not stack:
                    return
            elif frame.kind == "array":
                starting, current = self._array_item(frame, char)
            else:
                starting, current = self._table_item(frame, char)

    def _array_item(self, frame: _Frame, char: str) -> tuple[bool, str | None]:
        """Inside ``[...]``: (True, path) for a string or container element; scalars are skipped."""
        if char in "[{\"'":
            path = _child(frame.path, f"[{frame.commas}]")
            self._record(path, self.pos)
            return True, path
        run = _ARRAY_RUN.match(self.text, self.pos)
        if run is None:
            self.pos += 1                              # a stray '}'
        else:                                          # bare scalars: no line of their own
            frame.commas += self.text.count(",", self.pos, run.end())
            self.pos = run.end()
        return False, None

    def _table_item(self, frame: _Frame, char: str) -> tuple[bool, str | None]:
        """Inside ``{...}``: (True, path) at the value of the next ``key = value``."""
        if char == ",":
            self.pos += 1
            return False, None
        start = self.pos
        segments = self._key()
        if not segments:
            self.pos = max(self.pos, start + 1)
            return False, None
        self.pos = _end(_SPACES, self.text, self.pos)
        if not self.text.startswith("=", self.pos):
            return False, None
        self.pos = _end(_BLANKS, self.text, self.pos + 1)
        path = _child(frame.path, "." + ".".join(segments))
        self._record(path, start)
        return True, path

    # -- strings ----------------------------------------------------------------------------

    def _skip_string(self) -> None:
        text, pos = self.text, self.pos
        if text.startswith('"""', pos):
            self._skip_multiline_basic()
        elif text.startswith("'''", pos):
            self._skip_multiline_literal()
        elif text[pos] == '"':
            self._skip_basic()
        else:
            self._skip_literal()

    def _skip_basic(self) -> int:
        """Past a ``"..."`` string; returns where its content ends."""
        pos = self.pos + 1
        while True:
            stop = _BASIC_STOP.search(self.text, pos)
            if stop is None:
                self.pos = len(self.text)
                return self.pos
            pos = stop.start()
            char = self.text[pos]
            if char == "\\":
                pos += 2
                continue
            self.pos = pos + 1 if char == '"' else pos      # an unclosed string ends its line
            return pos

    def _skip_literal(self) -> int:
        """Past a ``'...'`` string (no escapes); returns where its content ends."""
        stop = _LITERAL_STOP.search(self.text, self.pos + 1)
        if stop is None:
            self.pos = len(self.text)
            return self.pos
        end = stop.start()
        self.pos = end + 1 if self.text[end] == "'" else end
        return end

    def _skip_multiline_basic(self) -> None:
        """Past ``\"\"\"...\"\"\"``: a run of three or more quotes closes it (up to two are content)."""
        pos = self.pos + 3
        while True:
            stop = _ML_BASIC_STOP.search(self.text, pos)
            if stop is None:
                self.pos = len(self.text)
                return
            pos = stop.start()
            if self.text[pos] == "\\":
                pos += 2
                continue
            end = _end(_QUOTES, self.text, pos)
            if end - pos >= 3:
                self.pos = end
                return
            pos = end

    def _skip_multiline_literal(self) -> None:
        """Past ``'''...'''`` (no escapes): the first run of three or more quotes closes it."""
        found = self.text.find("'''", self.pos + 3)
        if found < 0:
            self.pos = len(self.text)
            return
        self.pos = _end(_APOSTROPHES, self.text, found)


def locate_keys(text: str) -> dict[str, int]:
    """Map dotted keys (``relay.port``, ``agents[1].name``, ``auth.keys.k2``) to 1-based lines.

    Table headers map too (``relay``, ``agents[0]``), as do array elements that are strings
    or containers (``agents[0].upstreams[1]``) and the keys of inline tables. One linear
    pass: a file's shape (long strings, deep arrays, many tables) cannot make it slow.
    """
    return _Locator(text).run()


# -- validation -------------------------------------------------------------------------

MAX_CONFIG_BYTES = 1024 * 1024
MAX_ERRORS = 100                      # a hostile file cannot make the report (or the work) huge
NAME = re.compile(r"[a-z0-9-]{1,63}")            # always fullmatch: '$' would let "a\n" pass
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")         # visible ASCII: a header value as sent
WEBSOCKET_AUTH_MODES = ("none", "token", "twilio-signature")
_LONG_NUMBER = re.compile(r"[0-9A-Fa-f_]{4300,}")


def _show(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message quotes values, not megabytes."""
    if isinstance(value, str) and len(value) > 4 * limit:
        value = value[:4 * limit]                    # repr of the head only: linear, bounded
    text = repr(value) if not isinstance(value, (list, dict)) or len(value) <= 8 else \
        f"<{type(value).__name__} of {len(value)} items>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _Checker:
    """Collects the errors of one file, each with its dotted key and line.

    Rules between two keys are checked only on values that passed their own check
    (``valid``), and name a key present in the table, so that an error always points at
    something the user wrote and can change, never at a default.
    """

    def __init__(self, lines: dict[str, int], source: str | None) -> None:
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
            hint = difflib.get_close_matches(key, allowed, n=1) if len(key) <= 64 else []
            suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; allowed: {', '.join(allowed)}"
            self.error(f"{prefix}.{key}", f"unknown key {_show(key)} in {label}{suggestion}")

    def integer(self, table, key, prefix, default, lo, hi):
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.error(f"{prefix}.{key}", f"{prefix}.{key} must be an integer from {lo} to {hi}, got {_show(value)}")
            return default
        return value

    def number(self, table, key, prefix, default, lo, hi, *, lo_open=False, unit="seconds"):
        if key not in table:
            return default
        value = table[key]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            low = f"above {lo:g}" if lo_open else f"from {lo:g}"
            self.error(f"{prefix}.{key}",
                       f"{prefix}.{key} must be a number {low} to {hi:g} ({unit}), got {_show(value)}")
            return default
        return float(value)

    def string(self, table, key, prefix, default, choices=None):
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, str) or (choices is not None and value not in choices):
            want = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a string"
            self.error(f"{prefix}.{key}", f"{prefix}.{key} must be {want}, got {_show(value)}")
            return default
        return value

    def path(self, table, key, prefix, default):
        """A file name: a string without NUL (the OS would refuse it later, less clearly)."""
        value = self.string(table, key, prefix, default)
        if isinstance(value, str) and "\x00" in value:
            self.error(f"{prefix}.{key}", f"{prefix}.{key} must be a file path, without NUL characters")
            return default
        return value

    def boolean(self, table, key, prefix, default):
        if key not in table:
            return default
        value = table[key]
        if not isinstance(value, bool):
            self.error(f"{prefix}.{key}", f"{prefix}.{key} must be true or false, got {_show(value)}")
            return default
        return value


def _url_parts(check: _Checker, key: str, value: str):
    """``urlsplit(value)`` and its port, or None after an error naming ``key``.

    urlsplit raises ValueError on some text ('http://[', a port that is not a number):
    every URL of the file goes through here so that none can escape as a traceback.
    """
    if _SPACE_OR_CONTROL.search(value):
        check.error(key, f"{key}: {_show(value)} must not contain spaces or control characters")
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
        hostname = parts.hostname
    except ValueError as exc:           # e.g. "Invalid IPv6 URL", "Port out of range 0-65535"
        reason = str(exc)[:1].lower() + str(exc)[1:]
        check.error(key, f"{key}: {_show(value)} is not a valid URL ({reason})")
        return None
    if port is not None and not 1 <= port <= 65535:
        check.error(key, f"{key}: port must be from 1 to 65535")
        return None
    return parts, hostname


def _check_ws_url(check: _Checker, key: str, value) -> str | None:
    if not isinstance(value, str):
        check.error(key, f"{key} must be a string like 'ws://10.0.0.5:7860/ws', got {_show(value)}")
        return None
    parsed = _url_parts(check, key, value)
    if parsed is None:
        return None
    parts, hostname = parsed
    if parts.scheme not in ("ws", "wss") or not hostname:
        check.error(key, f"{key}: {_show(value)} must be a ws:// or wss:// URL with a host")
    elif parts.fragment or parts.username or parts.password:
        check.error(key, f"{key}: {_show(value)} must not contain a fragment or user:password@")
    else:
        return value
    return None


def _check_public_url(check: _Checker, value: str) -> None:
    """``public_url`` is the base of the start API's wsUrl: scheme and host, maybe a path."""
    key = "relay.public_url"
    parsed = _url_parts(check, key, value)
    if parsed is None:
        return
    parts, hostname = parsed
    if parts.scheme not in ("ws", "wss", "http", "https") or not hostname:
        check.error(key, f"relay.public_url must look like 'wss://relay.example.com', got {_show(value)}")
    elif parts.query or parts.fragment or parts.username or parts.password:
        check.error(key, "relay.public_url must not contain a query, fragment or user:password@ "
                         "(the start API appends /ws/generic/{agent}.{org} to it)")


def _check_redis_url(check: _Checker, value: str, key: str = "relay.redis_url") -> None:
    parsed = _url_parts(check, key, value)
    if parsed is None:
        return
    parts, hostname = parsed
    if parts.scheme not in ("redis", "rediss") or not hostname:
        check.error(key, f"{key} must look like 'redis://127.0.0.1:6379/0' or 'rediss://user:password@host:6380/0', "
                         f"got {_show(value)}")


def _check_cors_origins(check: _Checker, value) -> tuple[str, ...]:
    """A list of exact origins, or ``["*"]`` for any origin; [] (the default) is CORS off."""
    key = "relay.cors_origins"
    if not isinstance(value, list) or len(value) > 256:
        check.error(key, f"{key} must be a list of origins such as [\"https://app.example.com\"] "
                         "(at most 256), or [\"*\"] for any origin")
        return ()
    if "*" in value and len(value) > 1:
        check.error(key, f"{key}: \"*\" already allows every origin; give it alone, or list origins without it")
        return ()
    good = []
    for index, origin in enumerate(value):
        problem = None if origin == "*" else origin_problem(origin)
        if problem:
            check.error(f"{key}[{index}]", f"{key}[{index}] {_show(origin)} {problem}")
        else:
            good.append(origin)
    return tuple(good)


def _relay(check: _Checker, table) -> RelayConfig:
    p = "relay"
    names = [f.name for f in dataclasses.fields(RelayConfig)]
    check.unknown_keys(table, names, p, "[relay]")
    d = RelayConfig()
    values = {
        "host": check.string(table, "host", p, d.host),
        "port": check.integer(table, "port", p, d.port, 1, 65535),
        "admin_port": check.integer(table, "admin_port", p, d.admin_port, 0, 65535),
        "drain_seconds": check.number(table, "drain_seconds", p, d.drain_seconds, 0, 86400),
        "public_url": check.string(table, "public_url", p, d.public_url),
        "workers": check.integer(table, "workers", p, d.workers, 1, 64),
        "handshake_timeout": check.number(table, "handshake_timeout", p, d.handshake_timeout, 0, 3600, lo_open=True),
        "provider_start_timeout": check.number(table, "provider_start_timeout", p, d.provider_start_timeout,
                                               0, 3600, lo_open=True),
        "max_request_head_bytes": check.integer(table, "max_request_head_bytes", p, d.max_request_head_bytes, 1024, 16384),
        "max_frame_size": check.integer(table, "max_frame_size", p, d.max_frame_size, 1, 1 << 30),
        "upstream_connect_timeout": check.number(table, "upstream_connect_timeout", p, d.upstream_connect_timeout, 0, 3600, lo_open=True),
        "close_timeout": check.number(table, "close_timeout", p, d.close_timeout, 0, 3600, lo_open=True),
        "stall_timeout": check.number(table, "stall_timeout", p, d.stall_timeout, 0, 86400, lo_open=True),
        "write_buffer_high": check.integer(table, "write_buffer_high", p, d.write_buffer_high, 1024, 1 << 30),
        "write_buffer_low": check.integer(table, "write_buffer_low", p, d.write_buffer_low, 1024, 1 << 30),
        "read_buffer_size": check.integer(table, "read_buffer_size", p, d.read_buffer_size, 2048, 1 << 24),
        "keepalive_interval": check.number(table, "keepalive_interval", p, d.keepalive_interval, 0, 86400),
        "keepalive_timeout": check.number(table, "keepalive_timeout", p, d.keepalive_timeout, 0, 3600, lo_open=True),
        "tls_cert": check.path(table, "tls_cert", p, d.tls_cert),
        "tls_key": check.path(table, "tls_key", p, d.tls_key),
        "upstream_ca_file": check.path(table, "upstream_ca_file", p, d.upstream_ca_file),
        "upstream_tls_verify": check.boolean(table, "upstream_tls_verify", p, d.upstream_tls_verify),
        "log_format": check.string(table, "log_format", p, d.log_format, ("auto", "json", "text")),
        "nonce_store": check.string(table, "nonce_store", p, d.nonce_store, ("memory", "redis")),
        "redis_url": check.string(table, "redis_url", p, d.redis_url),
        "cors_origins": _check_cors_origins(check, table["cors_origins"]) if "cors_origins" in table
        else d.cors_origins,
        "region": _check_region(check, table, p),
        "dns_refresh_seconds": check.number(table, "dns_refresh_seconds", p, d.dns_refresh_seconds, 0.1, 86400),
        "dns_servers": _check_dns_servers(check, table["dns_servers"]) if "dns_servers" in table
        else d.dns_servers,
        "gap_threshold_ms": check.number(table, "gap_threshold_ms", p, d.gap_threshold_ms, 0, 3_600_000,
                                         lo_open=True, unit="milliseconds"),
        "admin_token": _check_admin_token(check, table, p),
        "admin_host": check.string(table, "admin_host", p, d.admin_host),
    }
    host = values["host"]
    if _SPACE_OR_CONTROL.search(host) or len(host) > 255:
        check.error("relay.host", f"relay.host must be an address or name like '0.0.0.0' or '127.0.0.1', "
                                  f"got {_show(host)}")
        values["host"] = d.host
    admin_host = values["admin_host"]
    if not admin_host or _SPACE_OR_CONTROL.search(admin_host) or len(admin_host) > 255:
        check.error("relay.admin_host", f"relay.admin_host must be an address like '127.0.0.1' or '10.0.0.5', "
                                        f"got {_show(admin_host)}")
        values["admin_host"] = d.admin_host
    _derive_defaults(table, values)
    _check_pairs(check, table, values)
    if values["public_url"] is not None:
        _check_public_url(check, values["public_url"])
        if "{region}" in values["public_url"] and not values["region"] and check.valid("relay.region"):
            check.error("relay.public_url", "relay.public_url names {region} but relay.region is not set: "
                                            "set relay.region = 'us-west' (the region this relay serves)")
    if values["redis_url"] is not None:
        _check_redis_url(check, values["redis_url"])
    return RelayConfig(**values)


def _check_admin_token(check: _Checker, table, prefix: str) -> str | None:
    """The admin port's Bearer token: long enough not to be guessed, sendable in a header."""
    value = check.string(table, "admin_token", prefix, None)
    if value is None:
        return None
    if len(value) < 16 or len(value) > 512 or not _TOKEN_CHARS.fullmatch(value):
        check.error(f"{prefix}.admin_token", "relay.admin_token must be 16 to 512 printable characters without "
                    "spaces (it is sent as 'Authorization: Bearer <token>'); generate one with "
                    "'python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"'")
        return None
    return value


def _check_region(check: _Checker, table, prefix: str) -> str | None:
    """A region name such as "us-west": the platform's regions are DNS-label-like."""
    value = check.string(table, "region", prefix, None)
    if value is not None and not NAME.fullmatch(value):
        check.error(f"{prefix}.region", f"{prefix}.region must be 1-63 characters of a-z, 0-9 and '-' "
                                        f"such as 'us-west', got {_show(value)}")
        return None
    return value


def _check_regions(check: _Checker, table, prefix: str) -> tuple[str, ...]:
    """An agent's ``regions``: where it is deployed; left out, it is served in every region."""
    key = f"{prefix}.regions"
    value = table.get("regions", [])
    if not isinstance(value, list) or len(value) > 64:
        check.error(key, f"{key} must be a list of region names such as [\"us-west\", \"eu-central\"]")
        return ()
    good = []
    for index, region in enumerate(value):
        if not isinstance(region, str) or not NAME.fullmatch(region):
            check.error(f"{key}[{index}]", f"{key}[{index}] must be a region name of a-z, 0-9 and '-' "
                                           f"such as 'us-west', got {_show(region)}")
        elif region not in good:
            good.append(region)
    return tuple(good)


def _check_dns_servers(check: _Checker, value) -> tuple[str, ...]:
    """``["10.0.0.2", "127.0.0.1:5353", "[fd00::53]:53"]``: IP addresses, each with an optional port."""
    key = "relay.dns_servers"
    if not isinstance(value, list) or len(value) > 16:
        check.error(key, f"{key} must be a list of at most 16 DNS server addresses such as "
                         "[\"10.0.0.2\", \"127.0.0.1:5353\"] (leave it out for the system resolver)")
        return ()
    good = []
    for index, server in enumerate(value):
        parsed = parse_dns_server(server) if isinstance(server, str) else None
        if parsed is None:
            check.error(f"{key}[{index}]", f"{key}[{index}] must be an IP address with an optional port, "
                                           f"such as '10.0.0.2' or '127.0.0.1:5353', got {_show(server)}")
        else:
            good.append(server)
    return tuple(good)


def parse_dns_server(text: str) -> tuple[str, int] | None:
    """(address, port) of a ``dns_servers`` entry, or None when it is not one."""
    import ipaddress
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else "53"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        port_text = "53"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return None
    port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, port


_FLEET_KEYS = ["redis_url", "relay_id", "lease_seconds"]
RELAY_ID = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")


def _fleet(check: _Checker, table) -> FleetConfig:
    p = "fleet"
    check.unknown_keys(table, _FLEET_KEYS, p, "[fleet]")
    d = FleetConfig()
    redis_url = check.string(table, "redis_url", p, None)
    if redis_url is not None:
        _check_redis_url(check, redis_url, key="fleet.redis_url")
    elif table:
        check.error(p, "[fleet] needs redis_url = 'redis://host:6379/0' (the Redis every relay of the fleet shares)")
    relay_id = check.string(table, "relay_id", p, None)
    if relay_id is not None and not RELAY_ID.fullmatch(relay_id):
        check.error("fleet.relay_id", "fleet.relay_id must be 1-128 characters of A-Z, a-z, 0-9 and ._:@/- "
                                      f"(default: hostname:pid), got {_show(relay_id)}")
        relay_id = None
    return FleetConfig(redis_url=redis_url, relay_id=relay_id,
                       lease_seconds=check.number(table, "lease_seconds", p, d.lease_seconds, 1, 3600))


def _derive_defaults(table, values: dict) -> None:
    """Defaults of keys the user left out follow the keys the user wrote.

    So that setting one key never makes the file invalid because of a default it does not
    see: ``keepalive_interval = 5`` alone gets a 5 s timeout, ``write_buffer_high = 32768``
    alone gets a low-water mark of a quarter of it.
    """
    if "keepalive_timeout" not in table and values["keepalive_interval"] > 0:
        values["keepalive_timeout"] = min(RelayConfig.keepalive_timeout, values["keepalive_interval"])
    if "write_buffer_low" not in table:
        values["write_buffer_low"] = values["write_buffer_high"] // 4
    elif "write_buffer_high" not in table:
        values["write_buffer_high"] = min(1 << 30, max(RelayConfig.write_buffer_high, 4 * values["write_buffer_low"]))


def _check_pairs(check: _Checker, table, values: dict) -> None:
    """Rules between two keys; each error names a key the user wrote."""
    port, admin = values["port"], values["admin_port"]
    if admin and admin == port and check.valid("relay.port", "relay.admin_port"):
        if "admin_port" in table:
            check.error("relay.admin_port", "relay.admin_port must differ from relay.port "
                                            "(the admin endpoints are not public)")
        else:
            check.error("relay.port", f"relay.port = {port} is also the default relay.admin_port: "
                                      "set relay.admin_port to another port, or 0 to turn it off")
    if values["write_buffer_low"] >= values["write_buffer_high"] and \
            check.valid("relay.write_buffer_low", "relay.write_buffer_high"):
        key = "relay.write_buffer_low" if "write_buffer_low" in table else "relay.write_buffer_high"
        check.error(key, f"relay.write_buffer_low ({values['write_buffer_low']}) must be below "
                         f"relay.write_buffer_high ({values['write_buffer_high']})")
    if values["keepalive_interval"] and values["keepalive_timeout"] > values["keepalive_interval"] and \
            check.valid("relay.keepalive_interval", "relay.keepalive_timeout"):
        check.error("relay.keepalive_timeout", "relay.keepalive_timeout must not exceed relay.keepalive_interval")
    if bool(values["tls_cert"]) != bool(values["tls_key"]) and check.valid("relay.tls_cert", "relay.tls_key"):
        given, missing = ("tls_cert", "tls_key") if values["tls_cert"] else ("tls_key", "tls_cert")
        check.error(f"relay.{given}", f"relay.{given} is set but relay.{missing} is not: set both "
                                      "to serve wss://, or neither")


def _auth(check: _Checker, table) -> AuthConfig:
    p = "auth"
    check.unknown_keys(table, ["secret", "keys", "active_key", "token_ttl", "clock_skew"], p, "[auth]")
    keys: dict[str, str] = {}
    active = None
    if "secret" in table and "keys" in table:
        check.error("auth.secret", "give either auth.secret or auth.keys (with auth.active_key), not both")
    elif "secret" in table:
        secret = table["secret"]
        if not isinstance(secret, str) or not secret:
            check.error("auth.secret", "auth.secret must be a non-empty string")
        else:
            keys, active = {"default": secret}, "default"
    elif "keys" in table:
        raw = table["keys"]
        if not isinstance(raw, dict) or not raw:
            check.error("auth.keys", 'auth.keys must be a table of key id = "secret", e.g. { k2 = "...", k1 = "..." }')
        else:
            for kid, secret in raw.items():
                if not KEY_ID.fullmatch(kid):
                    check.error(f"auth.keys.{kid}",
                                f"key id {_show(kid)} must be 1-32 characters of A-Z, a-z, 0-9, '_' and '-'")
                elif not isinstance(secret, str) or not secret:
                    check.error(f"auth.keys.{kid}", f"auth.keys.{kid} must be a non-empty string")
                else:
                    keys[kid] = secret
            active = table.get("active_key")
            if active is None:
                if len(raw) == 1:
                    active = next(iter(raw))
                else:
                    check.error("auth.keys", "with several auth.keys, set auth.active_key to the id new tokens use")
            elif not isinstance(active, str) or active not in raw:
                ids = ", ".join(_show(k, 40) for k in list(raw)[:8])
                check.error("auth.active_key",
                            f"auth.active_key must name one of auth.keys ({ids}), got {_show(active)}")
                active = None
    if "active_key" in table and "keys" not in table:
        check.error("auth.active_key", "auth.active_key goes with auth.keys")
    return AuthConfig(keys=keys, active_key=active,
                      token_ttl=check.integer(table, "token_ttl", p, 300, 1, 86400),
                      clock_skew=check.integer(table, "clock_skew", p, 30, 0, 300))


_AGENT_KEYS = ["name", "organization", "upstreams", "websocket_auth", "public_keys", "max_sessions",
               "max_session_seconds", "idle_timeout", "regions", "twilio_auth_token"]


def _agent(check: _Checker, index: int, table) -> AgentConfig | None:
    p = f"agents[{index}]"
    if not isinstance(table, dict):
        check.error(p, "each [[agents]] entry must be a table")
        return None
    check.unknown_keys(table, _AGENT_KEYS, p, "[[agents]]")
    ok = True
    names = {}
    for key in ("name", "organization"):
        value = table.get(key)
        if value is None:
            check.error(p, f"{p}.{key} is required")
            ok = False
        elif not isinstance(value, str) or not NAME.fullmatch(value):
            check.error(f"{p}.{key}",
                        f"{p}.{key} must be 1-63 characters of a-z, 0-9 and '-' (no dots), got {_show(value)}")
            ok = False
        names[key] = value
    upstreams = table.get("upstreams")
    good: list[str] = []
    if upstreams is None:
        check.error(p, f"{p}.upstreams is required: a list of the bot's ws:// or wss:// URLs")
        ok = False
    elif not isinstance(upstreams, list) or not upstreams or len(upstreams) > 256:
        check.error(f"{p}.upstreams", f"{p}.upstreams must be a non-empty list of at most 256 ws:// or wss:// URLs")
        ok = False
    else:
        for i, url in enumerate(upstreams):
            checked = _check_ws_url(check, f"{p}.upstreams[{i}]", url)
            ok = ok and checked is not None
            if checked:
                good.append(checked)
    public_keys = table.get("public_keys", [])
    if (not isinstance(public_keys, list) or len(public_keys) > 64
            or not all(isinstance(k, str) and 0 < len(k) <= 256 for k in public_keys)):
        check.error(f"{p}.public_keys", f"{p}.public_keys must be a list of at most 64 non-empty strings (≤ 256 characters)")
        public_keys = []
    max_sessions = table.get("max_sessions")
    if max_sessions is not None and (not isinstance(max_sessions, int) or isinstance(max_sessions, bool)
                                     or not 1 <= max_sessions <= 1 << 31):
        check.error(f"{p}.max_sessions", f"{p}.max_sessions must be a positive integer (leave it out for no "
                                         f"limit), got {_show(max_sessions)}")
        max_sessions = None
    idle = check.number(table, "idle_timeout", p, None, 0, 86400, lo_open=True)
    agent = AgentConfig(
        name=names.get("name") or "", organization=names.get("organization") or "",
        upstreams=tuple(good),
        websocket_auth=check.string(table, "websocket_auth", p, "none", WEBSOCKET_AUTH_MODES),
        public_keys=tuple(public_keys), max_sessions=max_sessions,
        max_session_seconds=check.number(table, "max_session_seconds", p, 7200.0, 0, 30 * 86400, lo_open=True),
        idle_timeout=idle, regions=_check_regions(check, table, p),
        twilio_auth_token=_check_twilio_auth_token(check, table, p), line=check.line_of(p))
    return agent if ok else None


def _check_twilio_auth_token(check: _Checker, table, p: str) -> str | None:
    """The Twilio account's auth token: required by, and only meaningful with, twilio-signature."""
    token = check.string(table, "twilio_auth_token", p, None)
    mode = table.get("websocket_auth")
    if token is not None and (not token or len(token) > 256 or _SPACE_OR_CONTROL.search(token)):
        check.error(f"{p}.twilio_auth_token", f"{p}.twilio_auth_token must be the Twilio account's auth token "
                                              "(1-256 characters, no spaces)")
        return None
    if (mode == "twilio-signature" and token is None
            and check.valid(f"{p}.websocket_auth", f"{p}.twilio_auth_token")):
        check.error(f"{p}.websocket_auth", f"{p}.websocket_auth = \"twilio-signature\" needs "
                                           f"{p}.twilio_auth_token (the Twilio account's auth token, "
                                           "from the Twilio console)")
    elif token is not None and mode != "twilio-signature":
        check.error(f"{p}.twilio_auth_token", f"{p}.twilio_auth_token is used only with "
                                              f"websocket_auth = \"twilio-signature\"; set that, or remove the token")
    return token


def _load_toml(text: str, source: str | None) -> dict:
    """tomllib's answer, or ConfigErrors: the only exception a hostile text can cause."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise ConfigErrors([ConfigError(f"not valid TOML: {exc}", line=int(match.group(1)) if match else None,
                                        source=source)]) from None
    except RecursionError:
        raise ConfigErrors([ConfigError("not valid TOML: nested too deeply", source=source)]) from None
    except ValueError as exc:
        # Python refuses to convert integers of over 4300 digits: a plain ValueError.
        long = _LONG_NUMBER.search(text) if "digits" in str(exc) else None
        if long is None:
            raise ConfigErrors([ConfigError(f"not valid TOML: {exc}", source=source)]) from None
        raise ConfigErrors([ConfigError("a number with thousands of digits; write a number of sensible size",
                                        line=text.count("\n", 0, long.start()) + 1, source=source)]) from None


def parse_config(text: str, source: str | None = None) -> Config:
    """Parse and validate a config file's text; ConfigErrors lists every problem found."""
    if len(text) > MAX_CONFIG_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigErrors([ConfigError(f"the file is over {MAX_CONFIG_BYTES} bytes; is it the right file?",
                                        source=source)])
    locator = _Locator(text)
    lines = locator.run()                     # before tomllib: it also finds keys too deep for it
    if locator.too_deep is not None:
        line, why = locator.too_deep
        raise ConfigErrors([ConfigError(f"{why}; is it the right file?", line=line, source=source)])
    data = _load_toml(text, source)
    check = _Checker(lines, source)
    for key in data:
        if key not in ("relay", "auth", "fleet", "agents"):
            hint = difflib.get_close_matches(key, ["relay", "auth", "fleet", "agents"], n=1) if len(key) <= 64 else []
            check.error(key, f"unknown table {_show(key)}" + (f"; did you mean '{hint[0]}'?" if hint
                                                             else "; allowed: [relay], [auth], [fleet], [[agents]]"))
    relay_table, auth_table, fleet_table = data.get("relay", {}), data.get("auth", {}), data.get("fleet", {})
    for name, table in (("relay", relay_table), ("auth", auth_table), ("fleet", fleet_table)):
        if not isinstance(table, dict):
            check.error(name, f"'{name}' must be a table: [{name}]")
    relay = _relay(check, relay_table if isinstance(relay_table, dict) else {})
    auth = _auth(check, auth_table if isinstance(auth_table, dict) else {})
    fleet = _fleet(check, fleet_table if isinstance(fleet_table, dict) else {})
    if relay.nonce_store == "redis" and not relay.redis_url and not fleet.redis_url \
            and check.valid("relay.redis_url", "fleet.redis_url", "fleet"):
        # Without its own redis_url the nonce store uses the fleet's Redis (nonce_store_of).
        check.error("relay.nonce_store", "relay.nonce_store = 'redis' needs relay.redis_url = 'redis://host:6379/0' "
                                         "(or a [fleet] redis_url, whose Redis it then uses)")
    agents_raw = data.get("agents", [])
    agents: list[AgentConfig] = []
    if not isinstance(agents_raw, list):
        check.error("agents", "agents must be an array of tables: [[agents]]")
        agents_raw = []
    seen: dict[str, int] = {}
    for index, table in enumerate(agents_raw):
        agent = _agent(check, index, table)
        if agent is None:
            continue
        if agent.service_host in seen:
            first = seen[agent.service_host]
            check.error(f"agents[{index}]", f"agent {agent.service_host} is defined twice "
                        f"(lines {agents[first].line} and {agent.line}); service hosts must be unique")
            continue
        seen[agent.service_host] = len(agents)
        agents.append(agent)
    check.finish()
    return Config(relay=relay, auth=auth, fleet=fleet, agents=tuple(agents), source=source, lines=lines)


def load_config(path) -> Config:
    """Read and parse the config file at ``path``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigErrors([ConfigError(f"the file is {size} bytes, over the {MAX_CONFIG_BYTES}-byte limit; "
                                            "is it the right file?", source=str(path))])
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigErrors([ConfigError(f"cannot read the config file ({exc.strerror}); check the path "
                                        "given to --config", source=str(path))]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigErrors([ConfigError("the file is not UTF-8 text", line=line, source=str(path))]) from None
    return parse_config(text, source=str(path))


def apply_overrides(config: Config, *, host: str | None = None, port: int | None = None,
                    workers: int | None = None, admin_port: int | None = None) -> Config:
    """Command-line flags win over the file; they are validated the same way.

    ``port`` 0 picks a free port; ``admin_port`` 0 turns the admin listener off.
    """
    errors = []
    if port is not None and not 0 <= port <= 65535:
        errors.append(ConfigError(f"--port must be from 0 to 65535, got {port}", key="relay.port"))
    if admin_port is not None and not 0 <= admin_port <= 65535:
        errors.append(ConfigError(f"--admin-port must be from 0 (off) to 65535, got {admin_port}",
                                  key="relay.admin_port"))
    if workers is not None and not 1 <= workers <= 64:
        errors.append(ConfigError(f"--workers must be from 1 to 64, got {workers}", key="relay.workers"))
    if host is not None and (not host or _SPACE_OR_CONTROL.search(host) or len(host) > 255):
        errors.append(ConfigError(f"--host must be an address or name like 127.0.0.1, got {_show(host)}",
                                  key="relay.host"))
    if errors:
        raise ConfigErrors(errors)
    changes = any(v is not None for v in (host, port, workers, admin_port))
    relay = config.relay
    if changes:
        relay = dataclasses.replace(
            relay, host=relay.host if host is None else host, port=relay.port if port is None else port,
            workers=relay.workers if workers is None else workers,
            admin_port=relay.admin_port if admin_port is None else admin_port)
    if (port is not None or admin_port is not None) and relay.admin_port and relay.admin_port == relay.port:
        flag = "--admin-port" if admin_port is not None else "--port"
        raise ConfigErrors([ConfigError(
            f"{flag} {relay.port if flag == '--port' else relay.admin_port}: the public port and the "
            "admin port must differ; choose another, or --admin-port 0 to turn the admin port off",
            key="relay.admin_port" if flag == "--admin-port" else "relay.port")])
    return dataclasses.replace(config, relay=relay) if changes else config


def demo_config(echo_upstream: str) -> Config:
    """The embedded default: agent ``echo.demo`` relayed to the built-in echo bot."""
    return Config(agents=(AgentConfig("echo", "demo", (echo_upstream,)),), source="<demo>")


def auth_secret_from_env(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """``WSRELAY_AUTH_SECRET`` replaces the file's signing keys."""
    secret = environ.get("WSRELAY_AUTH_SECRET")
    if not secret:
        return config
    try:
        secret.encode("utf-8")
    except UnicodeEncodeError:
        # Undecodable bytes in the environment arrive as surrogates; HMAC needs real text.
        raise ConfigError("WSRELAY_AUTH_SECRET is not valid UTF-8: set it to printable text "
                          "(e.g. the output of 'openssl rand -hex 32')",
                          key="WSRELAY_AUTH_SECRET") from None
    auth = dataclasses.replace(config.auth, keys={"env": secret}, active_key="env")
    return dataclasses.replace(config, auth=auth)


def fleet_redis_url_from_env(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """``WSRELAY_FLEET_REDIS_URL`` replaces ``[fleet] redis_url``, so a password need not be written
    into a config file (in Kubernetes: an env var from a Secret, the file in a ConfigMap)."""
    url = environ.get("WSRELAY_FLEET_REDIS_URL")
    if not url:
        return config
    check = _Checker({}, None)
    _check_redis_url(check, url, key="fleet.redis_url")     # the file's rule; its messages would show the URL
    if check.errors:
        raise ConfigError("WSRELAY_FLEET_REDIS_URL must be a URL like 'redis://:password@redis:6379/0' or "
                          "'rediss://user:password@redis.example.com:6380/0'", key="WSRELAY_FLEET_REDIS_URL")
    return dataclasses.replace(config, fleet=dataclasses.replace(config.fleet, redis_url=url))


def admin_token_from_env(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """``WSRELAY_ADMIN_TOKEN`` replaces ``[relay] admin_token`` (in Kubernetes: from a Secret), with
    the file's rule."""
    token = environ.get("WSRELAY_ADMIN_TOKEN")
    if not token:
        return config
    check = _Checker({}, None)
    if _check_admin_token(check, {"admin_token": token}, "relay") is None:
        raise ConfigError("WSRELAY_ADMIN_TOKEN must be 16 to 512 printable characters without spaces; generate "
                          "one with 'python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"'",
                          key="WSRELAY_ADMIN_TOKEN")
    return dataclasses.replace(config, relay=dataclasses.replace(config.relay, admin_token=token))


def secrets_from_env(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """The environment's secrets over the file's: WSRELAY_AUTH_SECRET, WSRELAY_FLEET_REDIS_URL,
    WSRELAY_ADMIN_TOKEN."""
    config = fleet_redis_url_from_env(auth_secret_from_env(config, environ), environ)
    return admin_token_from_env(config, environ)


def require_signing_key(config: Config) -> None:
    """A relay with token agents must have a key; say which agents need one."""
    needing = [a.service_host for a in config.agents if a.websocket_auth == "token"]
    if needing and not (config.auth.keys and config.auth.active_key in config.auth.keys):
        key = _first_token_agent_key(config)
        raise ConfigError(f"agents {', '.join(needing)} use websocket_auth = \"token\" but there is no "
                          "signing key: set [auth] secret (or keys and active_key) or WSRELAY_AUTH_SECRET",
                          key=key, line=config.lines.get(key), source=config.source)


def _first_token_agent_key(config: Config) -> str:
    """The ``websocket_auth`` key of the first token agent: what the user wrote to need a key."""
    index = next(i for i, a in enumerate(config.agents) if a.websocket_auth == "token")
    return f"agents[{index}].websocket_auth"


def require_shared_nonces(config: Config, relay: RelayConfig | None = None) -> None:
    """Token agents under ``workers > 1`` need a nonce store the workers share.

    Each worker process would otherwise remember only its own nonces, and a replayed
    token landing on another worker (SO_REUSEPORT spreads connections) would pass.
    ``relay`` is the running relay's settings when checking a reload.
    """
    relay = relay or config.relay
    needing = [a.service_host for a in config.agents if a.websocket_auth == "token"]
    if needing and relay.workers > 1 and relay.nonce_store != "redis" and not config.fleet.enabled:
        # Point at what the user wrote: workers (file or --workers), else the token agent;
        # a config built in code has no lines, so name the key to set.
        if "relay.workers" in config.lines:
            key = "relay.workers"
        elif config.lines:
            key = _first_token_agent_key(config)
        else:
            key = "relay.nonce_store"
        raise ConfigError(
            f"agents {', '.join(needing)} use websocket_auth = \"token\" with {relay.workers} workers, "
            "but each worker would remember only its own nonces, so a token could be used once per "
            "worker: set relay.nonce_store = \"redis\" and relay.redis_url, or run one worker",
            key=key, line=config.lines.get(key), source=config.source)


def nonce_store_of(config: Config) -> tuple[str, str | None]:
    """(kind, redis_url) of the nonce store: a fleet shares its nonces in the fleet's Redis.

    ``relay.nonce_store = "redis"`` with its own ``relay.redis_url`` keeps working, in a
    fleet too (nonces may live in another Redis than the fleet's leases and agents).
    """
    if config.relay.nonce_store == "redis":
        return "redis", config.relay.redis_url or config.fleet.redis_url
    if config.fleet.enabled:
        return "redis", config.fleet.redis_url
    return "memory", None


# -- agents kept outside the file (the fleet's registry in Redis) ------------------------

def agent_to_dict(agent: AgentConfig) -> dict:
    """An agent as the table it was written as (what ``wsrelay agents apply`` stores)."""
    table: dict = {"name": agent.name, "organization": agent.organization, "upstreams": list(agent.upstreams),
                   "websocket_auth": agent.websocket_auth, "public_keys": list(agent.public_keys),
                   "max_session_seconds": agent.max_session_seconds}
    if agent.max_sessions is not None:
        table["max_sessions"] = agent.max_sessions
    if agent.idle_timeout is not None:
        table["idle_timeout"] = agent.idle_timeout
    if agent.regions:
        table["regions"] = list(agent.regions)
    if agent.twilio_auth_token is not None:
        table["twilio_auth_token"] = agent.twilio_auth_token
    return table


def agent_from_dict(table: object, source: str) -> AgentConfig:
    """An agent from a stored table, checked by the rules of the file (ConfigErrors if not)."""
    check = _Checker({}, source)
    agent = _agent(check, 0, table)
    check.finish()
    assert agent is not None            # _agent returns None only after an error
    return agent
