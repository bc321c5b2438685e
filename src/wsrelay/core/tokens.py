"""Session tokens, sans-I/O: mint and verify (docs/tokens.md).
No clock, no state, no I/O.

    token = base64url(payload_json) "." base64url(HMAC-SHA256(key, base64url(payload_json)))

without padding; payload ``{"sh": "agent.org", "exp": unix seconds, "nonce": random,
"kid": key id}`` and optionally ``"sid"`` (a session id). A *resume token* (docs/resume.md) is
the same envelope with ``"typ": "resume"`` and a required ``"sid"``: it names a live session
to come back to, never admits a new one, so each kind refuses the other. The signature is checked with
``hmac.compare_digest`` *before* any claim is trusted; the key id is the only field read
before that, to pick the key. Every failure is an ``AuthError`` (403) whose message is for
the log; the client only learns "Forbidden". Replay protection (single-use nonces) needs
state and lives in nonces.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import AuthError, TokenError

MAX_TOKEN_CHARS = 2048
MAX_NONCE_CHARS = 128
MAX_SID_CHARS = 128
_B64URL = re.compile(r"[A-Za-z0-9_-]+\Z")


RESUME_TYPE = "resume"


@dataclass(frozen=True)
class TokenClaims:
    service_host: str
    exp: int
    nonce: str
    kid: str
    session_id: str | None = None


@dataclass(frozen=True)
class ResumeClaims:
    """A verified resume token: the session it names (on the agent ``service_host``)."""

    service_host: str
    session_id: str
    exp: int
    nonce: str
    kid: str


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signed_part: str) -> bytes:
    return hmac.new(secret.encode(), signed_part.encode("ascii"), hashlib.sha256).digest()


def mint_token(service_host: str, *, keys: Mapping[str, str], active_key: str, ttl: int, now: float,
               session_id: str | None = None, nonce: str | None = None) -> str:
    """A token for ``service_host`` valid for ``ttl`` seconds from ``now``, signed with ``active_key``."""
    if not active_key or active_key not in keys:
        raise TokenError(f"no signing key {active_key!r}: set [auth] secret (or keys and active_key) "
                         "or WSRELAY_AUTH_SECRET")
    if ttl <= 0:
        raise TokenError(f"token lifetime must be positive, got {ttl}")
    claims = {"sh": service_host, "exp": int(now) + int(ttl),
              "nonce": nonce or secrets.token_urlsafe(18), "kid": active_key}
    if session_id is not None:
        claims["sid"] = session_id
    return _signed(claims, keys[active_key])


def mint_resume_token(service_host: str, session_id: str, *, keys: Mapping[str, str], active_key: str,
                      ttl: int, now: float, nonce: str | None = None) -> str:
    """A resume token for the live session ``session_id`` of ``service_host``, valid ``ttl`` seconds."""
    if not active_key or active_key not in keys:
        raise TokenError(f"no signing key {active_key!r} for resume tokens")
    if ttl <= 0:
        raise TokenError(f"token lifetime must be positive, got {ttl}")
    if not session_id or len(session_id) > MAX_SID_CHARS:
        raise TokenError("a resume token needs a session id of 1-128 characters")
    claims = {"typ": RESUME_TYPE, "sh": service_host, "sid": session_id, "exp": int(now) + int(ttl),
              "nonce": nonce or secrets.token_urlsafe(18), "kid": active_key}
    return _signed(claims, keys[active_key])


def _signed(claims: dict, secret: str) -> str:
    payload = _b64encode(json.dumps(claims, separators=(",", ":")).encode())
    return f"{payload}.{_b64encode(_sign(secret, payload))}"


def missing_token_error() -> AuthError:
    return AuthError("no token: the agent requires one", status=401,
                     public_reason="Unauthorized: this agent requires a token")


def _refuse(reason: str) -> AuthError:
    return AuthError(reason, status=403)


def _decode_json(payload: str) -> dict:
    try:
        claims = json.loads(_b64decode(payload))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        # RecursionError: deeply nested JSON ("[[[[..."), sent before any signature check.
        raise _refuse("token payload is not base64url JSON") from None
    if not isinstance(claims, dict):
        raise _refuse("token payload is not a JSON object")
    return claims


def verify_token(token: str, *, service_host: str, keys: Mapping[str, str], now: float,
                 leeway: int) -> TokenClaims:
    """The claims of a valid token for ``service_host``; AuthError (403) otherwise."""
    claims = _signed_claims(token, keys)
    if "typ" in claims:
        raise _refuse(f"a {str(claims['typ'])[:20]!r} token cannot start a session")
    sh, exp, nonce, sid = _common_claims(claims, service_host, now, leeway)
    return TokenClaims(sh, exp, nonce, str(claims["kid"]), sid)


def verify_resume_token(token: str, *, service_host: str, keys: Mapping[str, str], now: float,
                        leeway: int) -> ResumeClaims:
    """The claims of a valid resume token for a session of ``service_host``; AuthError (403)
    otherwise. Whether the session is live, and the token its current one, is the caller's."""
    claims = _signed_claims(token, keys)
    if claims.get("typ") != RESUME_TYPE:
        raise _refuse("not a resume token")
    sh, exp, nonce, sid = _common_claims(claims, service_host, now, leeway)
    if not sid:
        raise _refuse("resume token names no session ('sid')")
    return ResumeClaims(sh, sid, exp, nonce, str(claims["kid"]))


