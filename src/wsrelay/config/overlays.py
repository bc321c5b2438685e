"""What wins over the file: command-line flags, and secrets from the environment.

Each overlay is validated by the file's rule for the same key, so a value cannot be
accepted from one place and refused from another; the messages name the flag or the
variable, and never repeat a secret.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from ..errors import ConfigError, ConfigErrors
from . import rules
from .checker import Checker, show
from .schema import Config

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
    if host is not None and (not host or rules.SPACE_OR_CONTROL.search(host) or len(host) > 255):
        errors.append(ConfigError(f"--host must be an address or name like 127.0.0.1, got {show(host)}",
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
    check = Checker({}, None)
    rules.redis_url(check, url, key="fleet.redis_url")     # the file's rule; its messages would show the URL
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
    check = Checker({}, None)
    if rules.admin_token(check, "relay.admin_token", token, {}) is None:
        raise ConfigError("WSRELAY_ADMIN_TOKEN must be 16 to 512 printable characters without spaces; generate "
                          "one with 'python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"'",
                          key="WSRELAY_ADMIN_TOKEN")
    return dataclasses.replace(config, relay=dataclasses.replace(config.relay, admin_token=token))


def secrets_from_env(config: Config, environ: Mapping[str, str] = os.environ) -> Config:
    """The environment's secrets over the file's: WSRELAY_AUTH_SECRET, WSRELAY_FLEET_REDIS_URL,
    WSRELAY_ADMIN_TOKEN."""
    config = fleet_redis_url_from_env(auth_secret_from_env(config, environ), environ)
    return admin_token_from_env(config, environ)

