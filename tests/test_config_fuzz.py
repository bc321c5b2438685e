"""Hostile config files: ``parse_config`` returns a Config or raises ConfigErrors, nothing else,
and never takes long, whatever the text (hypothesis).

Three sources of text: arbitrary Unicode; TOML-looking token soup (brackets, quotes, keys,
escapes) that drives the key locator through broken strings and tables; and real TOML
documents, serialised here from generated structures, with hostile values in every key
the relay knows. A document that parses is also checked for consistency: a Config is only
ever returned when its values agree with each other.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import re
import time
import tomllib
from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsrelay.config import AgentConfig, Config, RelayConfig, WebhooksConfig, locate_keys, parse_config
from wsrelay.errors import ConfigError, ConfigErrors

SECONDS_PER_FILE = 2.0
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse_within_limit(text: str) -> Config | ConfigErrors:
    """parse_config's result (or its ConfigErrors), asserting the time it took."""
    started = time.perf_counter()
    try:
        result: Config | ConfigErrors = parse_config(text, "fuzz.toml")
    except ConfigErrors as exc:
        result = exc
    elapsed = time.perf_counter() - started
    assert elapsed < SECONDS_PER_FILE, f"{elapsed:.2f} s for {len(text)} characters: {text[:200]!r}"
    return result


def _assert_clean(result: Config | ConfigErrors, text: str) -> None:
    """Every error has a key and a line in the file (or says why not); a Config is consistent."""
    if isinstance(result, ConfigErrors):
        lines = text.count("\n") + 1
        for error in result.errors:
            assert isinstance(error, ConfigError) and error.message
            assert error.line is None or 1 <= error.line <= lines, error.describe()
            if error.key is not None:       # every key-specific error points at a line
                assert error.line is not None, error.describe()
            assert "\n" not in error.describe() or "\n" in (error.key or ""), error.describe()
        return
    relay = result.relay
    assert relay.write_buffer_low < relay.write_buffer_high
    assert not relay.keepalive_interval or relay.keepalive_timeout <= relay.keepalive_interval
    assert not relay.admin_port or relay.admin_port != relay.port
    assert bool(relay.tls_cert) == bool(relay.tls_key)
    assert relay.nonce_store == "memory" or relay.redis_url
    for url in [relay.public_url, relay.redis_url] + [u for a in result.agents for u in a.upstreams]:
        if url is not None:
            parts = urlsplit(url)
            assert parts.hostname and (parts.port is None or 1 <= parts.port <= 65535)
            assert not re.search(r"[\x00-\x20\x7f]", url)
    for agent in result.agents:
        assert re.fullmatch(r"[a-z0-9-]{1,63}", agent.name) and re.fullmatch(r"[a-z0-9-]{1,63}", agent.organization)
    assert len({a.service_host for a in result.agents}) == len(result.agents)


# -- arbitrary text and token soup --------------------------------------------------------

TOKENS = ["[", "]", "[[", "]]", "{", "}", "=", ".", ",", "#", "\n", "\r\n", " ", "\t", '"', "'", '"""', "'''",
          "\\", "\\u00e9", "\\U0001F600", "\\", "relay", "auth", "agents", "keys", "port", "admin_port",
          "upstreams", "public_url", "cors_origins", "name", "1", "-", "0x1F", "1e400", "nan", "inf", "true",
          "1979-05-27", "T07:32:00Z", '"ws://h"', '"http://["', "é", "\x00", "\x7f"]

token_soup = st.lists(st.sampled_from(TOKENS), max_size=80).map("".join)


@FUZZ
@given(st.text(max_size=400) | token_soup)
def test_arbitrary_text_is_a_config_or_config_errors(text):
    _assert_clean(_parse_within_limit(text), text)
    assert isinstance(locate_keys(text), dict)        # the locator ends on any text, too


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token_soup.filter(bool), st.integers(2_000, 60_000))
def test_large_repeated_text_stays_within_the_limit(chunk, times):
    text = (chunk * times)[:1024 * 1024]          # up to the 1 MiB limit
    _assert_clean(_parse_within_limit(text), text)


# -- real TOML documents with hostile values in every known key ----------------------------

def _string(value: str) -> str:
    """A TOML basic string for ``value`` (control characters and DEL escaped)."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or char == "\x7f":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _string(key)


def _value(value, style: int | None) -> str:
    """TOML for ``value``; ``style`` varies the spelling (literal and multi-line strings, line
    breaks); None writes every value on one line with basic strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, str) and style is None:
        return _string(value)
    if isinstance(value, str):
        plain = not re.search(r"[\x00-\x1f\x7f']", value)
        if style % 4 == 1 and plain:
            return f"'{value}'"
        if style % 4 == 2 and plain and not value.endswith("'"):
            return f"'''{value}'''"
        if style % 4 == 3:
            return '"""' + _string(value)[1:-1] + '"""'
        return _string(value)
    if isinstance(value, list):
        sep = ",\n  " if style is not None and style % 3 == 1 else ", "
        return "[" + sep.join(_value(v, _next(style, i)) for i, v in enumerate(value)) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v, _next(style, 1))}" for k, v in value.items()) + " }"
    raise AssertionError(type(value))


