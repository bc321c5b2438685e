"""Every key of the config file, declared once: its type, default, bounds and one line of doc.

The declarations are the frozen dataclasses the relay reads at run time; each field's
``Annotated[type, msgspec.Meta(...)]`` carries what the file may hold. The validator
(``load``), the messages of ``wsrelay check`` and docs/configuration.md (``reference``) are
all derived from these, so a bound or a default is changed here and nowhere else.

``Meta`` is msgspec's (already a dependency, for JSON logs): ``ge``/``gt``/``le`` are the
bounds, ``pattern`` a regular expression the whole value matches (checked with fullmatch),
``description`` the doc line. ``extra`` holds what msgspec has no word for: ``unit`` of a
number (seconds unless said), ``want`` (how a message names a valid value, when the bounds say
it badly), ``path`` (a file name: no NUL), ``when_missing`` (what a required key's message asks
for), ``null_is_absent`` (a JSON null in a stored agent means left out), ``stored_when_set``
(an agent key written to Redis only when set, so relays that predate the key still read the
table).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal

from msgspec import Meta

DEFAULT_PORT = 8765
DEFAULT_ADMIN_PORT = 9100
NAME_PATTERN = "^[a-z0-9-]{1,63}$"              # agent, organization and region names: DNS-label-like
NAME_WANT = "1-63 characters of a-z, 0-9 and '-'"
WEBSOCKET_AUTH_MODES = ("none", "token", "twilio-signature")


def _seconds(lo: float, hi: float, doc: str, *, above: bool = False, unit: str = "seconds") -> Meta:
    """A duration's Meta: from ``lo`` (or above it) to ``hi``."""
    extra = {"unit": unit}
    return Meta(gt=lo, le=hi, description=doc, extra=extra) if above else \
        Meta(ge=lo, le=hi, description=doc, extra=extra)


