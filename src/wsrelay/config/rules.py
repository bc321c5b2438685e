"""The rules of values richer than a type and bounds: URLs, origins, DNS servers, tokens, regions,
webhook secrets.

Each takes the checker and the dotted key it reports at; each error is a sentence that
says what a valid value looks like.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from collections.abc import Mapping
from urllib.parse import SplitResult, urlsplit

from ..core.cors import origin_problem
from .checker import Checker, show
from .schema import NAME_PATTERN, NAME_WANT, WEBHOOK_EVENTS, AgentConfig, RelayConfig, key_of

NAME = re.compile(NAME_PATTERN)                  # always fullmatch: '$' would let "a\n" pass
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")         # visible ASCII: a header value as sent
WEBHOOK_SECRET_PREFIX = "whsec_"                  # Standard Webhooks: whsec_ + base64 of the key
WEBHOOK_KEY_BYTES = (24, 64)                      # ... of 24 to 64 random bytes



def _length(cls: type, name: str, bound: str = "max_length") -> int:
    """A declared length (schema): the rules below enforce it, and their messages say it."""
    value = getattr(key_of(cls, name).meta, bound)
    assert isinstance(value, int), f"{cls.__name__}.{name} declares no {bound}"
    return value


_MAX_ORIGINS = _length(RelayConfig, "cors_origins")
_MAX_DNS_SERVERS = _length(RelayConfig, "dns_servers")
_ADMIN_TOKEN_CHARS = (_length(RelayConfig, "admin_token", "min_length"), _length(RelayConfig, "admin_token"))
_MAX_REGIONS = _length(AgentConfig, "regions")
_MAX_UPSTREAMS = _length(AgentConfig, "upstreams")
_MAX_PUBLIC_KEYS = _length(AgentConfig, "public_keys")
_MAX_TWILIO_TOKEN = _length(AgentConfig, "twilio_auth_token")


def _url_parts(check: Checker, key: str, value: str) -> tuple[SplitResult, str | None] | None:
    """``urlsplit(value)`` and its port, or None after an error naming ``key``.

    urlsplit raises ValueError on some text ('http://[', a port that is not a number):
    every URL of the file goes through here so that none can escape as a traceback.
    """
    if SPACE_OR_CONTROL.search(value):
        check.error(key, f"{key}: {show(value)} must not contain spaces or control characters")
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
        hostname = parts.hostname
    except ValueError as exc:           # e.g. "Invalid IPv6 URL", "Port out of range 0-65535"
        reason = str(exc)[:1].lower() + str(exc)[1:]
        check.error(key, f"{key}: {show(value)} is not a valid URL ({reason})")
        return None
    if port is not None and not 1 <= port <= 65535:
        check.error(key, f"{key}: port must be from 1 to 65535")
        return None
    return parts, hostname


def ws_url(check: Checker, key: str, value: object) -> str | None:
    """An upstream: a ws:// or wss:// URL with a host, no fragment or credentials."""
    if not isinstance(value, str):
        check.error(key, f"{key} must be a string like 'ws://10.0.0.5:7860/ws', got {show(value)}")
        return None
    parsed = _url_parts(check, key, value)
    if parsed is None:
        return None
    parts, hostname = parsed
    if parts.scheme not in ("ws", "wss") or not hostname:
        check.error(key, f"{key}: {show(value)} must be a ws:// or wss:// URL with a host")
    elif parts.fragment or parts.username or parts.password:
        check.error(key, f"{key}: {show(value)} must not contain a fragment or user:password@")
    else:
        return value
    return None


def public_url(check: Checker, value: str) -> None:
    """``public_url`` is the base of the start API's wsUrl: scheme and host, maybe a path."""
    key = "relay.public_url"
    parsed = _url_parts(check, key, value)
    if parsed is None:
        return
    parts, hostname = parsed
    if parts.scheme not in ("ws", "wss", "http", "https") or not hostname:
        check.error(key, f"relay.public_url must look like 'wss://relay.example.com', got {show(value)}")
    elif parts.query or parts.fragment or parts.username or parts.password:
        check.error(key, "relay.public_url must not contain a query, fragment or user:password@ "
                         "(the start API appends /ws/generic/{agent}.{org} to it)")


def redis_url(check: Checker, value: str, key: str = "relay.redis_url") -> None:
    """A Redis to connect to: redis:// or rediss:// with a host."""
    parsed = _url_parts(check, key, value)
    if parsed is None:
        return
    parts, hostname = parsed
    if parts.scheme not in ("redis", "rediss") or not hostname:
        check.error(key, f"{key} must look like 'redis://127.0.0.1:6379/0' or 'rediss://user:password@host:6380/0', "
                         f"got {show(value)}")