def _next(style: int | None, step: int) -> int | None:
    return None if style is None else style + step


def _document(tables: dict, agents: list[dict], style: int | None) -> str:
    """A TOML file: [relay], [auth] and [[agents]] (or an inline agents array), with comments."""
    lines = ["# generated"]
    for name, table in tables.items():
        lines += [f"[{name}]  # table"] + [f"{_key(k)} = {_value(v, _next(style, i))}"
                                           for i, (k, v) in enumerate(table.items())]
        lines.append("")
    if style is not None and style % 5 == 4 and agents:
        lines.append("agents = " + _value(agents, style))
    else:
        for agent in agents:
            lines += ["[[agents]]"] + [f"{_key(k)} = {_value(v, _next(style, i))}"
                                       for i, (k, v) in enumerate(agent.items())]
    return "\n".join(lines) + "\n"


scalars = (st.integers(-2**70, 2**70) | st.floats() | st.booleans() | st.text(max_size=30)
           | st.dates() | st.datetimes().map(lambda d: d.replace(microsecond=0)))
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ports = st.integers(-5, 70_000) | st.sampled_from([0, 1, 8765, 9100, 65535, 65536])
seconds = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10, 100_000)
hosts = st.sampled_from(["h", "127.0.0.1", "[::1]", "[::1", "[", "]", "a b", "", "ü.example", "h\n", "h:1:2"])
urls = st.builds(lambda scheme, host, port, rest: f"{scheme}{host}{port}{rest}",
                 st.sampled_from(["ws://", "wss://", "http://", "https://", "redis://", "WS://", "", "ws:/", "//"]),
                 hosts | st.text(max_size=8),
                 st.sampled_from(["", ":1", ":0", ":99999", ":x", ":", ":-1", ":65535"]),
                 st.sampled_from(["", "/", "/ws", "?a=1", "#f", "/a b", "/\x00", "@x"]) | st.text(max_size=6))
origins = urls | st.sampled_from(["*", "null", "https://a.example", "https://a.example/", "https://A.example"])

RELAY_VALUES = {
    "host": hosts | st.text(max_size=20), "port": ports, "admin_port": ports, "drain_seconds": seconds,
    "public_url": urls, "workers": st.integers(-1, 70), "handshake_timeout": seconds,
    "max_request_head_bytes": st.integers(0, 20_000), "max_frame_size": st.integers(-1, 2**31),
    "upstream_connect_timeout": seconds, "close_timeout": seconds, "stall_timeout": seconds,
    "write_buffer_high": st.integers(0, 2**31), "write_buffer_low": st.integers(0, 2**31),
    "read_buffer_size": st.integers(0, 2**25), "keepalive_interval": seconds, "keepalive_timeout": seconds,
    "tls_cert": st.text(max_size=10), "tls_key": st.text(max_size=10), "upstream_ca_file": st.text(max_size=10),
    "upstream_tls_verify": st.booleans() | anything, "log_format": st.sampled_from(["auto", "json", "text", "xml"]),
    "nonce_store": st.sampled_from(["memory", "redis", "etcd"]), "redis_url": urls,
    "cors_origins": st.lists(origins, max_size=4),
    "provider_start_timeout": seconds,
    "region": st.sampled_from(["us-west", "eu-central", "US", "a b", "", "-x"]) | st.text(max_size=8),
    "dns_refresh_seconds": seconds,
    "dns_servers": st.lists(hosts | st.sampled_from(["127.0.0.1:5353", "[::1]:53", "1.2.3.4:0", "x:y"]), max_size=3),
    "gap_threshold_ms": seconds,
    "admin_token": st.text(max_size=40) | st.sampled_from(["0123456789abcdef0123", "short"]) | anything,
    "admin_host": hosts | st.text(max_size=10),
    "session_api_timeout": seconds, "max_session_api_body": st.integers(-1, 2**31),
    "max_body_bytes": st.integers(-1, 2**31),
}
AUTH_VALUES = {
    "secret": st.text(max_size=10),
    "keys": st.dictionaries(st.text(max_size=6), st.text(max_size=6) | anything, max_size=3),
    "active_key": st.text(max_size=6) | anything,
    "token_ttl": st.integers(-5, 100_000), "clock_skew": st.integers(-5, 400),
}
AGENT_VALUES = {
    "name": st.sampled_from(["a", "b", "echo", "A", "a.b", "a\n", "", "-"]) | st.text(max_size=6),
    "organization": st.sampled_from(["o", "demo", "O", ""]) | st.text(max_size=6),
    "upstreams": st.lists(urls, max_size=3), "websocket_auth": st.sampled_from(["none", "token", "jwt"]),
    "public_keys": st.lists(st.text(max_size=5), max_size=3), "max_sessions": st.integers(-2, 2**40),
    "max_session_seconds": seconds, "idle_timeout": seconds,
    "regions": st.lists(st.sampled_from(["us-west", "eu-central", "", "A"]) | st.text(max_size=5), max_size=3),
    "twilio_auth_token": st.text(max_size=12) | anything,
    "session_api": st.booleans() | anything,
    "resume_seconds": seconds, "resume_buffer_bytes": st.integers(-1, 2**31) | anything,
}


