"""A config file's text → a validated, immutable Config, or ConfigErrors listing every problem.

Sans-I/O apart from ``load_config`` reading a file: ``parse_config(text)`` does the work,
so every rule is testable on a string. Unknown keys are errors, not silence, and every
error names its dotted key and the line it stands on.

Each declared key gets the check its declaration implies (``Checker.value``); the keys
whose values are richer than a type and bounds name their rule here (``rules``), and the
rules between keys of a table follow it.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import ConfigError, ConfigErrors
from . import rules
from .checker import Checker, did_you_mean, show
from .locator import Locator
from .schema import TABLES, AgentConfig, AuthConfig, Config, FleetConfig, RelayConfig, WebhooksConfig, keys_of

MAX_CONFIG_BYTES = 1024 * 1024
_LONG_NUMBER = re.compile(r"[0-9A-Fa-f_]{4300,}")
_TABLE_NAMES = [name for name, _ in TABLES]

Own = Callable[[Checker, str, object], object]                  # checks a key's raw value itself
Then = Callable[[Checker, str, object, Mapping], object]        # refines the declared check's result


def _table(check: Checker, table: Mapping, cls: type, prefix: str, label: str, *,
           own: Mapping[str, Own] = {}, then: Mapping[str, Then] = {}, skip: tuple[str, ...] = (),
           unknown: bool = True) -> dict:
    """The values of one table, key by key in declared order, each checked as declared."""
    keys = keys_of(cls)
    if unknown:
        check.unknown_keys(table, [k.name for k in keys], prefix, label)
    values: dict[str, object] = {}
    for key in keys:
        if key.name in skip:
            continue
        dotted = f"{prefix}.{key.name}"
        if key.required and table.get(key.name) is None:
            when = key.extra.get("when_missing")
            check.error(prefix, f"{dotted} is required" + (f": {when}" if when else ""))
            values[key.name] = None
        elif key.name in own:
            values[key.name] = own[key.name](check, dotted, table[key.name]) if key.name in table else key.default
        else:
            values[key.name] = check.value(table, prefix, key)
            if key.name in then:
                values[key.name] = then[key.name](check, dotted, values[key.name], table)
    return values


def _relay(check: Checker, table: Mapping) -> RelayConfig:
    values = _table(check, table, RelayConfig, "relay", "[relay]",
                    own={"cors_origins": rules.cors_origins, "dns_servers": rules.dns_servers},
                    then={"admin_token": rules.admin_token})
    d = RelayConfig()
    host = values["host"]
    assert isinstance(host, str)
    if rules.SPACE_OR_CONTROL.search(host) or len(host) > 255:
        check.error("relay.host", f"relay.host must be an address or name like '0.0.0.0' or '127.0.0.1', "
                                  f"got {show(host)}")
        values["host"] = d.host
    admin_host = values["admin_host"]
    assert isinstance(admin_host, str)
    if not admin_host or rules.SPACE_OR_CONTROL.search(admin_host) or len(admin_host) > 255:
        check.error("relay.admin_host", f"relay.admin_host must be an address like '127.0.0.1' or '10.0.0.5', "
                                        f"got {show(admin_host)}")
        values["admin_host"] = d.admin_host
    _derive_defaults(table, values)
    _check_pairs(check, table, values)
    public_url = values["public_url"]
    if isinstance(public_url, str):
        rules.public_url(check, public_url)
        if "{region}" in public_url and not values["region"] and check.valid("relay.region"):
            check.error("relay.public_url", "relay.public_url names {region} but relay.region is not set: "
                                            "set relay.region = 'us-west' (the region this relay serves)")
    if isinstance(values["redis_url"], str):
        rules.redis_url(check, values["redis_url"])
    return RelayConfig(**values)


def _derive_defaults(table: Mapping, values: dict) -> None:
    """Defaults of keys the user left out follow the keys the user wrote.

    So that setting one key never makes the file invalid because of a default it does not
    see: ``keepalive_interval = 5`` alone gets a 5 s timeout, ``write_buffer_high = 32768``
    alone gets a low-water mark of a quarter of it.
    """
    if "keepalive_timeout" not in table and values["keepalive_interval"] > 0:
        values["keepalive_timeout"] = min(RelayConfig.keepalive_timeout, values["keepalive_interval"])
    if "write_buffer_low" not in table:
        values["write_buffer_low"] = values["write_buffer_high"] // 4
    elif "write_buffer_high" not in table:
        values["write_buffer_high"] = min(1 << 30, max(RelayConfig.write_buffer_high, 4 * values["write_buffer_low"]))


def _check_pairs(check: Checker, table: Mapping, values: dict) -> None:
    """Rules between two keys; each error names a key the user wrote."""
    port, admin = values["port"], values["admin_port"]
    if admin and admin == port and check.valid("relay.port", "relay.admin_port"):
        if "admin_port" in table:
            check.error("relay.admin_port", "relay.admin_port must differ from relay.port "
                                            "(the admin endpoints are not public)")
        else:
            check.error("relay.port", f"relay.port = {port} is also the default relay.admin_port: "
                                      "set relay.admin_port to another port, or 0 to turn it off")
    if values["write_buffer_low"] >= values["write_buffer_high"] and \
            check.valid("relay.write_buffer_low", "relay.write_buffer_high"):
        key = "relay.write_buffer_low" if "write_buffer_low" in table else "relay.write_buffer_high"
        check.error(key, f"relay.write_buffer_low ({values['write_buffer_low']}) must be below "
                         f"relay.write_buffer_high ({values['write_buffer_high']})")
    if values["keepalive_interval"] and values["keepalive_timeout"] > values["keepalive_interval"] and \
            check.valid("relay.keepalive_interval", "relay.keepalive_timeout"):
        check.error("relay.keepalive_timeout", "relay.keepalive_timeout must not exceed relay.keepalive_interval")
    if bool(values["tls_cert"]) != bool(values["tls_key"]) and check.valid("relay.tls_cert", "relay.tls_key"):
        given, missing = ("tls_cert", "tls_key") if values["tls_cert"] else ("tls_key", "tls_cert")
        check.error(f"relay.{given}", f"relay.{given} is set but relay.{missing} is not: set both "
                                      "to serve wss://, or neither")


def _fleet(check: Checker, table: Mapping) -> FleetConfig:
    values = _table(check, table, FleetConfig, "fleet", "[fleet]", then={"redis_url": rules.fleet_redis_url})
    return FleetConfig(**values)


def _webhooks(check: Checker, table: Mapping) -> WebhooksConfig:
    values = _table(check, table, WebhooksConfig, "webhooks", "[webhooks]", own={"events": rules.webhook_events},
                    then={"url": rules.webhook_url, "secret": rules.webhook_secret})
    if not values["spool"] and check.valid("webhooks.spool"):
        check.error("webhooks.spool", "webhooks.spool must be the path of an SQLite file (created if missing), "
                                      "such as '/var/lib/wsrelay/webhooks.sqlite3'")
        values["spool"] = WebhooksConfig.spool
    return WebhooksConfig(**values)


def _auth(check: Checker, table: Mapping) -> AuthConfig:
    check.unknown_keys(table, [k.name for k in keys_of(AuthConfig)], "auth", "[auth]")
    keys, active = _signing_keys(check, table)
    values = _table(check, table, AuthConfig, "auth", "[auth]", unknown=False, skip=("secret", "keys", "active_key"))
    return AuthConfig(keys=keys, active_key=active, **values)


def _signing_keys(check: Checker, table: Mapping) -> tuple[dict[str, str], str | None]:
    """``secret``, or ``keys`` with ``active_key``: the keys tokens are signed and checked with."""
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
                if not rules.KEY_ID.fullmatch(kid):
                    check.error(f"auth.keys.{kid}",
                                f"key id {show(kid)} must be 1-32 characters of A-Z, a-z, 0-9, '_' and '-'")
                elif not isinstance(secret, str) or not secret:
                    check.error(f"auth.keys.{kid}", f"auth.keys.{kid} must be a non-empty string")
                else:
                    keys[kid] = secret
            active = table.get("active_key")
            if active is None:
                if len(raw) == 1:
                    active = next(iter(raw))
                else:
                    check.error("auth.keys", "with several auth.keys, set auth.active_key to the id new tokens use")
            elif not isinstance(active, str) or active not in raw:
                ids = ", ".join(show(k, 40) for k in list(raw)[:8])
                check.error("auth.active_key",
                            f"auth.active_key must name one of auth.keys ({ids}), got {show(active)}")
                active = None
    if "active_key" in table and "keys" not in table:
        check.error("auth.active_key", "auth.active_key goes with auth.keys")
    return keys, active


def check_agent(check: Checker, index: int, table: object) -> AgentConfig | None:
    """One [[agents]] entry (of the file, or stored in Redis), or None after its errors."""
    p = f"agents[{index}]"
    if not isinstance(table, dict):
        check.error(p, "each [[agents]] entry must be a table")
        return None
    values = _table(check, table, AgentConfig, p, "[[agents]]",
                    own={"name": rules.agent_name, "organization": rules.agent_name, "upstreams": rules.upstreams,
                         "public_keys": rules.public_keys, "regions": rules.regions},
                    then={"twilio_auth_token": rules.twilio_auth_token})
    if values["name"] is None or values["organization"] is None or values["upstreams"] is None:
        return None
    return AgentConfig(**values, line=check.line_of(p))


def _load_toml(text: str, source: str | None) -> dict:
    """tomllib's answer, or ConfigErrors: the only exception a hostile text can cause."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        raise ConfigErrors([ConfigError(f"not valid TOML: {exc}", line=int(match.group(1)) if match else None,
                                        source=source)]) from None
    except RecursionError:
        raise ConfigErrors([ConfigError("not valid TOML: nested too deeply", source=source)]) from None
    except ValueError as exc:
        # Python refuses to convert integers of over 4300 digits: a plain ValueError.
        long = _LONG_NUMBER.search(text) if "digits" in str(exc) else None
        if long is None:
            raise ConfigErrors([ConfigError(f"not valid TOML: {exc}", source=source)]) from None
        raise ConfigErrors([ConfigError("a number with thousands of digits; write a number of sensible size",
                                        line=text.count("\n", 0, long.start()) + 1, source=source)]) from None


