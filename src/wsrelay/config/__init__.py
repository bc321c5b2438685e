"""Configuration: the TOML file (docs/configuration.md) as typed, validated, immutable objects.

One job per module: ``schema`` declares every key once (type, default, bounds, doc);
``locator`` finds the line of each key; ``checker`` and ``rules`` check values; ``load``
turns a file into a Config; ``overlays`` applies flags and the environment over it;
``requirements`` holds the rules that depend on how the relay runs; ``stored`` is the
fleet's agents in Redis; ``reference`` writes docs/configuration.md from the declarations.
"""

from ..errors import ConfigError, ConfigErrors
from .load import MAX_CONFIG_BYTES, demo_config, load_config, parse_config
from .locator import locate_keys
from .overlays import (admin_token_from_env, apply_overrides, auth_secret_from_env, fleet_redis_url_from_env,
                       secrets_from_env)
from .requirements import nonce_store_of, require_shared_nonces, require_signing_key
from .rules import parse_dns_server
from .schema import (DEFAULT_ADMIN_PORT, DEFAULT_PORT, WEBSOCKET_AUTH_MODES, AgentConfig, AuthConfig, Config,
                     FleetConfig, RelayConfig, WebhooksConfig)
from .stored import agent_from_dict, agent_to_dict

__all__ = [
    "DEFAULT_ADMIN_PORT", "DEFAULT_PORT", "MAX_CONFIG_BYTES", "WEBSOCKET_AUTH_MODES", "AgentConfig", "AuthConfig",
    "Config", "ConfigError", "ConfigErrors", "FleetConfig", "RelayConfig", "admin_token_from_env",
    "agent_from_dict", "agent_to_dict", "apply_overrides", "auth_secret_from_env", "demo_config",
    "fleet_redis_url_from_env", "load_config", "locate_keys", "nonce_store_of", "parse_config",
    "parse_dns_server", "require_shared_nonces", "require_signing_key", "secrets_from_env", "WebhooksConfig",
]