@dataclass(frozen=True)
class RelayConfig:
    """The ``[relay]`` table: the listener, its bounds and its flow control."""

    host: Annotated[str, Meta(description="The public listener's address.")] = "0.0.0.0"
    port: Annotated[int, Meta(ge=1, le=65535, description="The public listener's port.")] = DEFAULT_PORT
    admin_port: Annotated[int, Meta(
        ge=0, le=65535, description="Port of /metrics, /healthz, /readyz, /sessions and the dashboard; "
                                    "not public; 0 turns it off.")] = DEFAULT_ADMIN_PORT
    drain_seconds: Annotated[float, _seconds(
        0, 86400, "On SIGTERM, how long live sessions may go on.")] = 30.0
    public_url: Annotated[str, Meta(
        description="Base of the start API's wsUrl, e.g. \"wss://relay.example.com\"; may name {region}.",
    )] | None = None
    workers: Annotated[int, Meta(ge=1, le=64, description="Worker processes sharing the port (SO_REUSEPORT).")] = 1
    handshake_timeout: Annotated[float, _seconds(
        0, 3600, "The client's whole request head must arrive within this (else 408).", above=True)] = 10.0
    provider_start_timeout: Annotated[float, _seconds(
        0, 3600, "Provider endpoints (/ws/twilio etc.): the first messages must arrive within this (else 1008).",
        above=True)] = 10.0
    max_request_head_bytes: Annotated[int, Meta(
        ge=1024, le=16384, description="Larger request heads get 431 (picows' own head limit is 16 KiB).")] = 8192
    max_frame_size: Annotated[int, Meta(
        ge=1, le=1 << 30, description="Larger frames close that side with 1009.")] = 16 * 1024 * 1024
    upstream_connect_timeout: Annotated[float, _seconds(
        0, 3600, "TCP connect and the bot's 101, per upstream instance (else 504).", above=True)] = 5.0
    close_timeout: Annotated[float, _seconds(
        0, 3600, "How long a close waits for its reply; a live peer reading nothing is dropped after it.",
        above=True)] = 5.0
    stall_timeout: Annotated[float, _seconds(
        0, 86400, "A peer that takes nothing (its network gone) for this long is dropped.", above=True)] = 60.0
    write_buffer_high: Annotated[int, Meta(
        ge=1024, le=1 << 30, description="Backpressure: pause reading the source above this many bytes "
                                         "(left out: the larger of 262144 and 4 x write_buffer_low).")] = 256 * 1024
    write_buffer_low: Annotated[int, Meta(
        ge=1024, le=1 << 30, description="... and resume below this many (left out: a quarter of "
                                         "write_buffer_high); must be below write_buffer_high.")] = 64 * 1024
    read_buffer_size: Annotated[int, Meta(
        ge=2048, le=1 << 24, description="Initial per-socket read buffer in bytes; grows for big frames.")] = 2048
    keepalive_interval: Annotated[float, _seconds(
        0, 86400, "The relay's own pings to both peers; 0 turns them off.")] = 0.0
    keepalive_timeout: Annotated[float, _seconds(
        0, 3600, "A peer that does not answer a ping within this is dropped (left out: "
                 "min(10, keepalive_interval)); at most keepalive_interval.", above=True)] = 10.0
    tls_cert: Annotated[str, Meta(
        description="Certificate file; with tls_key, the relay serves wss://.", extra={"path": True})] | None = None
    tls_key: Annotated[str, Meta(
        description="Private key file of tls_cert.", extra={"path": True})] | None = None
    upstream_ca_file: Annotated[str, Meta(
        description="CA bundle for wss:// upstreams (left out: the system's CAs).", extra={"path": True})] | None = None
    upstream_tls_verify: Annotated[bool, Meta(
        description="Verify wss:// upstreams' certificates; false only for testing.")] = True
    log_format: Annotated[Literal["auto", "json", "text"], Meta(
        description="Log lines as JSON, as text, or auto (JSON unless on a terminal).")] = "auto"
    nonce_store: Annotated[Literal["memory", "redis"], Meta(
        description="Where single-use token nonces live; \"redis\" shares them between workers and relays "
                    "(a [fleet] implies it).")] = "memory"
    redis_url: Annotated[str, Meta(
        description="The nonce store's Redis, e.g. \"redis://127.0.0.1:6379/0\" (left out with a [fleet]: "
                    "the fleet's).")] | None = None
    cors_origins: Annotated[tuple[str, ...], Meta(
        max_length=256, description="Start API from browser pages: exact origins such as "
                                    "[\"https://app.example.com\"], or [\"*\"] for any; [] turns CORS off.")] = ()
    region: Annotated[str, Meta(
        pattern=NAME_PATTERN, description="Serve only agents deployed here (their regions), e.g. \"us-west\".",
        extra={"want": f"{NAME_WANT} such as 'us-west'"})] | None = None
    dns_refresh_seconds: Annotated[float, _seconds(
        0.1, 86400, "Upstream host names are re-resolved this often.")] = 5.0
    dns_servers: Annotated[tuple[str, ...], Meta(
        max_length=16, description="DNS servers as \"ip\" or \"ip:port\", e.g. [\"10.96.0.10\", "
                                   "\"127.0.0.1:5353\"]; [] = the system resolver.")] = ()
    gap_threshold_ms: Annotated[float, _seconds(
        0, 3_600_000, "Voice telemetry: a pause between two data frames longer than this is a gap.",
        above=True, unit="milliseconds")] = 100.0
    admin_token: Annotated[str, Meta(
        min_length=16, max_length=512, description="Bearer token for everything on the admin port but "
                                                   "/healthz and /readyz (WSRELAY_ADMIN_TOKEN overrides).",
    )] | None = None
    admin_host: Annotated[str, Meta(
        description="The admin listener's address: loopback unless told otherwise; keep it private.")] = "127.0.0.1"
    max_body_bytes: Annotated[int, Meta(
        ge=1, le=65536, description="The decoded size of a WebSocket client's ?body= at most (the platform's "
                                    "4 KiB); a larger one gets 413 before any bot is contacted.")] = 4096
    session_api_timeout: Annotated[float, _seconds(
        0, 3600, "Session API: the bot's whole answer must arrive within this (else 504).", above=True)] = 30.0
    max_session_api_body: Annotated[int, Meta(
        ge=1024, le=1 << 28, description="Session API: larger request bodies get 413, and a larger answer "
                                         "from the bot 502 (bytes).")] = 1 << 20


