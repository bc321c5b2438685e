"""The client's request head and upgrade, sans-I/O: the relay's one verdict on a handshake.

The gate parses a request head with llhttp (edge/http.py); the checks here decide, once, whether it is
acceptable. picows never sees the client's own head: for an accepted upgrade the gate
hands it a canonical one (``canonical_upgrade_head``) built from what was checked here,
so the two can never disagree (a head refused by picows' stricter parser after the bot
was contacted was a real bug: ``Connection: keep-alive, Upgrade``, LF-only line ends).

Compression extensions are never negotiated (frames are relayed, not re-encoded), so
``Sec-WebSocket-Extensions`` is simply not forwarded.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import AuthError, RequestRefused

MAX_SUBPROTOCOLS_HEADER = 1024
MAX_HEADERS = 100               # header lines per request head (431 beyond); picows allows 128

# Headers that never reach the bot (docs/endpoints.md): hop-by-hop ones (RFC 9110 §7.6.1), the
# handshake's own, the token's Authorization, and everything the relay itself asserts
# (a client must not be able to forge where it came from or which session it is).
NOT_FORWARDED = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
    "sec-websocket-key", "sec-websocket-accept", "sec-websocket-extensions",
    "sec-websocket-version", "sec-websocket-protocol", "authorization",
    "forwarded", "x-real-ip", "x-session-id", "x-service-host", "x-daily-session-id",
    "x-wsrelay-resume", "x-wsrelay-hop",
})
NOT_FORWARDED_PREFIXES = ("x-forwarded-",)

# Field values may hold visible ASCII, space, tab and obs-text; any other control byte
# (NUL, CR, ESC, DEL ...) is refused rather than passed to a bot that may choke on it.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class UpgradeRequest:
    """What the relay needs from a client's handshake."""

    host: str
    key: str                       # Sec-WebSocket-Key, validated: 16 bytes in base64
    subprotocols: str | None       # the Sec-WebSocket-Protocol offer, as sent
    bearer_token: str | None       # from Authorization: Bearer
    user_agent: str | None
    forward: tuple[tuple[str, str], ...] = field(default=())   # end-to-end headers for the bot


@dataclass(frozen=True)
class ResumeUpgrade(UpgradeRequest):
    """A handshake with ``X-Wsrelay-Resume`` (docs/resume.md). Its own class, so every other
    handshake carries no more fields than before."""

    resume_token: str = ""


def header_values(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Every value of header ``name`` (lower-case), decoded as latin-1."""
    return [v.decode("latin-1") for n, v in headers if n == name]


def _by_name(raw: Sequence[tuple[bytes, bytes]]) -> dict[bytes, list[str]]:
    """Lower-cased name -> its values (latin-1), in order: one pass over a head's headers."""
    index: dict[bytes, list[str]] = {}
    for name, value in raw:
        index.setdefault(name.lower(), []).append(value.decode("latin-1"))
    return index


def _single(index: dict[bytes, list[str]], name: bytes) -> str | None:
    values = index.get(name)
    if values is None:
        return None
    if len(values) > 1:
        raise RequestRefused(f"header {name.decode()} given {len(values)} times", status=400,
                             public_reason=f"Bad Request: repeated {name.decode()} header")
    return values[0]


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",") if t.strip()}