WEBHOOKS_VALUES = {
    "url": urls, "secret": st.sampled_from(["whsec_" + "A" * 32, "whsec_", "whsec_!!", "abc", ""]) | st.text(max_size=8),
    "events": st.lists(st.sampled_from(["session.started", "session.ended", "x", ""]), max_size=3),
    "spool": st.sampled_from(["", "a.sqlite3", "/\x00"]) | st.text(max_size=8),
    "max_pending": st.integers(-2, 2**40), "timeout": seconds,
}


def _table(values: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A subset of the known keys with likely values, hostile any-type values, and unknown keys."""
    known = st.fixed_dictionaries({}, optional={k: v | anything for k, v in values.items()})
    extra = st.dictionaries(st.sampled_from(["prot", "bogus", "Port", "a.b", "é"]), anything, max_size=2)
    return st.tuples(known, extra).map(lambda kv: {**kv[0], **kv[1]})


documents = st.builds(
    lambda relay, auth, webhooks, agents, style, drop: _document(
        {k: v for k, v in (("relay", relay), ("auth", auth), ("webhooks", webhooks)) if k not in drop}, agents, style),
    _table(RELAY_VALUES), _table(AUTH_VALUES), _table(WEBHOOKS_VALUES), st.lists(_table(AGENT_VALUES), max_size=3),
    st.integers(0, 59), st.sets(st.sampled_from(["relay", "auth", "webhooks"])))


@FUZZ
@given(documents)
def test_toml_documents_with_hostile_values(text):
    data = tomllib.loads(text)                       # the generator writes valid TOML ...
    assert isinstance(data, dict)
    result = _parse_within_limit(text)               # ... and the relay refuses or accepts it cleanly
    _assert_clean(result, text)


@FUZZ
@given(st.fixed_dictionaries({}, optional={k: v for k, v in RELAY_VALUES.items()}), st.integers(0, 59))
def test_relay_tables_of_plausible_values_are_consistent_when_accepted(relay, style):
    text = _document({"relay": relay}, [{"name": "a", "organization": "b", "upstreams": ["ws://h"]}], style)
    result = _parse_within_limit(text)
    _assert_clean(result, text)
    if isinstance(result, Config):                   # what was written is what is used
        for key, value in relay.items():
            got = getattr(result.relay, key)
            expected = tuple(value) if isinstance(value, list) else value
            assert got == expected or (isinstance(got, float) and got == float(value)), key


_LINE_KEY = re.compile(r'([A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*") = ')


def _serialised_keys(text: str) -> dict[str, int]:
    """For a document written by ``_document`` with style None: each key's line."""
    where, table, counts = {}, "", {}
    for number, line in enumerate(text.split("\n"), 1):      # not splitlines: "\x85" is no TOML newline
        if line.startswith("[[agents]]"):
            counts["agents"] = counts.get("agents", -1) + 1
            table = f"agents[{counts['agents']}]"
            where[table] = number
        elif line.startswith("["):
            table = line[1:line.index("]")]
            where[table] = number
        elif _LINE_KEY.match(line):
            key = _LINE_KEY.match(line).group(1)
            key = json.loads(key) if key.startswith('"') else key
            where[f"{table}.{key}"] = number
    return where


@FUZZ
@given(_table(RELAY_VALUES), st.lists(_table(AGENT_VALUES), max_size=3))
def test_locator_finds_every_written_key_on_its_line(relay, agents):
    text = _document({"relay": relay}, agents, style=None)
    where = locate_keys(text)
    for key, line in _serialised_keys(text).items():
        assert where.get(key) == line, (key, text)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_table(AGENT_VALUES), min_size=1, max_size=2), st.integers(0, 59), st.integers(500, 20_000))
def test_large_valid_files_of_hostile_agents_stay_within_the_limit(agents, style, times):
    chunk = _document({}, agents, style % 5 if style % 5 != 4 else 0).removeprefix("# generated\n")
    text = "# many agents\n" + chunk * max(1, min(times, 1024 * 1024 // len(chunk) - 1))
    _assert_clean(_parse_within_limit(text), text)


def test_every_known_key_is_fuzzed():
    assert set(RELAY_VALUES) == {f.name for f in dataclasses.fields(RelayConfig)}
    assert set(AGENT_VALUES) == {f.name for f in dataclasses.fields(AgentConfig)} - {"line"}
    assert set(WEBHOOKS_VALUES) == {f.name for f in dataclasses.fields(WebhooksConfig)}
