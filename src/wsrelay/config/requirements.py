"""Rules that need the whole configuration and the way the relay will run it.

Checked when a relay starts or reloads (after flags and the environment are applied),
not by the file's parser: a file may be fine for one worker and wrong for four.
"""

from __future__ import annotations

from ..errors import ConfigError
from .schema import Config, RelayConfig


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
    require_shared_session_book(config, relay)
    require_one_worker_for_resume(config, relay)
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


def require_shared_session_book(config: Config, relay: RelayConfig) -> None:
    """Session API agents under ``workers > 1`` need a [fleet]: each worker knows only its own
    sessions, and a Session API request landing on another worker would find none (404)."""
    needing = [a.service_host for a in config.agents if a.session_api]
    if needing and relay.workers > 1 and not config.fleet.enabled:
        key = "relay.workers" if "relay.workers" in config.lines else \
            f"agents[{next(i for i, a in enumerate(config.agents) if a.session_api)}].session_api"
        raise ConfigError(
            f"agents {', '.join(needing)} set session_api = true with {relay.workers} workers, but each "
            "worker knows only its own sessions, so a Session API request could reach one that does "
            "not serve the session: set [fleet] redis_url (the sessions are found through Redis), "
            "or run one worker", key=key, line=config.lines.get(key), source=config.source)


def require_one_worker_for_resume(config: Config, relay: RelayConfig) -> None:
    """Agents with ``resume_seconds`` need one worker: a session lives in one process, and a
    client coming back lands on any worker of the port (SO_REUSEPORT), which cannot carry it
    to the right one (docs/resume.md)."""
    needing = [a.service_host for a in config.agents if a.resume_seconds]
    if needing and relay.workers > 1:
        key = "relay.workers" if "relay.workers" in config.lines else \
            f"agents[{next(i for i, a in enumerate(config.agents) if a.resume_seconds)}].resume_seconds"
        raise ConfigError(
            f"agents {', '.join(needing)} set resume_seconds with {relay.workers} workers, but a session "
            "lives in one worker and a client coming back could reach another: run one worker (several "
            "relays in a fleet carry resumes to each other)", key=key, line=config.lines.get(key),
            source=config.source)


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