def cors_origins(check: Checker, key: str, value: object) -> tuple[str, ...]:
    """A list of exact origins, or ``["*"]`` for any origin; [] (the default) is CORS off."""
    if not isinstance(value, list) or len(value) > _MAX_ORIGINS:
        check.error(key, f"{key} must be a list of origins such as [\"https://app.example.com\"] "
                         f"(at most {_MAX_ORIGINS}), or [\"*\"] for any origin")
        return ()
    if "*" in value and len(value) > 1:
        check.error(key, f"{key}: \"*\" already allows every origin; give it alone, or list origins without it")
        return ()
    good = []
    for index, origin in enumerate(value):
        problem = None if origin == "*" else origin_problem(origin)
        if problem:
            check.error(f"{key}[{index}]", f"{key}[{index}] {show(origin)} {problem}")
        else:
            good.append(origin)
    return tuple(good)


def admin_token(check: Checker, key: str, value: object, table: Mapping) -> str | None:
    """The admin port's Bearer token: long enough not to be guessed, sendable in a header."""
    if not isinstance(value, str):
        return None
    shortest, longest = _ADMIN_TOKEN_CHARS
    if not shortest <= len(value) <= longest or not _TOKEN_CHARS.fullmatch(value):
        check.error(key, f"relay.admin_token must be {shortest} to {longest} printable characters without "
                    "spaces (it is sent as 'Authorization: Bearer <token>'); generate one with "
                    "'python3 -c \"import secrets; print(secrets.token_urlsafe(32))\"'")
        return None
    return value


def regions(check: Checker, key: str, value: object) -> tuple[str, ...]:
    """An agent's ``regions``: where it is deployed; left out, it is served in every region."""
    if not isinstance(value, list) or len(value) > _MAX_REGIONS:
        check.error(key, f"{key} must be a list of region names such as [\"us-west\", \"eu-central\"]")
        return ()
    good: list[str] = []
    for index, region in enumerate(value):
        if not isinstance(region, str) or not NAME.fullmatch(region):
            check.error(f"{key}[{index}]", f"{key}[{index}] must be a region name of a-z, 0-9 and '-' "
                                           f"such as 'us-west', got {show(region)}")
        elif region not in good:
            good.append(region)
    return tuple(good)


def dns_servers(check: Checker, key: str, value: object) -> tuple[str, ...]:
    """``["10.0.0.2", "127.0.0.1:5353", "[fd00::53]:53"]``: IP addresses, each with an optional port."""
    if not isinstance(value, list) or len(value) > _MAX_DNS_SERVERS:
        check.error(key, f"{key} must be a list of at most {_MAX_DNS_SERVERS} DNS server addresses such as "
                         "[\"10.0.0.2\", \"127.0.0.1:5353\"] (leave it out for the system resolver)")
        return ()
    good = []
    for index, server in enumerate(value):
        parsed = parse_dns_server(server) if isinstance(server, str) else None
        if parsed is None:
            check.error(f"{key}[{index}]", f"{key}[{index}] must be an IP address with an optional port, "
                                           f"such as '10.0.0.2' or '127.0.0.1:5353', got {show(server)}")
        else:
            good.append(server)
    return tuple(good)


def parse_dns_server(text: str) -> tuple[str, int] | None:
    """(address, port) of a ``dns_servers`` entry, or None when it is not one."""
    host, port = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else "53"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        port_text = "53"
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return None
    port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, port


def twilio_auth_token(check: Checker, key: str, token: object, table: Mapping) -> str | None:
    """The Twilio account's auth token: required by, and only meaningful with, twilio-signature."""
    p = key.rpartition(".")[0]
    mode = table.get("websocket_auth")
    if isinstance(token, str) and (not token or len(token) > _MAX_TWILIO_TOKEN or SPACE_OR_CONTROL.search(token)):
        check.error(f"{p}.twilio_auth_token", f"{p}.twilio_auth_token must be the Twilio account's auth token "
                                              f"(1-{_MAX_TWILIO_TOKEN} characters, no spaces)")
        return None
    if (mode == "twilio-signature" and token is None
            and check.valid(f"{p}.websocket_auth", f"{p}.twilio_auth_token")):
        check.error(f"{p}.websocket_auth", f"{p}.websocket_auth = \"twilio-signature\" needs "
                                           f"{p}.twilio_auth_token (the Twilio account's auth token, "
                                           "from the Twilio console)")
    elif token is not None and mode != "twilio-signature":
        check.error(f"{p}.twilio_auth_token", f"{p}.twilio_auth_token is used only with "
                                              f"websocket_auth = \"twilio-signature\"; set that, or remove the token")
    return token if isinstance(token, str) else None