@dataclass(frozen=True)
class AuthConfig:
    """The ``[auth]`` table: signing keys by id, the active one, token lifetime."""

    keys: Annotated[dict[str, str], Meta(
        description="Signing keys by id: { k2 = \"...\", k1 = \"...\" }; ids are 1-32 characters of "
                    "A-Z, a-z, 0-9, '_' and '-'.")] = field(default_factory=dict)
    active_key: Annotated[str, Meta(
        description="The id in keys that new tokens are signed with (needed with several keys).")] | None = None
    token_ttl: Annotated[int, Meta(ge=1, le=86400, description="Lifetime of a token, in seconds.")] = 300
    clock_skew: Annotated[int, Meta(
        ge=0, le=300, description="Seconds of clock difference tolerated when checking a token's times.")] = 30


# Keys of the file that are not fields: ``secret`` is shorthand for ``keys = { default = secret }``.
FILE_ONLY: dict[type, dict[str, object]] = {
    AuthConfig: {"secret": Annotated[str, Meta(
        min_length=1, description="One signing key, or use keys and active_key, not both; "
                                  "WSRELAY_AUTH_SECRET overrides both.")]},
}


@dataclass(frozen=True)
class AgentConfig:
    """One ``[[agents]]`` entry."""

    name: Annotated[str, Meta(pattern=NAME_PATTERN, description="The agent's name: the first part of "
                                                               "its service host name.org.")]
    organization: Annotated[str, Meta(pattern=NAME_PATTERN, description="The organization the agent "
                                                                       "belongs to.")]
    upstreams: Annotated[tuple[str, ...], Meta(
        min_length=1, max_length=256, description="The bot's ws:// or wss:// URLs, one per instance.",
        extra={"when_missing": "a list of the bot's ws:// or wss:// URLs"})]
    websocket_auth: Annotated[Literal["none", "token", "twilio-signature"], Meta(
        description="How clients are admitted: \"none\", \"token\" (signed tokens) or \"twilio-signature\" "
                    "(with twilio_auth_token).")] = "none"
    public_keys: Annotated[tuple[str, ...], Meta(
        max_length=64, description="Keys that may call the start API for this agent (each 1-256 "
                                   "characters).")] = ()
    max_sessions: Annotated[int, Meta(
        ge=1, le=1 << 31, description="Concurrent sessions at most (left out: unlimited).",
        extra={"want": "a positive integer (leave it out for no limit)", "stored_when_set": True,
               "null_is_absent": True})] | None = None
    max_session_seconds: Annotated[float, _seconds(
        0, 30 * 86400, "A session is closed after this long.", above=True)] = 7200.0
    idle_timeout: Annotated[float, Meta(
        gt=0, le=86400, description="Close sessions with no frame for this long (left out: no idle limit).",
        extra={"unit": "seconds", "stored_when_set": True})] | None = None
    regions: Annotated[tuple[str, ...], Meta(
        max_length=64, description="Where the agent is deployed, e.g. [\"us-west\"]; [] = every region.",
        extra={"stored_when_set": True})] = ()
    twilio_auth_token: Annotated[str, Meta(
        min_length=1, max_length=256, description="The Twilio account's auth token, with websocket_auth = "
                                                  "\"twilio-signature\".",
        extra={"stored_when_set": True})] | None = None
    session_api: Annotated[bool, Meta(
        description="Serve the Session API (HTTP to the bot of a live session: docs/session-api.md) "
                    "for this agent.", extra={"stored_when_set": True})] = False
    resume_seconds: Annotated[float, Meta(
        ge=0, le=300, description="How long a session whose client vanished without a close waits for it "
                                  "to resume (docs/resume.md); 0 = off.",
        extra={"unit": "seconds", "stored_when_set": True})] = 0.0
    resume_buffer_bytes: Annotated[int, Meta(
        ge=1024, le=64 << 20, description="The bot's latest messages kept for a resume's replay, in bytes "
                                          "(with resume_seconds).",
        extra={"unit": "bytes", "stored_when_set": True})] = 1 << 20
    line: int | None = field(default=None, metadata={"file": False})    # where the entry starts in the file

    @property
    def service_host(self) -> str:
        return f"{self.name}.{self.organization}"


