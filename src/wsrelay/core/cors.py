"""CORS for the start API and the Session API (``[relay] cors_origins``), sans-I/O.

A browser page on another origin may call ``POST /v1/public/{agent}/start`` only if the
relay says so: first a preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``), then the request itself, whose answer must carry
``Access-Control-Allow-Origin``. WebSocket upgrades are not subject to CORS.

The policy compares the request's ``Origin`` byte for byte with the configured origins
and only ever answers with a configured string (or ``*``), never with what the request
sent: a hostile ``Origin`` cannot put anything into the answer's headers. Credentials
are never allowed (the start API authenticates with a bearer key, not cookies).

Use::

    policy = CorsPolicy(config.relay.cors_origins)
    if is_preflight(method, origin, request_method):
        answer = policy.preflight(origin, request_method, request_headers)
        # answer.status (204 or 403), answer.headers, answer.reason (for 403: say it, log it)
    else:
        headers_to_add = policy.response_headers(origin)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

ALLOWED_METHODS = "POST"
ALLOWED_HEADERS = ("authorization", "content-type")
ALLOW_HEADERS_VALUE = "Authorization, Content-Type"
MAX_AGE = "600"
MAX_ORIGIN_LENGTH = 300

_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,31}")
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_IPV6 = re.compile(r"\[[0-9a-f:.]{2,45}\]")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def origin_problem(value: object) -> str | None:
    """Why ``value`` is not an origin as browsers send it (None when it is one).

    An origin is ``scheme://host[:port]``: lower-case, no path, query, fragment or
    trailing slash, no default port (a browser sends ``https://a.example``, never
    ``https://a.example:443``), so that comparing strings is comparing origins.
    """
    if not isinstance(value, str):
        return f"must be a string like 'https://app.example.com', got {type(value).__name__}"
    if len(value) > MAX_ORIGIN_LENGTH:
        return f"is longer than {MAX_ORIGIN_LENGTH} characters"
    scheme, sep, rest = value.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return "must start with a lower-case scheme such as 'https://'"
    if any(c in rest for c in "/?#@\\") or not rest.isascii():
        return ("must be only scheme://host[:port]: no path, query, fragment, user@ or trailing "
                "slash, and an internationalised host in its xn-- form")
    host, port = rest, None
    if rest.startswith("["):
        close = rest.find("]")
        host, tail = rest[:close + 1], rest[close + 1:]
        if close < 0 or (tail and not tail.startswith(":")):
            return "has a malformed [IPv6] host"
        port = tail[1:] if tail else None
    elif ":" in rest:
        host, _, port = rest.partition(":")
    if host.startswith("["):
        if not _IPV6.fullmatch(host):
            return "has a malformed [IPv6] host (lower-case hex digits and ':')"
    elif not host or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        return "must have a lower-case host name (letters, digits, '-' and '.')"
    if port is not None:
        if not _PORT.fullmatch(port) or int(port) > 65535:
            return "has a port that is not a number from 1 to 65535 (without leading zeros)"
        if _DEFAULT_PORTS.get(scheme) == port:
            return f"names the default port: write '{scheme}://{host}' (browsers leave it out)"
    return None


class PreflightAnswer(NamedTuple):
    """What to answer a preflight: 204 with the CORS headers, or 403 with a short reason."""

    status: int
    headers: dict[str, str]
    reason: str


def is_preflight(method: str | bytes, origin: str | bytes | None,
                 request_method: str | bytes | None) -> bool:
    """A CORS preflight is an ``OPTIONS`` naming an ``Origin`` and the method to come."""
    return _text(method) == "OPTIONS" and origin is not None and request_method is not None


class CorsPolicy:
    """The answers for the configured origins: ``()`` is CORS off, ``("*",)`` any origin."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)
        self.any_origin = "*" in self.origins

    @property
    def enabled(self) -> bool:
        return bool(self.origins)

    def allow_origin(self, origin: str | bytes | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or None when not allowed.

        The value is ``*`` or a configured origin, never the request's own string.
        """
        text = _text(origin)
        if text is None or not self.origins:
            return None
        if self.any_origin:
            return "*"
        return text if text in self.origins else None

    def preflight(self, origin: str | bytes | None, request_method: str | bytes | None,
                  request_headers: str | bytes | None = None, *, methods: str = ALLOWED_METHODS) -> PreflightAnswer:
        """The answer to ``OPTIONS`` with ``Origin``, ``Access-Control-Request-Method`` and
        ``-Headers``: 204 when all three are allowed, 403 saying which one is not.

        ``methods``: the endpoint's, as ``Access-Control-Allow-Methods`` lists them (the start
        API's ``POST``; the Session API's ``GET, POST, PUT, PATCH, DELETE, HEAD``)."""
        if not self.origins:
            return PreflightAnswer(403, {}, "CORS is not enabled on this relay")
        vary = {"Vary": "Origin"}
        allowed = self.allow_origin(origin)
        if allowed is None:
            return PreflightAnswer(403, vary, "origin not allowed")
        if _text(request_method) not in methods.split(", "):
            return PreflightAnswer(403, vary, f"method not allowed: use {methods}")
        if not _headers_allowed(_text(request_headers) or ""):
            return PreflightAnswer(403, vary, f"request headers not allowed: only {ALLOW_HEADERS_VALUE}")
        return PreflightAnswer(204, {
            "Access-Control-Allow-Origin": allowed,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": ALLOW_HEADERS_VALUE,
            "Access-Control-Max-Age": MAX_AGE,
            "Vary": "Origin",
        }, "")

    def response_headers(self, origin: str | bytes | None) -> dict[str, str]:
        """Headers to add to the answer of a (non-preflight) request carrying ``origin``.

        Nothing without an ``Origin`` or with CORS off; ``Vary: Origin`` alone for an origin
        not allowed (the answer depends on it, caches must know).
        """
        if origin is None or not self.origins:
            return {}
        allowed = self.allow_origin(origin)
        if allowed is None:
            return {"Vary": "Origin"}
        return {"Access-Control-Allow-Origin": allowed, "Vary": "Origin"}


def _text(value: str | bytes | None) -> str | None:
    """Header values may come as bytes (the request reader) or str; latin-1 maps bytes one to one."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("latin-1")
    return value


def _headers_allowed(value: str) -> bool:
    """Every name in ``Access-Control-Request-Headers`` is one we allow (case-insensitive)."""
    return all(name.strip(" \t").lower() in ALLOWED_HEADERS
               for name in value.split(",") if name.strip(" \t"))