def fleet_redis_url(check: Checker, key: str, value: object, table: Mapping) -> str | None:
    """``[fleet]`` is a fleet's Redis: a table without one is a mistake."""
    if isinstance(value, str):
        redis_url(check, value, key=key)
        return value
    if table:
        check.error("fleet", "[fleet] needs redis_url = 'redis://host:6379/0' "
                             "(the Redis every relay of the fleet shares)")
    return None


def webhook_url(check: Checker, key: str, value: object, table: Mapping) -> str | None:
    """The receiver: http:// or https:// with a host; a ``[webhooks]`` table without one is a mistake."""
    if not isinstance(value, str):
        if table:
            check.error("webhooks", "[webhooks] needs url = 'https://hooks.example.com/wsrelay' (the receiver), "
                                    "or remove the table")
        return None
    parsed = _url_parts(check, key, value)
    if parsed is None:
        return None
    parts, hostname = parsed
    if parts.scheme not in ("http", "https") or not hostname:
        check.error(key, f"{key} must be an http:// or https:// URL with a host, got {show(value)}")
        return None
    return value


def webhook_secret(check: Checker, key: str, value: object, table: Mapping) -> str | None:
    """``whsec_`` and the base64 of 24 to 64 random bytes; required with a receiver."""
    how = ("python -c \"import base64,os; print('whsec_' + base64.b64encode(os.urandom(32)).decode())\" "
           "makes one")
    if not isinstance(value, str):
        if isinstance(table.get("url"), str):
            check.error(key, f"{key} is required with webhooks.url: the key every event is signed with ({how})")
        return None
    if not value.startswith(WEBHOOK_SECRET_PREFIX):
        check.error(key, f"{key} must start with 'whsec_' followed by the base64 of 24 to 64 random bytes ({how})")
        return None
    try:
        secret = base64.b64decode(value[len(WEBHOOK_SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        check.error(key, f"{key}: what follows 'whsec_' is not base64; write the base64 of 24 to 64 random bytes "
                         f"({how})")
        return None
    low, high = WEBHOOK_KEY_BYTES
    if not low <= len(secret) <= high:
        check.error(key, f"{key} holds a key of {len(secret)} bytes: it must be 24 to 64 random bytes ({how})")
        return None
    return value


def webhook_events(check: Checker, key: str, value: object) -> tuple[str, ...]:
    """One or both of the events, each once."""
    allowed = ", ".join(WEBHOOK_EVENTS)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        check.error(key, f"{key} must be a list of one or both of {allowed}, got {show(value)}")
        return WEBHOOK_EVENTS
    unknown = [v for v in value if v not in WEBHOOK_EVENTS]
    if unknown:
        check.error(key, f"{key} must be one or both of {allowed}, not {', '.join(show(v) for v in unknown)}")
        return WEBHOOK_EVENTS
    return tuple(e for e in WEBHOOK_EVENTS if e in value)


def agent_name(check: Checker, key: str, value: object) -> str | None:
    """An agent's name or organization: one label of its service host name.org."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        check.error(key, f"{key} must be {NAME_WANT} (no dots), got {show(value)}")
        return None
    return value


def upstreams(check: Checker, key: str, value: object) -> tuple[str, ...] | None:
    """The bot's instances: a non-empty list of URLs; None when any is wrong."""
    if not isinstance(value, list) or not value or len(value) > _MAX_UPSTREAMS:
        check.error(key, f"{key} must be a non-empty list of at most {_MAX_UPSTREAMS} ws:// or wss:// URLs")
        return None
    checked = [ws_url(check, f"{key}[{i}]", url) for i, url in enumerate(value)]
    good = tuple(url for url in checked if url)
    return good if len(good) == len(checked) else None


def public_keys(check: Checker, key: str, value: object) -> tuple[str, ...]:
    """The start API's keys for one agent."""
    if (not isinstance(value, list) or len(value) > _MAX_PUBLIC_KEYS
            or not all(isinstance(k, str) and 0 < len(k) <= 256 for k in value)):
        check.error(key, f"{key} must be a list of at most {_MAX_PUBLIC_KEYS} non-empty strings (≤ 256 characters)")
        return ()
    return tuple(value)
