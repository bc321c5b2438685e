"""``POST /v1/public/{agent}/start``: the session start API, sans-I/O
(docs/tokens.md).

The caller authenticates with one of the agent's ``public_keys`` and gets a token, the
URL to connect to and a session id (the token carries it, so the bot's ``X-Session-Id``
equals it). With ``transport: "websocket"`` nothing is started: the bot starts when the
client connects. A ``body`` comes back base64-encoded; the client appends it as
``?body=`` when it connects, as the platform's clients do, and the bot receives it.

The request body is untrusted: whatever it holds (nesting thousands deep, NaN, bytes
that are not UTF-8), the answer is a RequestRefused with a 4xx status, never an
exception that would become a 500.
"""

from __future__ import annotations

import base64
import hmac
import json
from dataclasses import dataclass
from typing import Iterable

from .auth import Authenticator, no_signing_key
from ..config import Config
from ..core.session_ids import new_session_id
from ..core.upgrade import parse_bearer
from ..errors import RequestRefused
from .registry import AgentRegistry
from .resume_tokens import ResumeTokens

MAX_BODY_JSON = 4096          # the platform's limit for the session body
MAX_JSON_DEPTH = 64           # arrays and objects inside one another: a session body needs few


@dataclass(frozen=True)
class StartRequest:
    method: str
    agent_name: str
    authorization: str | None
    host: str | None
    body: bytes


def handle_start(request: StartRequest, *, registry: AgentRegistry, config: Config,
                 authenticator: Authenticator, secure: bool, resume_tokens: ResumeTokens | None = None) -> dict:
    """The JSON answer for a start request, or RequestRefused with the status to send."""
    if request.method != "POST":
        raise RequestRefused(f"{request.method} on the start API", status=405,
                             public_reason="Method Not Allowed: use POST", headers={"Allow": "POST"})
    candidates = registry.find_by_name(request.agent_name)
    if not candidates:
        raise RequestRefused(f"start API: unknown agent {request.agent_name!r}", status=404,
                             public_reason="Not Found: unknown agent")
    key = _bearer(request.authorization)
    presented = key.encode("utf-8", "surrogatepass")     # header text may hold anything
    agent = next((a for a in candidates if any(hmac.compare_digest(presented, k.encode("utf-8", "surrogatepass"))
                                                for k in a.public_keys)), None)
    if agent is None:
        raise RequestRefused(f"start API: wrong public key for {request.agent_name!r}", status=403,
                             public_reason="Forbidden: invalid public key")
    if agent.websocket_auth == "token" and not authenticator.can_mint():
        raise no_signing_key(agent, "issue")
    payload = _parse_json(request.body)
    transport = payload.get("transport", "websocket")
    if transport != "websocket":
        raise RequestRefused(f"start API: transport {transport!r}", status=400,
                             public_reason='Bad Request: this relay supports "transport": "websocket" only')
    session_id = new_session_id()
    answer: dict = {"wsUrl": _ws_url(config, request.host, secure, agent.service_host),
                    "sessionId": session_id}
    if "body" in payload:
        if agent.websocket_auth != "token":
            raise RequestRefused("start API: a body for an agent without token auth", status=400,
                                 public_reason='Bad Request: "body" needs an agent with websocket_auth = "token"')
        body_json = _encode_body(payload["body"])
        if len(body_json) > MAX_BODY_JSON:
            raise RequestRefused(f"start API: body of {len(body_json)} bytes", status=413,
                                 public_reason=f"Content Too Large: body over {MAX_BODY_JSON} bytes")
        answer["body"] = base64.b64encode(body_json).decode()
    if agent.websocket_auth == "token":
        answer["token"] = authenticator.mint(agent.service_host, session_id=session_id)
        if agent.resume_seconds and resume_tokens is not None:
            # The session's first resume token (docs/resume.md): a browser cannot read the 101's.
            answer["resumeToken"] = resume_tokens.mint(
                agent.service_host, session_id, authenticator.auth.token_ttl + agent.max_session_seconds
                + agent.resume_seconds + 60, first=True)[0]
    return answer


def _bearer(value: str | None) -> str:
    if value is None:
        raise RequestRefused("start API without Authorization", status=401,
                             public_reason="Unauthorized: send 'Authorization: Bearer <public key>'")
    key = parse_bearer(value)
    if key is None:
        raise RequestRefused("start API: Authorization is not Bearer", status=401,
                             public_reason="Unauthorized: send 'Authorization: Bearer <public key>'")
    return key


def _parse_json(body: bytes) -> dict:
    if len(body) > 2 * MAX_BODY_JSON:
        raise RequestRefused(f"start API: request of {len(body)} bytes", status=413,
                             public_reason="Content Too Large")
    if not body.strip():
        return {}
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise RequestRefused("start API: JSON nested too deeply", status=400,
                             public_reason="Bad Request: the JSON body is nested too deeply") from None
    except Exception as exc:          # ValueError, UnicodeDecodeError, or anything else json may raise
        raise RequestRefused(f"start API: malformed JSON ({type(exc).__name__})", status=400,
                             public_reason="Bad Request: the body is not valid JSON") from None
    if _deeper_than(payload, MAX_JSON_DEPTH):
        # The same answer on every Python: 3.11's parser gives up near 1,000 levels, 3.12's does not.
        raise RequestRefused("start API: JSON nested too deeply", status=400,
                             public_reason="Bad Request: the JSON body is nested too deeply")
    if not isinstance(payload, dict):
        raise RequestRefused("start API: JSON is not an object", status=400,
                             public_reason="Bad Request: the body must be a JSON object")
    return payload


def _deeper_than(value: object, limit: int) -> bool:
    """Whether ``value`` nests lists and dicts more than ``limit`` levels (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        children: Iterable[object] = item.values() if isinstance(item, dict) else item
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _refuse_constant(name: str):
    """NaN and Infinity are not JSON; Python's parser accepts them unless told not to."""
    raise ValueError(f"{name} is not valid JSON")


def _encode_body(body) -> bytes:
    """The session body as compact JSON; a body too deep to write again is a 400, not a 500."""
    try:
        return json.dumps(body, separators=(",", ":")).encode()
    except Exception as exc:          # RecursionError near the parser's own depth limit
        raise RequestRefused(f"start API: body cannot be encoded ({type(exc).__name__})", status=400,
                             public_reason='Bad Request: "body" is nested too deeply') from None


def _ws_url(config: Config, host: str | None, secure: bool, service_host: str) -> str:
    base = config.relay.public_url
    if base:
        # A fleet spread over regions ships one file: "wss://{region}.relay.example.com".
        base = base.replace("{region}", config.relay.region or "").rstrip("/")
        for old, new in (("https://", "wss://"), ("http://", "ws://")):
            if base.startswith(old):
                base = new + base[len(old):]
    else:
        base = f"{'wss' if secure else 'ws'}://{host or 'localhost'}"
    return f"{base}/ws/generic/{service_host}"
