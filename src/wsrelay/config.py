"""Configuration: the TOML file of SPEC §4 as typed, validated, immutable objects.

Sans-I/O apart from ``load_config`` reading a file: ``parse_config(text)`` does the work,
so every rule is testable on a string. Unknown keys are errors, not silence, and every
error names its dotted key and the line it stands on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