def parse_config(text: str, source: str | None = None) -> Config:
    """Parse and validate a config file's text; ConfigErrors lists every problem found."""
    if len(text) > MAX_CONFIG_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise ConfigErrors([ConfigError(f"the file is over {MAX_CONFIG_BYTES} bytes; is it the right file?",
                                        source=source)])
    locator = Locator(text)
    lines = locator.run()                     # before tomllib: it also finds keys too deep for it
    if locator.too_deep is not None:
        line, why = locator.too_deep
        raise ConfigErrors([ConfigError(f"{why}; is it the right file?", line=line, source=source)])
    data = _load_toml(text, source)
    check = Checker(lines, source)
    for key in data:
        if key not in _TABLE_NAMES:
            hint = did_you_mean(key, _TABLE_NAMES)
            check.error(key, f"unknown table {show(key)}" + (f"; did you mean '{hint}'?" if hint
                                                             else "; allowed: " + ", ".join(
                                                                 f"[[{n}]]" if n == "agents" else f"[{n}]"
                                                                 for n in _TABLE_NAMES)))
    relay_table, auth_table, fleet_table = data.get("relay", {}), data.get("auth", {}), data.get("fleet", {})
    webhooks_table = data.get("webhooks", {})
    for name, table in (("relay", relay_table), ("auth", auth_table), ("fleet", fleet_table),
                        ("webhooks", webhooks_table)):
        if not isinstance(table, dict):
            check.error(name, f"'{name}' must be a table: [{name}]")
    relay = _relay(check, relay_table if isinstance(relay_table, dict) else {})
    auth = _auth(check, auth_table if isinstance(auth_table, dict) else {})
    fleet = _fleet(check, fleet_table if isinstance(fleet_table, dict) else {})
    webhooks = _webhooks(check, webhooks_table if isinstance(webhooks_table, dict) else {})
    if relay.nonce_store == "redis" and not relay.redis_url and not fleet.redis_url \
            and check.valid("relay.redis_url", "fleet.redis_url", "fleet"):
        # Without its own redis_url the nonce store uses the fleet's Redis (nonce_store_of).
        check.error("relay.nonce_store", "relay.nonce_store = 'redis' needs relay.redis_url = 'redis://host:6379/0' "
                                         "(or a [fleet] redis_url, whose Redis it then uses)")
    agents_raw = data.get("agents", [])
    agents: list[AgentConfig] = []
    if not isinstance(agents_raw, list):
        check.error("agents", "agents must be an array of tables: [[agents]]")
        agents_raw = []
    seen: dict[str, int] = {}
    for index, table in enumerate(agents_raw):
        agent = check_agent(check, index, table)
        if agent is None:
            continue
        if agent.service_host in seen:
            first = seen[agent.service_host]
            check.error(f"agents[{index}]", f"agent {agent.service_host} is defined twice "
                        f"(lines {agents[first].line} and {agent.line}); service hosts must be unique")
            continue
        seen[agent.service_host] = len(agents)
        agents.append(agent)
    check.finish()
    return Config(relay=relay, auth=auth, fleet=fleet, webhooks=webhooks, agents=tuple(agents), source=source,
                  lines=lines)


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


def demo_config(echo_upstream: str) -> Config:
    """The embedded default: agent ``echo.demo`` relayed to the built-in echo bot."""
    return Config(agents=(AgentConfig("echo", "demo", (echo_upstream,)),), source="<demo>")
