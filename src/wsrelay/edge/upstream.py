"""The upstream connector: pick a bot instance of the agent, connect, negotiate.

Instances are tried round-robin from a rotating start, so sessions spread across an
agent's ``upstreams``; a refused or unreachable instance is skipped for the next one.
The outcome is the bot's ``WSTransport`` (its ``101`` has arrived and the pump's bot
side is already linked), or an ``UpstreamError`` whose ``status`` the client gets:
502 when no instance could be reached, 504 when connecting timed out, or the bot's
own HTTP status when it refused the upgrade.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
from typing import Callable

from picows import WSHandshakeError, WSListener, ws_connect

from ..errors import UpstreamRejected, UpstreamTimeout, UpstreamUnreachable

log = logging.getLogger("wsrelay.upstream")
# A LoggerAdapter stops picows from creating one child Logger per connection.
_picows_log = logging.LoggerAdapter(logging.getLogger("wsrelay.picows"), {})


def join_query(url: str, query: str) -> str:
    """``url`` with the client's query appended (after any query the URL already has)."""
    if not query:
        return url
    return f"{url}&{query}" if "?" in url else f"{url}?{query}"


class UpstreamConnector:
    """Connects sessions to bot instances; one per relay, state is the round-robin cursor."""

    def __init__(self, *, connect_timeout: float, max_frame_size: int, read_buffer_size: int,
                 ssl_context: ssl.SSLContext | None = None, keepalive_interval: float = 0.0,
                 keepalive_timeout: float = 10.0) -> None:
        self._keepalive = (keepalive_interval, keepalive_timeout)
        self._timeout = connect_timeout
        self._max_frame_size = max_frame_size
        self._read_buffer_size = read_buffer_size
        self._ssl_context = ssl_context
        self._cursors: dict[str, itertools.count] = {}

    def order(self, service_host: str, upstreams: tuple[str, ...]) -> list[str]:
        """The instances in the order to try them for the next session of this agent."""
        cursor = self._cursors.setdefault(service_host, itertools.count())
        start = next(cursor) % len(upstreams)
        return list(upstreams[start:] + upstreams[:start])

    async def connect(self, service_host: str, upstreams: tuple[str, ...], *, query: str,
                      headers: list[tuple[str, str]],
                      listener_factory: Callable[[object, object], WSListener]):
        """Open the bot's WebSocket; returns its WSTransport or raises UpstreamError."""
        timed_out = False
        for url in self.order(service_host, upstreams):
            full_url = join_query(url, query)
            try:
                async with asyncio.timeout(self._timeout):
                    transport, listener = await ws_connect(
                        listener_factory, full_url,
                        ssl_context=self._ssl_context if full_url.startswith("wss:") else None,
                        websocket_handshake_timeout=self._timeout,
                        logger_name=_picows_log,
                        enable_auto_pong=False,
                        enable_auto_ping=self._keepalive[0] > 0,
                        auto_ping_idle_timeout=self._keepalive[0] or 20,
                        auto_ping_reply_timeout=self._keepalive[1],
                        max_frame_size=self._max_frame_size,
                        extra_headers=headers,
                        max_redirects=0,
                        read_buffer_init_size=self._read_buffer_size,
                        use_aiofastnet=False,     # measured: no gain over uvloop here
                    )
            except WSHandshakeError as exc:
                if exc.response is not None and int(exc.response.status) >= 300:
                    raise UpstreamRejected(
                        f"bot at {url} answered the upgrade with HTTP {int(exc.response.status)}",
                        int(exc.response.status)) from exc
                log.warning("bot at %s sent an invalid handshake response: %s", url, exc)
                continue
            except (TimeoutError, asyncio.TimeoutError):
                log.warning("bot at %s did not complete the handshake within %.1fs", url, self._timeout)
                timed_out = True
                continue
            except OSError as exc:
                log.warning("bot at %s unreachable: %s", url, exc)
                continue
            if listener is None:
                # The bot closed the connection during the handshake.
                log.warning("bot at %s closed the connection during the handshake", url)
                continue
            return transport
        if timed_out:
            raise UpstreamTimeout(f"no instance of {service_host} answered within {self._timeout}s")
        raise UpstreamUnreachable(f"no instance of {service_host} could be reached")
