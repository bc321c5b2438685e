"""The Session API, sans-I/O (docs/session-api.md): who may call it, and what goes to the bot.

``/v1/public/{agent}/sessions/{sessionId}/{path}`` reaches the one bot instance that serves
the live session ``sessionId``, on the same HTTP server as the bot's WebSocket: the
instance's origin (``ws://h:p/ws`` → ``http://h:p``, ``wss`` → ``https``) plus ``/{path}``
and the query as sent. Here: the caller's public key against the agent's (401 missing, 403
not the agent's, 404 unknown agent or the Session API off for it), the session's id, the
request the bot gets (its headers: the caller's, less ``Host``, ``Content-Length``,
``Authorization`` and hop-by-hop ones, plus ``X-Session-Id`` and ``X-Daily-Session-Id``)
and the headers of the bot's answer that go back (less hop-by-hop ones). The I/O is
edge/session_api.py's; where a session is, the relay's book or fleet/session_directory.py.

Every refusal is a ``RequestRefused`` with the status and a sentence the caller can act on.
"""

from __future__ import annotations

import hmac
import json
import re
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

from ..config import AgentConfig
from ..core.upgrade import parse_bearer
from ..errors import RequestRefused
from .registry import AgentRegistry

# RFC 9110 §7.6.1 and the proxies' usual list; any header a Connection header names is one too.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})
# Not passed to the bot: the relay sets Host and Content-Length itself, the public key stays
# here, and the session's id is the relay's to assert.
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "authorization", "x-session-id", "x-daily-session-id"}
# A bot's CORS headers make way for the relay's when the relay answers a page's origin.
CORS_PREFIX = "access-control-"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")


@dataclass(frozen=True)
class BotInstance:
    """Where a session's bot is: the upstream URL it was connected by, and the address (one of
    that host name's) it was connected to, or None when the URL's host was used as written.

    What the relay records on a session at connect, and what a fleet keeps in Redis
    (``to_text`` / ``from_text``) so that any relay reaches the same instance.
    """

    service_host: str
    url: str
    address: str | None = None

    def to_text(self) -> str:
        return json.dumps({"agent": self.service_host, "url": self.url, "address": self.address},
                          separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str | bytes) -> "BotInstance | None":
        """The instance a directory entry names, or None for an entry that is not one."""
        try:
            entry = json.loads(text)
            instance = cls(str(entry["agent"]), str(entry["url"]), entry.get("address"))
        except (ValueError, KeyError, TypeError):
            return None
        if instance.address is not None and not isinstance(instance.address, str):
            return None
        return instance


@dataclass(frozen=True)
class BotRequest:
    """The request for the bot: where to connect (``url``: the address when known, so a host name
    of many instances still reaches this one), the TLS name to check, and the headers."""

    url: str
    server_hostname: str | None            # https: the name its certificate is checked against
    headers: list[tuple[str, str]]


def authorize(registry: AgentRegistry, agent_name: str, authorization: str | None) -> AgentConfig:
    """The agent ``agent_name`` whose public key the caller presents, with the Session API on."""
    candidates = registry.find_by_name(agent_name)
    if not candidates:
        raise RequestRefused(f"Session API: unknown agent {agent_name[:100]!r}", status=404,
                             public_reason="Not Found: no such agent")
    if authorization is None or (key := parse_bearer(authorization)) is None:
        raise RequestRefused("Session API without a Bearer key", status=401,
                             public_reason="Unauthorized: send 'Authorization: Bearer <public key>' with one "
                                           "of the agent's public keys")
    presented = key.encode("utf-8", "surrogatepass")
    agent = next((a for a in candidates if any(hmac.compare_digest(presented, k.encode("utf-8", "surrogatepass"))
                                                for k in a.public_keys)), None)
    if agent is None:
        raise RequestRefused(f"Session API: wrong public key for {agent_name[:100]!r}", status=403,
                             public_reason="Forbidden: this key is not one of the agent's public keys")
    if not agent.session_api:
        raise RequestRefused(f"Session API: off for {agent.service_host}", status=404,
                             public_reason="Not Found: the Session API is off for this agent "
                                           "(its operator sets session_api = true)")
    return agent


def check_session_id(session_id: str) -> None:
    """Session ids are the relay's UUIDs (or a token's ``sid``): anything else names no session."""
    if not SESSION_ID.match(session_id):
        raise no_session(session_id)


def no_session(session_id: str) -> RequestRefused:
    return RequestRefused(f"Session API: no live session {session_id[:128]!r}", status=404,
                          public_reason="Not Found: no live session with this id (it has ended, or never "
                                        "started); start one and use the sessionId of its answer")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise RequestRefused(f"Session API: method {method[:20]!r}", status=405,
                             public_reason=f"Method Not Allowed: use one of {', '.join(METHODS)}",
                             headers={"Allow": ", ".join(METHODS)})


def bot_request(instance: BotInstance, *, path: str, query: str, session_id: str,
                headers: Sequence[tuple[bytes, bytes]]) -> BotRequest:
    """The request for the bot serving ``session_id`` at ``instance``: ``path`` and ``query`` as
    the caller sent them, on the instance's origin; ``headers`` the caller's (names as spelled)."""
    parts = urlsplit(instance.url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    connect_to = instance.address or host
    shown = f"[{connect_to}]" if ":" in connect_to else connect_to
    url = f"{'https' if secure else 'http'}://{shown}:{port}{path}" + (f"?{query}" if query else "")
    # The Host the bot's WebSocket got (picows' netloc): the URL's host[:port] as written.
    netloc = parts.netloc.rpartition("@")[2]
    forwarded = forward_headers(headers)
    forwarded += [("Host", netloc), ("X-Session-Id", session_id), ("X-Daily-Session-Id", session_id)]
    return BotRequest(url, host if secure else None, forwarded)


def forward_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """The caller's headers that reach the bot, in order and spelled as sent."""
    named = _connection_names(headers)
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers
            if (lower := name.lower().decode("latin-1")) not in NOT_FORWARDED and lower not in named]


def answer_headers(headers: Sequence[tuple[bytes, bytes]], *, relay_cors: bool) -> list[tuple[str, str]]:
    """The bot's answer's headers that go back: less hop-by-hop ones and ``Content-Length`` (the
    relay writes its own), and less the bot's ``Access-Control-*`` when the relay's CORS answers."""
    named = _connection_names(headers)
    kept = []
    for name, value in headers:
        lower = name.lower().decode("latin-1")
        if lower in HOP_BY_HOP or lower in named or lower == "content-length":
            continue
        if relay_cors and lower.startswith(CORS_PREFIX):
            continue
        kept.append((name.decode("latin-1"), value.decode("latin-1")))
    return kept


def _connection_names(headers: Sequence[tuple[bytes, bytes]]) -> set[str]:
    """The header names a ``Connection`` header lists: hop-by-hop for this message only."""
    return {token.strip().lower() for name, value in headers if name.lower() == b"connection"
            for token in value.decode("latin-1").split(",") if token.strip()}
