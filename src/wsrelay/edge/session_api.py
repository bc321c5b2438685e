"""The Session API on the wire: HTTP to the bot instance of a live session (docs/session-api.md).

The relay's dispatch finds the endpoint; who may call and what the bot gets is
admission/session_api.py's (sans-I/O); CORS is core/cors.py's. Here the session is found —
in this relay's book of its live Session API sessions, else, in a fleet, in the session
directory (fleet/session_directory.py) — and the request is proxied to its instance with
aiohttp, the bot's status, headers and body coming back through the gate.

Every wait and buffer is bounded: the caller's body by the gate (``max_session_api_body``,
413 beyond it, read no further), the whole exchange with the bot by ``session_api_timeout``
(504), the bot's answer by ``max_session_api_body`` too (502 beyond it), and the connections
to each instance by ``CONNECTIONS_PER_INSTANCE`` (more requests wait for one, within the
timeout). aiohttp runs on the relay's loop like everything else and is imported with the
first Session API request: a relay whose agents do not use it never loads it. Nothing here
is on the frame path; a session costs one dict entry (and, in a fleet, its directory entry)
only when its agent has ``session_api = true``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any, Callable

from ..admission.registry import AgentRegistry
from ..admission.session_api import (METHODS, BotInstance, BotRequest, answer_headers, authorize, bot_request,
                                     check_method, check_session_id, no_session)
from ..core.cors import CorsPolicy
from ..core.routing import SessionApiTarget
from ..errors import RequestRefused
from ..fleet.redis_link import RedisDown
from .gate import Gate
from .http import header
from .http_endpoints import answer_preflight

if TYPE_CHECKING:
    from ..fleet.session_directory import SessionDirectory
    from .session import Session

log = logging.getLogger("wsrelay.session_api")

CONNECTIONS_PER_INSTANCE = 16        # open connections to one bot instance at most; more requests queue
CONNECTIONS = 512                    # to all instances together
PREFLIGHT_METHODS = ", ".join(m for m in METHODS if m != "OPTIONS")
NO_BODY_STATUSES = (204, 304)


class SessionApi:
    """The relay's Session API: its book of live sessions, the directory of a fleet's, the client."""

    def __init__(self, *, timeout: float, max_body: int, ssl_context: ssl.SSLContext | None,
                 directory: "SessionDirectory | None" = None) -> None:
        self.timeout = timeout
        self.max_body = max_body
        self.ssl_context = ssl_context
        self.directory = directory
        self.book: dict[str, "Session"] = {}       # id -> live session of a session_api agent
        self._http: Any = None                     # aiohttp.ClientSession, made on first use
        self._failures: tuple[type[BaseException], ...] = (OSError,)

    # -- the book -------------------------------------------------------------------------

    def live(self, session: "Session") -> None:
        """``session`` (its agent has the Session API on) has its bot: from now on it is found."""
        instance = session.instance
        if instance is None:
            return
        self.book[session.id] = session
        if self.directory is not None:
            self.directory.publish(session.id, BotInstance(session.agent.service_host, instance.url,
                                                           instance.address))

    def over(self, session: "Session") -> None:
        """``session`` ended: it is found no more (here at once; in the fleet's directory once deleted)."""
        if self.book.pop(session.id, None) is not None and self.directory is not None:
            self.directory.withdraw(session.id)

    async def locate(self, session_id: str) -> BotInstance | None:
        """The instance serving ``session_id``: this relay's own first, then the fleet's directory."""
        session = self.book.get(session_id)
        if session is not None:
            return BotInstance(session.agent.service_host, session.instance.url, session.instance.address)
        if self.directory is None:
            return None
        try:
            return await self.directory.lookup(session_id)
        except RedisDown as exc:
            raise RequestRefused(f"Session API: the session directory did not answer: {exc}", status=503,
                                 public_reason="Service Unavailable: the session cannot be looked up now, "
                                               "retry in a second", headers={"Retry-After": "1"}) from None

    # -- a request --------------------------------------------------------------------------

    async def answer(self, gate: Gate, target: SessionApiTarget, query: str, *, registry: AgentRegistry,
                     cors: CorsPolicy, refuse: Callable[[Gate, BaseException], None]) -> None:
        """Answer one Session API request on ``gate``: the bot's answer, or a refusal by ``refuse``."""
        request = gate.request
        assert request is not None
        cors_headers = cors.response_headers(header(request, b"origin"))
        try:
            if answer_preflight(gate, cors, PREFLIGHT_METHODS):
                return
            method = request.method.decode("latin-1")
            check_method(method)
            agent = authorize(registry, target.agent_name, header(request, b"authorization"))
            check_session_id(target.session_id)
            instance = await self.locate(target.session_id)
            if instance is None or instance.service_host != agent.service_host:
                raise no_session(target.session_id)
            bot = bot_request(instance, path=target.path, query=query, session_id=target.session_id,
                              headers=request.raw_headers)
            status, raw_headers, body = await self._send(method, bot, gate.body)
        except RequestRefused as exc:
            exc.headers.update(cors_headers)        # so a page can read why it was refused
            refuse(gate, exc)
            return
        except Exception as exc:                    # a bug: answer (500), never leave the caller waiting
            log.exception("Session API request failed unexpectedly")
            refuse(gate, exc)
            return
        headers = answer_headers(raw_headers, relay_cors=bool(cors_headers))
        if method == "HEAD" or status in NO_BODY_STATUSES:
            # No body: the bot's Content-Length (of the body a GET would get) stands.
            headers += [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw_headers
                        if n.lower() == b"content-length"][:1]
            body = b""
        else:
            headers.append(("Content-Length", str(len(body))))
        headers += cors_headers.items()
        gate.respond_raw(status, headers, body)

    async def _send(self, method: str, bot: BotRequest, body: bytes) -> tuple[int, list, bytes]:
        """Send ``bot`` and read its whole answer, both within ``timeout``; 502/504 otherwise."""
        import aiohttp
        from multidict import CIMultiDict
        from yarl import URL

        client = self._client()
        present = {name.lower() for name, _ in bot.headers}
        # aiohttp adds these when a request has none: the bot gets only what the caller sent.
        skip = [name for name in ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
                if name.lower() not in present]
        secure = bot.url.startswith("https:")
        try:
            async with asyncio.timeout(self.timeout):
                async with client.request(
                        method, URL(bot.url, encoded=True), headers=CIMultiDict(bot.headers),
                        data=body if body else None, skip_auto_headers=skip, allow_redirects=False,
                        ssl=(self.ssl_context or True) if secure else False,
                        server_hostname=bot.server_hostname) as response:
                    data = await self._read(response)
                    return response.status, list(response.raw_headers), data
        except TimeoutError:
            raise RequestRefused(f"Session API: the bot at {bot.url} did not answer within {self.timeout:g}s",
                                 status=504, public_reason="Gateway Timeout: the session's bot did not answer "
                                                           f"within {self.timeout:g} s") from None
        except self._failures as exc:
            raise RequestRefused(f"Session API: the bot at {bot.url} could not be reached: "
                                 f"{type(exc).__name__}: {exc}"[:300], status=502,
                                 public_reason="Bad Gateway: the session's bot could not be reached") from None
        except aiohttp.InvalidURL:
            raise RequestRefused(f"Session API: no URL can be made of {bot.url[:200]!r}", status=400,
                                 public_reason="Bad Request: malformed path") from None

    async def _read(self, response: Any) -> bytes:
        """The bot's body, at most ``max_body`` bytes (502 beyond: never held whole)."""
        length = response.content_length
        if length is not None and length > self.max_body:
            raise _too_large(self.max_body)
        data = bytearray()
        async for chunk in response.content.iter_any():
            data += chunk
            if len(data) > self.max_body:
                raise _too_large(self.max_body)
        return bytes(data)

    def _client(self) -> Any:
        if self._http is None:
            import aiohttp                   # here: a relay without Session API requests never imports it
            self._failures = (aiohttp.ClientError, OSError)
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=CONNECTIONS, limit_per_host=CONNECTIONS_PER_INSTANCE),
                cookie_jar=aiohttp.DummyCookieJar(),      # one caller's cookies never reach another's bot
                auto_decompress=False,                    # the body goes back as the bot sent it
                timeout=aiohttp.ClientTimeout(total=None))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def _too_large(limit: int) -> RequestRefused:
    return RequestRefused(f"Session API: the bot's answer is over max_session_api_body = {limit} bytes",
                          status=502, public_reason=f"Bad Gateway: the bot's answer is over {limit} bytes")
