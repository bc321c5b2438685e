"""Configuration: the TOML file of SPEC §4 as typed, validated, immutable objects.

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
    max_request_head_bytes: int = 8192            # 1024 .. 16384 (picows' own head limit is 16 KiB)
    max_frame_size: int = 16 * 1024 * 1024        # larger frames close the session with 1009
    upstream_connect_timeout: float = 5.0         # TCP connect + the bot's 101, per instance
    close_timeout: float = 5.0                    # how long a forwarded close may wait for its reply
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
    nonce_store: str = "memory"                   # "memory" (later: "redis")
    redis_url: str | None = None


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
    websocket_auth: str = "none"                  # "none" | "token"
    public_keys: tuple[str, ...] = ()
    max_sessions: int | None = None               # None = unlimited
    max_session_seconds: float = 7200.0
    idle_timeout: float | None = None             # None = no idle limit
    line: int | None = None                       # where the entry starts in the file

    @property
    def service_host(self) -> str:
        return f"{self.name}.{self.organization}"


@dataclass(frozen=True)
class Config:
    relay: RelayConfig = field(default_factory=RelayConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    agents: tuple[AgentConfig, ...] = ()
    source: str | None = None                     # file path, for messages


# -- locating keys: tomllib gives values, not lines ---------------------------------------

_HEADER = re.compile(r'^\s*(\[\[?)\s*([A-Za-z0-9_.\-"\' ]+?)\s*(\]\]?)\s*(#.*)?$')
_ASSIGN = re.compile(r'^\s*("[^"]*"|\'[^\']*\'|[A-Za-z0-9_\-]+)\s*=')
_INLINE_KEY = re.compile(r'("[^"]*"|\'[^\']*\'|[A-Za-z0-9_\-]+)\s*=')


def locate_keys(text: str) -> dict[str, int]:
    """Map dotted keys (``relay.port``, ``agents[1].name``, ``auth.keys.k2``) to 1-based lines.

    A table header maps too (``relay``, ``agents[0]``). Sans-I/O, line based: good enough to
    point at the line of every key a config file states, which is all error messages need.
    """
    where: dict[str, int] = {}
    table = ""
    arrays: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header and not _ASSIGN.match(line):
            name = header.group(2).replace('"', "").replace("'", "").strip()
            if header.group(1) == "[[":
                index = arrays.get(name, -1) + 1
                arrays[name] = index
                table = f"{name}[{index}]"
            else:
                table = name
            where.setdefault(table, number)
            continue
        assign = _ASSIGN.match(line)
        if assign:
            key = assign.group(1).strip("\"'")
            dotted = f"{table}.{key}" if table else key
            where.setdefault(dotted, number)
            rest = line[assign.end():]
            if rest.strip().startswith("{"):
                for inner in _INLINE_KEY.finditer(rest):
                    where.setdefault(f"{dotted}.{inner.group(1).strip(chr(34) + chr(39))}", number)
    return where


# -- validation -------------------------------------------------------------------------

MAX_CONFIG_BYTES = 1024 * 1024
NAME = re.compile(r"^[a-z0-9-]{1,63}$")
KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class _Checker:
    """Collects every error of one file, each with its dotted key and line."""

    def __init__(self, lines: dict[str, int], source: str | None) -> None:
        self.lines = lines
        self.source = source
        self.errors: list[ConfigError] = []

    def line_of(self, key: str) -> int | None:
        probe = key
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            if probe.endswith("]") and "[" in probe and not probe.startswith("agents[") or \
                    re.search(r"\.[^.]*\[\d+\]$", probe):
                probe = probe[:probe.rindex("[")]          # upstreams[1] -> upstreams
            else:
                probe = probe.rpartition(".")[0] if "." in probe else ""
        return None

    def error(self, key: str, message: str) -> None:
        self.errors.append(ConfigError(message, key=key, line=self.line_of(key), source=self.source))

    def unknown_keys(self, table: Mapping, allowed: list[str], prefix: str, label: str) -> None:
        for key in table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; allowed: {', '.join(allowed)}"
                self.error(f"{prefix}.{key}", f"unknown key '{key}' in {label}{suggestion}")

    def integer(self, table, key, prefix, default, lo, hi):
        value = table.get(key, default)
        if value is default:
            return value
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            self.error(f"{prefix}.{key}", f"{prefix}.{key} must be an integer from {lo} to {hi}, got {value!r}")
            return default
        return value

    def number(self, table, key, prefix, default, lo, hi, *, lo_open=False):
        value = table.get(key, default)
        if value is default:
            return value
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            low = f"above {lo:g}" if lo_open else f"from {lo:g}"
            self.error(f"{prefix}.{key}", f"{prefix}.{key} must be a number {low} to {hi:g} (seconds), got {value!r}")
            return default
        return float(value)

    def string(self, table, key, prefix, default, choices=None):
        value = table.get(key, default)
        if value is default:
            return value
        if not isinstance(value, str) or (choices is not None and value not in choices):
            want = f"one of {', '.join(repr(c) for c in choices)}" if choices else "a string"
            self.error(f"{prefix}.{key}", f"{prefix}.{key} must be {want}, got {value!r}")
            return default
        return value

    def boolean(self, table, key, prefix, default):
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.error(f"{prefix}.{key}", f"{prefix}.{key} must be true or false, got {value!r}")
            return default
        return value


def _check_ws_url(check: _Checker, key: str, value) -> str | None:
    if not isinstance(value, str):
        check.error(key, f"{key} must be a string like 'ws://10.0.0.5:7860/ws', got {value!r}")
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        check.error(key, f"{key}: {value!r} is not a valid URL (bad port?)")
        return None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        check.error(key, f"{key}: {value!r} must be a ws:// or wss:// URL with a host")
    elif parts.fragment or parts.username or parts.password:
        check.error(key, f"{key}: {value!r} must not contain a fragment or user:password@")
    elif port is not None and not 1 <= port <= 65535:
        check.error(key, f"{key}: port must be from 1 to 65535")
    else:
        return value
    return None


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
        "max_request_head_bytes": check.integer(table, "max_request_head_bytes", p, d.max_request_head_bytes, 1024, 16384),
        "max_frame_size": check.integer(table, "max_frame_size", p, d.max_frame_size, 1, 1 << 30),
        "upstream_connect_timeout": check.number(table, "upstream_connect_timeout", p, d.upstream_connect_timeout, 0, 3600, lo_open=True),
        "close_timeout": check.number(table, "close_timeout", p, d.close_timeout, 0, 3600, lo_open=True),
        "write_buffer_high": check.integer(table, "write_buffer_high", p, d.write_buffer_high, 1024, 1 << 30),
        "write_buffer_low": check.integer(table, "write_buffer_low", p, d.write_buffer_low, 1024, 1 << 30),
        "read_buffer_size": check.integer(table, "read_buffer_size", p, d.read_buffer_size, 2048, 1 << 24),
        "keepalive_interval": check.number(table, "keepalive_interval", p, d.keepalive_interval, 0, 86400),
        "keepalive_timeout": check.number(table, "keepalive_timeout", p, d.keepalive_timeout, 0, 3600, lo_open=True),
        "tls_cert": check.string(table, "tls_cert", p, d.tls_cert),
        "tls_key": check.string(table, "tls_key", p, d.tls_key),
        "upstream_ca_file": check.string(table, "upstream_ca_file", p, d.upstream_ca_file),
        "upstream_tls_verify": check.boolean(table, "upstream_tls_verify", p, d.upstream_tls_verify),
        "log_format": check.string(table, "log_format", p, d.log_format, ("auto", "json", "text")),
        "nonce_store": check.string(table, "nonce_store", p, d.nonce_store, ("memory", "redis")),
        "redis_url": check.string(table, "redis_url", p, d.redis_url),
    }
    if "admin_port" in table and values["admin_port"] and values["admin_port"] == values["port"]:
        check.error("relay.admin_port", "relay.admin_port must differ from relay.port (the admin endpoints are not public)")
    if values["write_buffer_low"] >= values["write_buffer_high"]:
        check.error("relay.write_buffer_low", "relay.write_buffer_low must be below relay.write_buffer_high")
    if values["keepalive_interval"] and values["keepalive_timeout"] > values["keepalive_interval"]:
        check.error("relay.keepalive_timeout", "relay.keepalive_timeout must not exceed relay.keepalive_interval")
    if bool(values["tls_cert"]) != bool(values["tls_key"]):
        check.error("relay.tls_cert" if not values["tls_cert"] else "relay.tls_key",
                    "set both relay.tls_cert and relay.tls_key to serve wss://, or neither")
    if values["nonce_store"] == "redis":
        url = values["redis_url"]
        if not url or not url.startswith(("redis://", "rediss://")):
            check.error("relay.redis_url", "relay.nonce_store = 'redis' needs relay.redis_url = 'redis://host:6379/0'")
    if values["public_url"] is not None:
        parts = urlsplit(values["public_url"])
        if parts.scheme not in ("ws", "wss", "http", "https") or not parts.netloc:
            check.error("relay.public_url", f"relay.public_url must look like 'wss://relay.example.com', got {values['public_url']!r}")
    return RelayConfig(**values)


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
                if not KEY_ID.match(kid):
                    check.error(f"auth.keys.{kid}", f"key id {kid!r} must be 1-32 characters of A-Z, a-z, 0-9, '_' and '-'")
                elif not isinstance(secret, str) or not secret:
                    check.error(f"auth.keys.{kid}", f"auth.keys.{kid} must be a non-empty string")
                else:
                    keys[kid] = secret
            active = table.get("active_key")
            if active is None:
                if len(raw) == 1:
                    active = next(iter(raw))
                else:
                    check.error("auth.active_key", "with several auth.keys, set auth.active_key to the id new tokens use")
            elif not isinstance(active, str) or active not in raw:
                check.error("auth.active_key", f"auth.active_key must name one of auth.keys ({', '.join(raw)}), got {active!r}")
                active = None
    if "active_key" in table and "keys" not in table:
        check.error("auth.active_key", "auth.active_key goes with auth.keys")
    return AuthConfig(keys=keys, active_key=active,
                      token_ttl=check.integer(table, "token_ttl", p, 300, 1, 86400),
                      clock_skew=check.integer(table, "clock_skew", p, 30, 0, 300))


_AGENT_KEYS = ["name", "organization", "upstreams", "websocket_auth", "public_keys", "max_sessions",
               "max_session_seconds", "idle_timeout"]


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
        elif not isinstance(value, str) or not NAME.match(value):
            check.error(f"{p}.{key}", f"{p}.{key} must be 1-63 characters of a-z, 0-9 and '-' (no dots), got {value!r}")
            ok = False
        names[key] = value
    upstreams = table.get("upstreams")
    good: list[str] = []
    if upstreams is None:
        check.error(p, f"{p}.upstreams is required: a list of the bot's ws:// or wss:// URLs")
        ok = False
    elif not isinstance(upstreams, list) or not upstreams:
        check.error(f"{p}.upstreams", f"{p}.upstreams must be a non-empty list of ws:// or wss:// URLs")
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
                                     or max_sessions < 1):
        check.error(f"{p}.max_sessions", f"{p}.max_sessions must be a positive integer (leave it out for no limit), got {max_sessions!r}")
        max_sessions = None
    idle = table.get("idle_timeout")
    if idle is not None:
        idle = check.number(table, "idle_timeout", p, None, 0, 86400, lo_open=True)
    agent = AgentConfig(
        name=names.get("name") or "", organization=names.get("organization") or "",
        upstreams=tuple(good),
        websocket_auth=check.string(table, "websocket_auth", p, "none", ("none", "token")),
        public_keys=tuple(public_keys), max_sessions=max_sessions,
        max_session_seconds=check.number(table, "max_session_seconds", p, 7200.0, 0, 30 * 86400, lo_open=True),
        idle_timeout=idle, line=check.line_of(p))
    return agent if ok else None


def parse_config(text: str, source: str | None = None) -> Config:
    """Parse and validate a config file's text; ConfigErrors lists every problem found."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigErrors([ConfigError(f"the file is over {MAX_CONFIG_BYTES} bytes; is it the right file?",
                                        source=source)])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise ConfigErrors([ConfigError(f"not valid TOML: {exc}", line=int(match.group(1)) if match else None,
                                        source=source)]) from None
    except RecursionError:
        raise ConfigErrors([ConfigError("not valid TOML: nested too deeply", source=source)]) from None
    check = _Checker(locate_keys(text), source)
    for key in data:
        if key not in ("relay", "auth", "agents"):
            hint = difflib.get_close_matches(key, ["relay", "auth", "agents"], n=1)
            check.error(key, f"unknown table '{key}'" + (f"; did you mean '{hint[0]}'?" if hint
                                                         else "; allowed: [relay], [auth], [[agents]]"))
    relay_table, auth_table = data.get("relay", {}), data.get("auth", {})
    for name, table in (("relay", relay_table), ("auth", auth_table)):
        if not isinstance(table, dict):
            check.error(name, f"'{name}' must be a table: [{name}]")
    relay = _relay(check, relay_table if isinstance(relay_table, dict) else {})
    auth = _auth(check, auth_table if isinstance(auth_table, dict) else {})
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
    if check.errors:
        raise ConfigErrors(check.errors)
    return Config(relay=relay, auth=auth, agents=tuple(agents), source=source)


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
                    workers: int | None = None) -> Config:
    """Command-line flags win over the file; they are validated the same way."""
    errors = []
    if port is not None and not 0 <= port <= 65535:
        errors.append(ConfigError(f"--port must be from 0 to 65535, got {port}", key="relay.port"))
    if workers is not None and not 1 <= workers <= 64:
        errors.append(ConfigError(f"--workers must be from 1 to 64, got {workers}", key="relay.workers"))
    if errors:
        raise ConfigErrors(errors)
    changes = {k: v for k, v in (("host", host), ("port", port), ("workers", workers)) if v is not None}
    return dataclasses.replace(config, relay=dataclasses.replace(config.relay, **changes)) if changes else config


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