def check_head(head: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Rules for every request head, whatever the endpoint; RequestRefused otherwise.

    ``head`` is the raw head as received, ``headers`` its parsed (name, value) pairs.
    """
    check_raw_head(head)
    check_headers(headers)


def check_raw_head(head: bytes) -> None:
    """The rule only the raw bytes show: no obsolete line folding (a parser unfolds or rejects it)."""
    if b"\n " in head or b"\n\t" in head:
        raise RequestRefused("obsolete line folding in the request head", status=400,
                             public_reason="Bad Request: folded header lines are not allowed")


def check_headers(headers: Sequence[tuple[bytes, bytes]]) -> None:
    """At most ``MAX_HEADERS`` header lines, and no control character in a value."""
    if len(headers) > MAX_HEADERS:
        raise RequestRefused(f"{len(headers)} header lines, at most {MAX_HEADERS} allowed", status=431,
                             public_reason="Request Header Fields Too Large: too many headers")
    for name, value in headers:
        if _CONTROL.search(value):
            raise RequestRefused(f"control character in header {name.decode('latin-1')}", status=400,
                                 public_reason="Bad Request: control character in a header value")


def declares_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """True when the head announces a body (any Transfer-Encoding, or a non-zero length).

    Names in any case: the reader's lower-cased pairs and the client's own spelling alike."""
    for name, value in headers:
        name = name.lower()
        if name == b"transfer-encoding":
            return True
        if name == b"content-length" and value.strip(b"0"):
            return True
    return False


def parse_upgrade(method: bytes, headers: Sequence[tuple[bytes, bytes]], *,
                  http_version: bytes = b"1.1") -> UpgradeRequest:
    """Validate a WebSocket upgrade request (RFC 6455 §4.2.1); 400/405/426 otherwise."""
    # ``headers`` as the client spelled them (forwarded so); looked up lower-cased, from one pass.
    raw = headers
    index = _by_name(raw)
    if method != b"GET":
        raise RequestRefused(f"method {method.decode('latin-1')} on a WebSocket endpoint",
                             status=405, public_reason="Method Not Allowed: use GET with a WebSocket upgrade",
                             headers={"Allow": "GET"})
    if http_version != b"1.1":
        raise RequestRefused(f"HTTP/{http_version.decode('latin-1')} upgrade request", status=400,
                             public_reason="Bad Request: a WebSocket upgrade needs HTTP/1.1")
    if declares_body(raw):
        raise RequestRefused("upgrade request with a body", status=400,
                             public_reason="Bad Request: a WebSocket upgrade request has no body")
    upgrade = _tokens(", ".join(index.get(b"upgrade", ())))
    connection = _tokens(", ".join(index.get(b"connection", ())))
    if "websocket" not in upgrade or "upgrade" not in connection:
        raise RequestRefused("not a WebSocket upgrade request", status=426,
                             public_reason="Upgrade Required: connect with a WebSocket client",
                             headers={"Upgrade": "websocket", "Connection": "Upgrade"})
    version = _single(index, b"sec-websocket-version")
    if version is None or version.strip() != "13":
        raise RequestRefused(f"unsupported Sec-WebSocket-Version {version!r}", status=426,
                             public_reason="Upgrade Required: WebSocket version 13 only",
                             headers={"Sec-WebSocket-Version": "13"})
    key = _single(index, b"sec-websocket-key")
    try:
        if key is None or len(base64.b64decode(key.strip(), validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise RequestRefused("missing or invalid Sec-WebSocket-Key", status=400,
                             public_reason="Bad Request: invalid Sec-WebSocket-Key") from None
    protocols = index.get(b"sec-websocket-protocol", ())
    offer = ", ".join(p.strip() for p in protocols if p.strip()) or None
    if offer is not None and len(offer) > MAX_SUBPROTOCOLS_HEADER:
        raise RequestRefused("Sec-WebSocket-Protocol offer too long", status=400,
                             public_reason="Bad Request: Sec-WebSocket-Protocol too long")
    request = UpgradeRequest(
        host=_single(index, b"host") or "",
        key=key.strip(),
        subprotocols=offer,
        bearer_token=_bearer(_single(index, b"authorization")),
        user_agent=_single(index, b"user-agent"),
        forward=end_to_end_headers(raw, connection),
    )
    if b"x-wsrelay-resume" in index:                # a client coming back to its session
        return ResumeUpgrade(request.host, request.key, request.subprotocols, request.bearer_token,
                             request.user_agent, request.forward, _single(index, b"x-wsrelay-resume") or "")
    return request


def end_to_end_headers(raw_headers, connection_tokens: set[str]) -> tuple[tuple[str, str], ...]:
    """The client's headers the bot gets, in order and with their original spelling.

    ``raw_headers`` holds (name, value) pairs as the client cased them. Left out: the
    ``NOT_FORWARDED`` set, any ``X-Forwarded-*``, and headers the client itself named
    as hop-by-hop in ``Connection``. Values are forwarded byte for byte; picows writes the
    bot's handshake as UTF-8, so a value that is not UTF-8 could not be, and is left out.
    """
    forward = []
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("ascii").lower()
        if (name in NOT_FORWARDED or name.startswith(NOT_FORWARDED_PREFIXES)
                or name in connection_tokens):
            continue
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            continue
        forward.append((raw_name.decode("ascii"), value))
    return tuple(forward)


def canonical_upgrade_head(key: str) -> bytes:
    """The request head picows is handed for an accepted upgrade (see module docstring).

    Only the key matters to picows (it answers with its accept hash); the path and the
    rest were already decided by the relay.
    """
    return (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key.encode("ascii") + b"\r\n\r\n")


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The token of ``Authorization: Bearer <token>``; None without the header."""
    return _bearer(_single(_by_name(headers), b"authorization"))


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    token = parse_bearer(value)
    if token is None:
        raise AuthError("Authorization header is not 'Bearer <token>'", status=401,
                        public_reason="Unauthorized: use 'Authorization: Bearer <token>'")
    return token


def parse_bearer(value: str) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` value; None for any other form.

    The one Bearer parser: WebSocket tokens and the start API's public keys both use it.
    """
    scheme, _, credential = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()