def _signed_claims(token: str, keys: Mapping[str, str]) -> dict:
    """The payload of a token whose signature matches one of ``keys``; AuthError (403) otherwise."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise _refuse(f"token longer than {MAX_TOKEN_CHARS} characters")
    payload, dot, signature = token.partition(".")
    if not dot or "." in signature or not _B64URL.match(payload) or not _B64URL.match(signature):
        raise _refuse("token is not two base64url parts joined by '.'")
    claims = _decode_json(payload)
    kid = claims.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise _refuse(f"token signed with unknown key id {str(kid)[:40]!r}")
    # Compare the canonical text, not decoded bytes: the last base64url character of a
    # 32-byte signature has 2 unused bits, so 4 spellings would decode to the same bytes.
    expected = _b64encode(_sign(keys[kid], payload))
    if not hmac.compare_digest(signature.encode("ascii"), expected.encode("ascii")):
        raise _refuse("token signature does not match")
    return claims


def _common_claims(claims: dict, service_host: str, now: float, leeway: int) -> tuple[str, int, str, str | None]:
    """(sh, exp, nonce, sid) of signed claims, each checked; expiry and agent too."""
    sh, exp, nonce, sid = claims.get("sh"), claims.get("exp"), claims.get("nonce"), claims.get("sid")
    if not isinstance(sh, str):
        raise _refuse("token has no service host claim 'sh'")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise _refuse("token claim 'exp' is not an integer")
    if not isinstance(nonce, str) or not 1 <= len(nonce) <= MAX_NONCE_CHARS:
        raise _refuse("token claim 'nonce' is missing or too long")
    if sid is not None and (not isinstance(sid, str) or len(sid) > MAX_SID_CHARS):
        raise _refuse("token claim 'sid' is not a short string")
    if exp + leeway < now:
        raise _refuse(f"token expired {int(now - exp)}s ago")
    if sh != service_host:
        raise _refuse(f"token is for another agent ({sh[:140]!r}, not {service_host!r})")
    return sh, exp, nonce, sid


def nonce_lifetime(claims: TokenClaims | ResumeClaims, now: float, leeway: int) -> float:
    """How long the nonce must be remembered: as long as the token could still verify.

    One second more than that: a token still verifies at the very instant
    ``now == exp + leeway``, and the store forgets a nonce at its deadline.
    """
    return max(1.0, claims.exp + leeway - now + 1.0)
