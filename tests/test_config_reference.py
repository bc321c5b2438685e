"""The declarations of wsrelay.config.schema: what they say is what the file accepts, what
``wsrelay check`` says, and what docs/configuration.md says (generated, so it cannot drift)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrelay.config import parse_config
from wsrelay.config.reference import render
from wsrelay.config.schema import TABLES, Key, keys_of
from wsrelay.errors import ConfigErrors

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
AGENT = '[[agents]]\nname = "a"\norganization = "o"\nupstreams = ["ws://h/"]\n'
CLASSES = dict(TABLES)
REQUIRED = {"agents": {"name": "a", "organization": "o", "upstreams": ["ws://h/"]}}
DECLARED = [(table, key) for table, cls in TABLES for key in keys_of(cls)]
BOUNDED = [(table, key) for table, key in DECLARED if key.lo is not None]


def _document(table: str, key: str, value: str) -> tuple[str, str, int]:
    """(text, dotted key, line) of a file that sets ``key = value`` in ``table``."""
    if table == "agents":
        return f"{AGENT}{key} = {value}\n", f"agents[0].{key}", AGENT.count("\n") + 1
    return f"[{table}]\n{key} = {value}\n", f"{table}.{key}", 2


def _msgspec_accepts(table: str, key: str, value: object) -> bool:
    """msgspec's own reading of the declarations (they are real msgspec constraints)."""
    try:
        msgspec.convert({**REQUIRED.get(table, {}), key: value}, CLASSES[table])
    except msgspec.ValidationError:
        return False
    return True


def _errors(text: str) -> list:
    try:
        parse_config(text, "relay.toml")
    except ConfigErrors as exc:
        return exc.errors
    return []


def _toml(value: float) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _outside(key: Key) -> st.SearchStrategy:
    """Values just and far outside ``key``'s bounds."""
    assert key.lo is not None and key.hi is not None
    if key.kind == "integer":
        return st.integers(-(2 ** 62), int(key.lo) - 1) | st.integers(int(key.hi) + 1, 2 ** 62)
    below = st.floats(max_value=key.lo, exclude_max=not key.lo_open, allow_nan=False)
    return below | st.floats(min_value=key.hi, exclude_min=True, allow_nan=False) | st.just(math.nan)


def _inside(key: Key) -> st.SearchStrategy:
    assert key.lo is not None and key.hi is not None
    if key.kind == "integer":
        return st.integers(int(key.lo), int(key.hi))
    return st.floats(min_value=key.lo, max_value=key.hi, exclude_min=key.lo_open)


def test_the_committed_reference_is_what_the_declarations_give():
    assert REFERENCE.read_text(encoding="utf-8") == render(), \
        "docs/configuration.md is out of date: run python -m wsrelay.config.reference docs/configuration.md"


def test_the_generator_writes_and_checks_the_reference(tmp_path):
    target = tmp_path / "configuration.md"
    run = [sys.executable, "-m", "wsrelay.config.reference"]
    assert subprocess.run([*run, "--check", str(target)], capture_output=True).returncode == 1
    assert subprocess.run([*run, str(target)], capture_output=True).returncode == 0
    assert target.read_text(encoding="utf-8") == render()
    assert subprocess.run([*run, "--check", str(target)], capture_output=True).returncode == 0


@pytest.mark.parametrize("table,key", DECLARED, ids=lambda x: getattr(x, "name", x))
def test_every_key_is_documented_in_one_row(table, key):
    assert key.meta.description, f"{table}.{key.name} has no description"
    assert render().count(f"| `{key.name}` |") >= 1


def test_the_reference_has_a_section_and_a_table_per_table():
    text = render()
    assert text.startswith("# Configuration\n")
    for heading in ("## `[relay]`", "## `[auth]`", "## `[fleet]`", "## `[webhooks]`", "## `[[agents]]`"):
        assert heading in text
    assert text.count("| key | type | default | bounds | description |") == 5
    assert '| `events` | list of strings | `["session.started", "session.ended"]` |' in text
    assert "| `port` | integer | `8765` | from 1 to 65535 |" in text


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(BOUNDED).flatmap(lambda tk: st.tuples(st.just(tk), _outside(tk[1]))))
def test_every_bounded_key_refuses_values_outside_its_bounds_at_its_key_and_line(case):
    (table, key), value = case
    text, dotted, line = _document(table, key.name, _toml(value))
    errors = [e for e in _errors(text) if e.key == dotted]
    assert len(errors) == 1, (text, _errors(text))
    assert errors[0].line == line
    assert f"{dotted} must be {key.want}, got" in str(errors[0])
    assert not _msgspec_accepts(table, key.name, value)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(BOUNDED).flatmap(lambda tk: st.tuples(st.just(tk), _inside(tk[1]))))
def test_every_bounded_key_accepts_values_within_its_bounds(case):
    (table, key), value = case
    text, dotted, _ = _document(table, key.name, _toml(value))
    assert not any(key.want in str(e) for e in _errors(text)), text
    assert _msgspec_accepts(table, key.name, value)


@pytest.mark.parametrize("table,key", [(t, k) for t, k in DECLARED if k.kind in ("integer", "number", "boolean")],
                         ids=lambda x: getattr(x, "name", x))
def test_a_string_where_a_scalar_is_declared_names_what_is_wanted(table, key):
    text, dotted, line = _document(table, key.name, '"ten"')
    [error] = [e for e in _errors(text) if e.key == dotted]
    assert (error.line, str(error)) == (line, f"relay.toml:{line}, key '{dotted}': {dotted} must be {key.want}, "
                                              "got 'ten'")


@pytest.mark.parametrize("table,key", DECLARED, ids=lambda x: getattr(x, "name", x))
def test_a_misspelt_key_is_answered_with_the_declared_one(table, key):
    text, dotted, line = _document(table, key.name + "x", "1")
    [error] = [e for e in _errors(text) if e.key == dotted]
    assert error.line == line
    assert f"did you mean '{key.name}'?" in str(error)
