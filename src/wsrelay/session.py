"""One relayed session, from the routed request to its log line.

Life (SPEC §2): the relay has already routed, authenticated and admitted the request;
here the bot is connected (with the forwarding headers), the client gets its ``101``
only after the bot's, frames flow through the pump, and when both sockets are gone
one structured line is logged and the capacity slot is released.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

from picows import WSCloseCode

from .errors import UpstreamError
from .pair import SessionPair

if TYPE_CHECKING:
    from .config import AgentConfig
    from .gate import Gate
    from .handshake import UpgradeRequest
    from .routing import Route
    from .server import Relay

log = logging.getLogger("wsrelay.session")


class Session:
    """Connects one admitted client to a bot instance and watches the pair until it ends."""

    def __init__(self, relay: "Relay", gate: "Gate", route: "Route", agent: "AgentConfig",
                 upgrade: "UpgradeRequest", session_id: str | None = None) -> None:
        self.relay = relay
        self.gate = gate
        self.route = route
        self.agent = agent
        self.upgrade = upgrade
        self.id = session_id or str(uuid.uuid4())
        self.created_at = time.monotonic()
        self.connected_at: float | None = None
        self.upstream_seconds: float | None = None
        self.subprotocol: str | None = None
        self._bot_response = None
        self._limit_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_mark = -1
        cfg = relay.config.relay
        self.pair = SessionPair(
            relay.pump, on_bot_open=self._attach_client, on_end=self._ended,
            close_timeout=cfg.close_timeout, write_buffer_high=cfg.write_buffer_high,
            write_buffer_low=cfg.write_buffer_low, stall_timeout=cfg.stall_timeout)

    def forward_headers(self) -> list[tuple[str, str]]:
        """The bot's handshake headers: the client's end-to-end ones, then the relay's own.

        SPEC §1-§2.3. ``X-Daily-Session-Id`` is what the hosted platform's bot image
        reads, so such bots work behind the relay unchanged.
        """
        headers = list(self.upgrade.forward)
        headers += [
            ("X-Forwarded-For", self.gate.peer),
            ("X-Forwarded-Proto", "https" if self.relay.tls else "http"),
            ("X-Forwarded-Host", self.upgrade.host),
            ("X-Session-Id", self.id),
            ("X-Daily-Session-Id", self.id),
            ("X-Service-Host", self.route.service_host),
        ]
        if self.upgrade.subprotocols:
            headers.append(("Sec-WebSocket-Protocol", self.upgrade.subprotocols))
        return headers

    async def run(self) -> None:
        """Connect the bot; on failure answer the client with the upstream's status."""
        started = time.monotonic()
        # picows keeps the extra headers object for the connection's life: hand it a list
        # (a header such as Cookie may repeat) and empty it once the handshake is sent.
        headers = self.forward_headers()
        try:
            await self.relay.upstreams.connect(
                self.route.service_host, self.agent.upstreams,
                query=self.route.forward_query, headers=headers,
                listener_factory=self._bot_listener)
        except UpstreamError as exc:
            self.relay.release(self)
            self.gate.refuse(exc.status, _upstream_public_reason(exc), reason=str(exc))
            return
        except asyncio.CancelledError:
            # The client went away while the bot was being contacted.
            if not self.pair.bot.disconnected and self.pair.bot.transport is None:
                self.relay.release(self)
            raise
        finally:
            headers.clear()
        self.upstream_seconds = time.monotonic() - started
        self.relay.on_upstream_connected(self.upstream_seconds)

    def _bot_listener(self, request, response):
        self._bot_response = response
        return self.pair.bot

    def _attach_client(self, pair: SessionPair) -> bool:
        """The bot said 101: give the client its 101 (with the bot's sub-protocol)."""
        headers = self._bot_response.headers if self._bot_response is not None else {}
        self.subprotocol = headers.get("Sec-WebSocket-Protocol")
        self._bot_response = None
        if not self.gate.attach(pair.client, self.subprotocol, self.upgrade.key):
            return False
        self.connected_at = time.monotonic()
        self.relay.on_connected(self)
        loop = asyncio.get_running_loop()
        limit = self.agent.max_session_seconds
        if limit:
            self._limit_timer = loop.call_later(limit, self._time_limit)
        if self.agent.idle_timeout:
            self._idle_mark = -1
            self._idle_timer = loop.call_later(self.agent.idle_timeout, self._idle_check)
        return True

    def _activity(self) -> int:
        pair = self.pair
        return pair.client.frames + pair.bot.frames

    def _idle_check(self) -> None:
        """Every idle_timeout: end the session if no frame moved since the last check.

        Comparing the pump's C counters costs nothing per frame, unlike a timestamp.
        """
        self._idle_timer = None
        if self.pair.ended:
            return
        mark = self._activity()
        if mark == self._idle_mark:
            reason = f"idle for {self.agent.idle_timeout:g}s"
            self.pair.close((WSCloseCode.GOING_AWAY, reason), (WSCloseCode.GOING_AWAY, reason), "idle timeout")
            return
        self._idle_mark = mark
        self._idle_timer = asyncio.get_running_loop().call_later(self.agent.idle_timeout, self._idle_check)

    def _time_limit(self) -> None:
        self._limit_timer = None
        reason = f"session time limit of {self.agent.max_session_seconds:g}s reached"
        self.pair.close((WSCloseCode.POLICY_VIOLATION, reason),
                        (WSCloseCode.POLICY_VIOLATION, reason), "time limit")

    def close(self, code: int, reason: str, why: str) -> None:
        """End the session from the relay's side (drain, shutdown)."""
        self.pair.close((code, reason), (code, reason), why)

    def _ended(self, pair: SessionPair) -> None:
        for timer in (self._limit_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._limit_timer = self._idle_timer = None
        self.relay.release(self)
        self.relay.on_session_end(self)

    def summary(self) -> dict:
        """The fields of the session's one log line."""
        pair = self.pair
        end = pair.ended_at or time.monotonic()
        return {
            "event": "session_end",
            "session_id": self.id,
            "agent": self.agent.name,
            "organization": self.agent.organization,
            "client": self.gate.peer,
            "subprotocol": self.subprotocol,
            "frames_up": pair.client.frames,
            "bytes_up": pair.client.bytes,
            "frames_down": pair.bot.frames,
            "bytes_down": pair.bot.bytes,
            "dropped": pair.client.dropped + pair.bot.dropped,
            "close_from_client": pair.close_from["client"],
            "close_from_bot": pair.close_from["bot"],
            "close_to_client": pair.close_to["client"],
            "close_to_bot": pair.close_to["bot"],
            "first_closer": pair.first_closer,
            "end_reason": pair.end_reason or "closed",
            "upstream_connect_ms": round((self.upstream_seconds or 0) * 1000, 3),
            "duration_s": round(end - (self.connected_at or self.created_at), 3),
        }


def _upstream_public_reason(exc: UpstreamError) -> str:
    if exc.status == 504:
        return "Gateway Timeout: the bot did not answer in time"
    if exc.status == 502:
        return "Bad Gateway: no bot instance could be reached"
    return "The bot refused the connection"
