"""The client's upgrade request, sans-I/O: is it a valid WebSocket handshake, what it offers.

Checked before any bot is contacted, so a bad handshake costs nothing upstream.
Compression extensions are never negotiated (frames are relayed, not re-encoded), so
``Sec-WebSocket-Extensions`` is simply not forwarded.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from .errors import AuthError, RequestRefused

MAX_SUBPROTOCOLS_HEADER = 1024


@dataclass(frozen=True)
class UpgradeRequest:
    """What the relay needs from a client's handshake."""

    host: str
    subprotocols: str | None       # the Sec-WebSocket-Protocol offer, as sent
    bearer_token: str | None       # from Authorization: Bearer
    user_agent: str | None


def header_values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Every value of header ``name`` (lower-case), decoded as latin-1."""
    return [v.decode("latin-1") for n, v in headers if n == name]


def _single(headers, name: bytes) -> str | None:
    values = header_values(headers, name)
    if len(values) > 1:
        raise RequestRefused(f"header {name.decode()} given {len(values)} times", status=400,
                             public_reason=f"Bad Request: repeated {name.decode()} header")
    return values[0] if values else None


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


def parse_upgrade(method: bytes, headers: list[tuple[bytes, bytes]]) -> UpgradeRequest:
    """Validate a WebSocket upgrade request (RFC 6455 §4.2.1); 400/405/426 otherwise."""
    # One pass over h11's header sequence (its generic __iter__ is slow), not one per lookup.
    headers = list(headers)
    if method != b"GET":
        raise RequestRefused(f"method {method.decode('latin-1')} on a WebSocket endpoint",
                             status=405, public_reason="Method Not Allowed: use GET with a WebSocket upgrade",
                             headers={"Allow": "GET"})
    upgrade = _tokens(", ".join(header_values(headers, b"upgrade")))
    connection = _tokens(", ".join(header_values(headers, b"connection")))
    if "websocket" not in upgrade or "upgrade" not in connection:
        raise RequestRefused("not a WebSocket upgrade request", status=426,
                             public_reason="Upgrade Required: connect with a WebSocket client",
                             headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    version = _single(headers, b"sec-websocket-version")
    if version is None or version.strip() != "13":
        raise RequestRefused(f"unsupported Sec-WebSocket-Version {version!r}", status=426,
                             public_reason="Upgrade Required: WebSocket version 13 only",
                             headers={"Sec-WebSocket-Version": "13"})
    key = _single(headers, b"sec-websocket-key")
    try:
        if key is None or len(base64.b64decode(key.strip(), validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise RequestRefused("missing or invalid Sec-WebSocket-Key", status=400,
                             public_reason="Bad Request: invalid Sec-WebSocket-Key") from None
    protocols = header_values(headers, b"sec-websocket-protocol")
    offer = ", ".join(p.strip() for p in protocols if p.strip()) or None
    if offer is not None and len(offer) > MAX_SUBPROTOCOLS_HEADER:
        raise RequestRefused("Sec-WebSocket-Protocol offer too long", status=400,
                             public_reason="Bad Request: Sec-WebSocket-Protocol too long")
    return UpgradeRequest(
        host=_single(headers, b"host") or "",
        subprotocols=offer,
        bearer_token=bearer_token(headers),
        user_agent=_single(headers, b"user-agent"),
    )


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None without the header."""
    value = _single(headers, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization header is not 'Bearer <token>'", status=401,
                        public_reason="Unauthorized: use 'Authorization: Bearer <token>'")
    return token.strip()