def require_signing_key(config: Config) -> None:
    """A relay with token agents must have a key; say which agents need one."""
    needing = [a.service_host for a in config.agents if a.websocket_auth == "token"]
    if needing and not (config.auth.keys and config.auth.active_key in config.auth.keys):
        raise ConfigError(f"agents {', '.join(needing)} use websocket_auth = \"token\" but there is no "
                          "signing key: set [auth] secret (or keys and active_key) or WSRELAY_AUTH_SECRET",
                          key="auth.secret", source=config.source)


def require_shared_nonces(config: Config, relay: RelayConfig | None = None) -> None:
    """Token agents under ``workers > 1`` need a nonce store the workers share.

    Each worker process would otherwise remember only its own nonces, and a replayed
    token landing on another worker (SO_REUSEPORT spreads connections) would pass.
    ``relay`` is the running relay's settings when checking a reload.
    """
    relay = relay or config.relay
    needing = [a.service_host for a in config.agents if a.websocket_auth == "token"]
    if needing and relay.workers > 1 and relay.nonce_store != "redis":
        raise ConfigError(
            f"agents {', '.join(needing)} use websocket_auth = \"token\" with {relay.workers} workers, "
            "but each worker would remember only its own nonces, so a token could be used once per "
            "worker: set relay.nonce_store = \"redis\" and relay.redis_url, or run one worker",
            key="relay.nonce_store", source=config.source)