@dataclass(frozen=True)
class FleetConfig:
    """The ``[fleet]`` table: relays sharing one Redis act as one relay (docs/fleet.md)."""

    redis_url: Annotated[str, Meta(
        description="The Redis every relay of the fleet shares, e.g. \"redis://redis:6379/0\" (rediss:// for "
                    "TLS; user:password@ allowed); WSRELAY_FLEET_REDIS_URL overrides.")] | None = None
    relay_id: Annotated[str, Meta(
        pattern="^[A-Za-z0-9._:@/-]{1,128}$", description="This relay's name in the fleet (left out: hostname:pid).",
        extra={"want": "1-128 characters of A-Z, a-z, 0-9 and ._:@/- (default: hostname:pid)"})] | None = None
    lease_seconds: Annotated[float, _seconds(
        1, 3600, "A dead relay's capacity slots come back after this.")] = 10.0
    internal_url: Annotated[str, Meta(
        pattern="^ws://[A-Za-z0-9._:\\[\\]-]{1,255}$",
        description="Where the fleet's other relays reach this relay's public listener, e.g. "
                    "\"ws://10.0.0.7:8765\": a session resume that reaches another relay is carried here "
                    "(docs/resume.md); left out: resumes stay on the relay they reach.",
        extra={"want": "ws://host:port (the relay's own address inside the fleet)"})] | None = None

    @property
    def enabled(self) -> bool:
        return self.redis_url is not None


WEBHOOK_EVENTS = ("session.started", "session.ended")


@dataclass(frozen=True)
class WebhooksConfig:
    """The ``[webhooks]`` table: signed session events (docs/webhooks.md)."""

    url: Annotated[str, Meta(
        max_length=2048, description="The receiver, an http:// or https:// URL; left out: no webhooks.")] | None = None
    secret: Annotated[str, Meta(
        max_length=256, description="\"whsec_\" and the base64 of 24 to 64 random bytes: the key of every "
                                    "signature (Standard Webhooks).")] | None = field(default=None, repr=False)
    events: Annotated[tuple[str, ...], Meta(
        max_length=len(WEBHOOK_EVENTS), description="Which events to send: "
                                                    + ", ".join(f"\"{e}\"" for e in WEBHOOK_EVENTS) + ".")] \
        = WEBHOOK_EVENTS
    spool: Annotated[str, Meta(
        min_length=1, max_length=4096, description="The outbox on a single relay: an SQLite file, created if "
                                                   "missing (in a fleet the outbox is in its Redis).",
        extra={"path": True})] = "wsrelay-webhooks.sqlite3"
    max_pending: Annotated[int, Meta(
        ge=1, le=10_000_000, description="Events kept waiting at most; past it the oldest are dropped "
                                         "(counted and logged).")] = 100_000
    timeout: Annotated[float, _seconds(
        0, 300, "A receiver's time to answer one attempt; no answer is retried like a failure.", above=True)] = 10.0

    @property
    def enabled(self) -> bool:
        return self.url is not None


@dataclass(frozen=True)
class Config:
    relay: RelayConfig = field(default_factory=RelayConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    agents: tuple[AgentConfig, ...] = ()
    source: str | None = None                     # file path, for messages
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)  # key -> line


