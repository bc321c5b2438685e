"""Where each key of a config file stands: tomllib gives values, not lines.

A module of its own because it is a small lexer with its own guarantees (linear time,
bounded depth) and its own tests; the validator only asks it for ``{dotted key: line}``.

One forward pass over the text, position-aware, never backtracking: every step either
consumes characters with a regex that cannot backtrack (character classes, possessive
repeats) or a str.find, so the time is linear in the file whatever its shape. It only
maps where things start; tomllib decides whether the text is valid TOML. On text that
is not, the pass still ends (every step consumes at least one character), and the
lines it found are simply not used.
"""

from __future__ import annotations

import re

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


class Locator:
    """The single pass behind ``locate_keys``; ``where`` is its answer, ``too_deep`` why it stopped."""

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
    return Locator(text).run()
