"""Routing, sans-I/O: a request target (path + query) to the service host it names.

The endpoints (docs/endpoints.md)::

    /ws/generic/{agent}.{org}                 service host in the path
    /ws/generic/{agent}.{org}/{token}         ... plus the token as an extra segment
    /ws/generic?serviceHost={agent}.{org}     service host in the query
    /ws/generic/{token}?serviceHost=...       ... plus the token as a segment

and the telephony providers' endpoints (docs/telephony.md, telephony/providers.py)::

    /ws/{telnyx|plivo|exotel}?serviceHost={agent}.{org}     routed before the upgrade
    /ws/{telnyx|plivo|exotel}/{token}?serviceHost=...       ... with the token as a segment
    /ws/twilio  (or /ws/twilio/{token})                     routed on its start message

``token`` and ``serviceHost`` are taken out of the query; every other parameter reaches
the bot exactly as the client encoded it (so ``?body=<base64 JSON>`` arrives as ``body``).
Malformed is 400, anything that is not one of these paths is 404, and whether the
service host exists is the registry's question, not this module's.

``ENDPOINTS`` is the table of every path the relay serves: each entry says what kind of
endpoint it is and when its requests are routed (before the upgrade, from the path and
query; or, for Twilio, after the client's first messages). The relay dispatches on it;
no other module spells a path prefix.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from urllib.parse import unquote

from ..errors import RouteError

# \Z, not $: "$" also matches before a final newline, which would let "demo\n" through.
GENERIC_PREFIX = "/ws/generic"
START_API = re.compile(r"/v1/public/([^/]+)/start\Z")
# /v1/public/{agent}/sessions/{sessionId}/{path}: everything after the id is the bot's path.
SESSION_API = re.compile(r"/v1/public/([^/]+)/sessions/([^/]+)(/.*)?\Z", re.S)


class EndpointKind(enum.Enum):
    GENERIC = "generic"          # the generic WebSocket endpoint (docs/endpoints.md)
    START_API = "start api"      # POST /v1/public/{agent}/start (docs/tokens.md)
    PROVIDER = "provider"        # /ws/{provider}: a provider's media stream (docs/telephony.md)
    SESSION_API = "session api"  # /v1/public/{agent}/sessions/{id}/{path} (docs/session-api.md)


class RouteAt(enum.Enum):
    """When a request to an endpoint learns its agent."""

    BEFORE_UPGRADE = "before upgrade"              # from the path and query
    AFTER_FIRST_MESSAGES = "after first messages"  # from the client's first frames (Twilio)
    NOT_ROUTED = "not routed"                      # plain HTTP, answered at once


@dataclass(frozen=True)
class Endpoint:
    kind: EndpointKind
    pattern: re.Pattern          # the whole path must match
    websocket: bool
    route_at: RouteAt
    provider: str | None = None  # PROVIDER endpoints: the key of core/telephony.PROVIDERS

    def matches(self, path: str) -> bool:
        return self.pattern.match(path) is not None


ENDPOINTS = (
    Endpoint(EndpointKind.GENERIC, re.compile(re.escape(GENERIC_PREFIX) + r"(/.*)?\Z", re.S),
             websocket=True, route_at=RouteAt.BEFORE_UPGRADE),
    Endpoint(EndpointKind.START_API, START_API, websocket=False, route_at=RouteAt.NOT_ROUTED),
    Endpoint(EndpointKind.SESSION_API, SESSION_API, websocket=False, route_at=RouteAt.NOT_ROUTED),
    Endpoint(EndpointKind.PROVIDER, re.compile(r"/ws/twilio(/.*)?\Z", re.S), websocket=True,
             route_at=RouteAt.AFTER_FIRST_MESSAGES, provider="twilio"),
    *(Endpoint(EndpointKind.PROVIDER, re.compile(rf"/ws/{name}(/.*)?\Z", re.S), websocket=True,
               route_at=RouteAt.BEFORE_UPGRADE, provider=name) for name in ("telnyx", "plivo", "exotel")),
)


def find_endpoint(path: str) -> Endpoint | None:
    """The endpoint serving ``path``, or None (404)."""
    for endpoint in ENDPOINTS:
        if endpoint.matches(path):
            return endpoint
    return None
LABEL = re.compile(r"[a-z0-9-]{1,63}\Z")
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_.\-]+\Z")
MAX_QUERY_FIELDS = 64
MAX_BODY_BYTES = 4096             # ?body=: the platform's limit ([relay] max_body_bytes)


@dataclass(frozen=True)
class Route:
    """Where a WebSocket request goes, and what of it is passed on."""

    agent: str
    organization: str
    token: str | None             # from the path segment or ?token=; the header is separate
    token_source: str | None      # "path", "query" or None
    forward_query: str            # the query string for the bot, without token/serviceHost

    @property
    def service_host(self) -> str:
        return f"{self.agent}.{self.organization}"


def split_target(target: str) -> tuple[str, str]:
    """Split a request target into (path, raw query); reject absolute forms and fragments."""
    if not target.startswith("/"):
        raise RouteError(f"request target {target[:80]!r} is not an absolute path",
                         status=400, public_reason="Bad Request: malformed request target")
    if "#" in target:
        raise RouteError("request target contains a fragment", status=400,
                         public_reason="Bad Request: malformed request target")
    path, _, query = target.partition("?")
    return path, query


def parse_service_host(value: str) -> tuple[str, str]:
    """``agent.org`` → (agent, org), split at the last dot; 400 when malformed.

    ASCII is checked before lower-casing: ``str.lower`` maps some non-ASCII letters to
    ASCII ones (KELVIN SIGN → ``k``), which would route a look-alike name.
    """
    if not value.isascii():
        raise RouteError(f"malformed service host {value[:140]!r}: only ASCII a-z, 0-9, '-' and "
                         "one '.' are allowed", status=400,
                         public_reason="Bad Request: malformed service host")
    value = value.lower()
    agent, dot, org = value.rpartition(".")
    if not dot or not LABEL.match(agent) or not LABEL.match(org):
        raise RouteError(
            f"malformed service host {value[:140]!r}: expected '{{agent}}.{{organization}}' "
            "with each part 1-63 characters of a-z, 0-9 and '-'",
            status=400, public_reason="Bad Request: malformed service host")
    return agent, org


def _routing_query(query: str, max_body: int) -> tuple[str | None, str | None, str]:
    """(serviceHost, token, the rest of the query as sent) — each of the first two None when
    absent, refused when repeated. The rest is forwarded to the bot byte for byte, but a
    ``body`` whose decoded size is over ``max_body`` is refused (413), as the platform does."""
    fields = _split_query(query)
    if "body=" in query:
        _check_body(fields, max_body)
    service_hosts = [v for n, v, _ in fields if n == "serviceHost"]
    query_tokens = [v for n, v, _ in fields if n == "token"]
    if len(service_hosts) > 1 or len(query_tokens) > 1:
        raise RouteError("serviceHost or token given more than once", status=400,
                         public_reason="Bad Request: repeated serviceHost or token parameter")
    forward = "&".join(raw for n, _, raw in fields if n not in ("serviceHost", "token"))
    return (service_hosts[0] if service_hosts else None, query_tokens[0] if query_tokens else None, forward)


def body_size(value: str) -> int:
    """The bytes a ``?body=`` value (base64, padded or not) decodes to: its characters but the
    padding, times 3/4. A start API body that fits fits here too (4,096 bytes are 5,464
    characters); a value that is not base64 is measured the same way."""
    return len(value.rstrip("=")) * 3 // 4


def _check_body(fields: list[tuple[str, str, str]], max_body: int) -> None:
    for name, value, _ in fields:
        if name == "body" and body_size(value) > max_body:
            raise RouteError(f"?body= of {len(value)} characters decodes to {body_size(value)} bytes, "
                             f"over max_body_bytes = {max_body}", status=413,
                             public_reason=f"Content Too Large: ?body= decodes to over {max_body} bytes")


def _check_segments(segments: list[str]) -> None:
    """Path segments are taken as sent: a percent-encoded one is refused, never decoded."""
    if any("%" in s for s in segments):
        raise RouteError("percent-encoded characters in the path", status=400,
                         public_reason="Bad Request: malformed path")


def _split_query(query: str) -> list[tuple[str, str, str]]:
    """(decoded name, decoded value, raw item) for each '&'-separated item of the query."""
    if not query:
        return []
    items = query.split("&")
    if len(items) > MAX_QUERY_FIELDS:
        raise RouteError(f"query string has {len(items)} fields, at most {MAX_QUERY_FIELDS} allowed",
                         status=400, public_reason="Bad Request: too many query parameters")
    result = []
    for raw in items:
        if not raw:
            continue
        name, _, value = raw.partition("=")
        result.append((unquote(name.replace("+", " ")), unquote(value.replace("+", " ")), raw))
    return result


def _check_token_shape(token: str) -> str:
    if not TOKEN_CHARS.match(token):
        raise RouteError("token contains characters outside base64url and '.'", status=400,
                         public_reason="Bad Request: malformed token")
    return token


def route_websocket(target: str, *, max_body: int = MAX_BODY_BYTES) -> Route:
    """Route a WebSocket upgrade request's target; raises RouteError (400/404, 413 for a ``?body=``
    over ``max_body`` decoded bytes)."""
    path, query = split_target(target)
    if path != GENERIC_PREFIX and not path.startswith(GENERIC_PREFIX + "/"):
        raise RouteError(f"no endpoint at {path[:200]!r}", status=404, public_reason="Not Found")
    segments = [s for s in path[len(GENERIC_PREFIX):].split("/")]
    # "/ws/generic" → [""], "/ws/generic/a.b" → ["", "a.b"], "/ws/generic/a.b/tok" → ["", "a.b", "tok"]
    segments = segments[1:]
    if segments and segments[-1] == "" and len(segments) <= 3:
        segments = segments[:-1]          # tolerate one trailing slash
    if any(s == "" for s in segments) or len(segments) > 2:
        raise RouteError(f"no endpoint at {path[:200]!r}", status=404, public_reason="Not Found")
    _check_segments(segments)

    service_host, query_token, forward = _routing_query(query, max_body)

    token = None
    source = None
    if service_host is not None:
        if len(segments) > 1:
            raise RouteError("service host given both in the path and as serviceHost",
                             status=400, public_reason="Bad Request: service host given twice")
        agent, org = parse_service_host(service_host)
        if segments:
            token, source = _check_token_shape(segments[0]), "path"
    else:
        if not segments:
            raise RouteError("no service host: use /ws/generic/{agent}.{org} or ?serviceHost=",
                             status=400, public_reason="Bad Request: missing service host")
        agent, org = parse_service_host(segments[0])
        if len(segments) == 2:
            token, source = _check_token_shape(segments[1]), "path"
    if query_token is not None:
        if token is not None:
            raise RouteError("token given both in the path and as ?token=", status=400,
                             public_reason="Bad Request: token given twice")
        if query_token:
            token, source = _check_token_shape(query_token), "query"
    if "resume" in forward or "received" in forward:
        return _resume_route(Route(agent, org, token, source, forward))
    return Route(agent, org, token, source, forward)


MAX_RECEIVED = 1 << 62


@dataclass(frozen=True)
class ResumeRoute(Route):
    """A generic route with ``?resume=`` (docs/resume.md): a client coming back to its session.
    Its own class, so the routes of every other request carry no more fields than before."""

    resume: str | None = None     # the session resume token
    received: int | None = None   # ?received=: the messages the client has from the bot


def _resume_route(route: Route) -> Route:
    """A generic route whose query may hold ``resume`` and ``received`` (docs/resume.md): both
    taken out of what the bot gets; malformed or repeated is 400."""
    fields = _split_query(route.forward_query)
    resumes = [v for n, v, _ in fields if n == "resume"]
    receiveds = [v for n, v, _ in fields if n == "received"]
    if len(resumes) > 1 or len(receiveds) > 1:
        raise RouteError("resume or received given more than once", status=400,
                         public_reason="Bad Request: repeated resume or received parameter")
    received = None
    if receiveds:
        text = receiveds[0]
        if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) > MAX_RECEIVED:
            raise RouteError(f"received={text[:40]!r} is not a count", status=400,
                             public_reason="Bad Request: received must be a count of messages (0, 1, 2 ...)")
        received = int(text)
        if not resumes:
            raise RouteError("received without resume", status=400,
                             public_reason="Bad Request: received goes with resume")
    forward = "&".join(raw for n, _, raw in fields if n not in ("resume", "received"))
    if not resumes:
        return Route(route.agent, route.organization, route.token, route.token_source, forward)
    return ResumeRoute(route.agent, route.organization, route.token, route.token_source, forward,
                       _check_token_shape(resumes[0]), received)


def route_provider(target: str, provider: str, *, service_host_in_query: bool,
                   max_body: int = MAX_BODY_BYTES) -> Route | HeldRoute:
    """Route a provider endpoint's target: ``/ws/{provider}[/{token}][?query]``.

    Telnyx, Plivo and Exotel name the agent with ``?serviceHost=`` (400 without it), like
    the generic endpoint. Twilio cannot send a query string: its agent comes from the
    start message, so what is known now (token, the query to forward) is a ``HeldRoute``.
    """
    path, query = split_target(target)
    prefix = f"/ws/{provider}"
    rest = path[len(prefix):]
    if rest and not rest.startswith("/"):
        raise RouteError(f"no endpoint at {path[:200]!r}", status=404, public_reason="Not Found")
    segments = [s for s in rest.split("/")[1:]]
    if segments and segments[-1] == "":
        segments = segments[:-1]          # tolerate one trailing slash
    if len(segments) > 1 or any(s == "" for s in segments):
        raise RouteError(f"no endpoint at {path[:200]!r}", status=404, public_reason="Not Found")
    _check_segments(segments)
    service_host, query_token, forward = _routing_query(query, max_body)
    token, source = None, None
    if segments:
        token, source = _check_token_shape(segments[0]), "path"
    if query_token:
        if token is not None:
            raise RouteError("token given both in the path and as ?token=", status=400,
                             public_reason="Bad Request: token given twice")
        token, source = _check_token_shape(query_token), "query"
    if not service_host_in_query:
        if service_host is not None:
            raise RouteError(f"serviceHost on /ws/{provider}: its start message names the agent",
                             status=400, public_reason="Bad Request: no serviceHost on this endpoint")
        return HeldRoute(token, source, forward)
    if service_host is None:
        raise RouteError(f"no service host: use /ws/{provider}?serviceHost={{agent}}.{{org}}",
                         status=400, public_reason="Bad Request: missing service host")
    agent, org = parse_service_host(service_host)
    return Route(agent, org, token, source, forward)


@dataclass(frozen=True)
class HeldRoute:
    """What a Twilio target says before its start message names the agent."""

    token: str | None
    token_source: str | None
    forward_query: str

    def complete(self, agent: str, organization: str) -> Route:
        return Route(agent, organization, self.token, self.token_source, self.forward_query)


def route_start_api(path: str) -> str | None:
    """The agent name of a ``/v1/public/{agent}/start`` path, or None for other paths."""
    match = START_API.match(path)
    return match.group(1) if match else None


@dataclass(frozen=True)
class SessionApiTarget:
    """What a Session API path names: the agent (by name, as the start API), the session and
    the bot's own path (``/`` when the request names none)."""

    agent_name: str
    session_id: str
    path: str


def route_session_api(path: str) -> SessionApiTarget | None:
    """The parts of a ``/v1/public/{agent}/sessions/{sessionId}/{path}`` path, or None for other paths."""
    match = SESSION_API.match(path)
    if match is None:
        return None
    return SessionApiTarget(match.group(1), match.group(2), match.group(3) or "/")