# The file's tables in the order they are documented; [[agents]] is an array of tables.
TABLES: tuple[tuple[str, type], ...] = (("relay", RelayConfig), ("auth", AuthConfig), ("fleet", FleetConfig),
                                        ("webhooks", WebhooksConfig), ("agents", AgentConfig))


# -- reading the declarations ----------------------------------------------------------------

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Key:
    """One declared key, as the validator and the reference need it (worked out once per key)."""

    name: str
    kind: str                          # "integer", "number", "boolean", "string", "list", "table"
    default: object                    # _MISSING when the key is required
    meta: Meta
    choices: tuple[str, ...] = ()
    extra: Mapping[str, object] = field(default_factory=dict)
    lo: float | None = None            # the lower bound: gt (lo_open) or ge
    lo_open: bool = False
    hi: float | None = None
    pattern: re.Pattern[str] | None = None
    want: str = "a string"             # a valid value, as messages say it: "relay.port must be <want>"

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def unit(self) -> str:
        return str(self.extra.get("unit", "seconds"))

    def accepts(self, value: object) -> bool:
        """The value has the declared type and lies within the bounds (not the pattern: see ``want``)."""
        if self.kind in ("integer", "number"):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or \
                    (self.kind == "integer" and not isinstance(value, int)):
                return False
            assert self.lo is not None and self.hi is not None
            return (value > self.lo if self.lo_open else value >= self.lo) and value <= self.hi
        if self.kind == "boolean":
            return isinstance(value, bool)
        if self.kind == "string":
            return isinstance(value, str) and (not self.choices or value in self.choices)
        return True                        # lists and tables: their own rules (rules.py)


def _want(kind: str, lo: float | None, lo_open: bool, hi: float | None, unit: str,
          choices: tuple[str, ...]) -> str:
    if kind == "integer":
        return f"an integer from {lo} to {hi}"
    if kind == "number":
        assert lo is not None and hi is not None
        return f"a number {f'above {lo:g}' if lo_open else f'from {lo:g}'} to {hi:g} ({unit})"
    if kind == "boolean":
        return "true or false"
    if choices:
        return f"one of {', '.join(repr(c) for c in choices)}"
    return "a string"


_KINDS = {int: "integer", float: "number", bool: "boolean", str: "string", tuple: "list", dict: "table"}


def _key(name: str, hint: object, default: object) -> Key:
    if type(None) in typing.get_args(hint):            # X | None: None is the "left out" default
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    base, meta = typing.get_args(hint)[:2] if typing.get_origin(hint) is Annotated else (hint, Meta())
    choices: tuple[str, ...] = ()
    if typing.get_origin(base) is Literal:
        choices, base = typing.get_args(base), str
    kind = _KINDS[typing.get_origin(base) or base]
    extra = meta.extra or {}
    lo, lo_open, hi = (meta.gt, True, meta.le) if meta.gt is not None else (meta.ge, False, meta.le)
    want = str(extra["want"]) if "want" in extra else \
        _want(kind, lo, lo_open, hi, str(extra.get("unit", "seconds")), choices)
    return Key(name, kind, default, meta, choices, extra, lo, lo_open, hi,
               re.compile(meta.pattern) if meta.pattern else None, want)


@functools.cache
def keys_of(cls: type) -> tuple[Key, ...]:
    """The keys a table of ``cls`` may hold, in the order they are declared (and listed)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    keys = [_key(name, hint, None) for name, hint in FILE_ONLY.get(cls, {}).items()]
    for f in dataclasses.fields(cls):
        if f.metadata.get("file", True):
            default = f.default_factory() if f.default_factory is not _MISSING else f.default
            keys.append(_key(f.name, hints[f.name], default))
    return tuple(keys)


def key_of(cls: type, name: str) -> Key:
    return next(k for k in keys_of(cls) if k.name == name)
