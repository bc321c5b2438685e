"""wsrelay: a self-hostable WebSocket relay for real-time voice and data bots.

The public API is what a user scripts around a relay (docs/tokens.md shows it in use):

* ``load_config(path)`` reads and checks a config file as ``wsrelay serve`` does (the same
  errors, the same secrets taken from the environment) and returns a ``Config``;
* ``parse_config(text)`` does the same for a string;
* ``mint_token(config, "agent.org", ttl=60)`` mints one session token, as ``wsrelay token``.

Everything else in the package is the relay's own and may change between versions. Importing
``wsrelay`` imports nothing else: each name is loaded when first used.
"""

import os

TYPE_CHECKING = False                  # typing.TYPE_CHECKING without importing typing (mypy knows the name)

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "ConfigErrors",
    "TokenError",
    "__version__",
    "load_config",
    "mint_token",
    "parse_config",
]

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from .config import Config
    from .errors import ConfigError, ConfigErrors, TokenError

# Names loaded on first use (module __getattr__), so `import wsrelay` stays cheap.
_LAZY = {
    "Config": ("wsrelay.config", "Config"),
    "ConfigError": ("wsrelay.errors", "ConfigError"),
    "ConfigErrors": ("wsrelay.errors", "ConfigErrors"),
    "TokenError": ("wsrelay.errors", "TokenError"),
}


def __getattr__(name: str) -> "Any":
    if name in _LAZY:
        import importlib
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'wsrelay' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def load_config(path: str | os.PathLike[str], *, environ: "Mapping[str, str] | None" = None) -> "Config":
    """Read and check the config file at ``path`` as ``wsrelay serve`` does.

    Raises ``ConfigErrors`` (every problem, each with its dotted key and line). Secrets given in
    the environment replace the file's, as for the relay: ``WSRELAY_AUTH_SECRET``,
    ``WSRELAY_ADMIN_TOKEN``, ``WSRELAY_FLEET_REDIS_URL``. ``environ`` defaults to ``os.environ``;
    pass ``{}`` to take the file alone.
    """
    from . import config as _config
    return _config.secrets_from_env(_config.load_config(path), os.environ if environ is None else environ)


def parse_config(text: str, *, source: str | None = None,
                 environ: "Mapping[str, str] | None" = None) -> "Config":
    """Check a config file's text, as ``load_config`` does a file (``source`` names it in errors)."""
    from . import config as _config
    return _config.secrets_from_env(_config.parse_config(text, source=source),
                                    os.environ if environ is None else environ)


def mint_token(config: "Config", service_host: str, *, ttl: int | None = None,
               session_id: str | None = None) -> str:
    """One session token for the agent ``service_host`` (``"agent.org"``), as ``wsrelay token``.

    Signed with the config's active key; valid for ``ttl`` seconds (default ``[auth] token_ttl``)
    and once. With ``session_id`` the bot gets it as ``X-Session-Id``, as after the start API.
    Raises ``TokenError`` when the config has no such agent or no signing key.
    """
    from .admission.auth import mint_for_config
    return mint_for_config(config, service_host, ttl=ttl, session_id=session_id)
