"""One relayed session, from the admitted request to its log line: the machine's I/O driver.

Life (docs/architecture.md): the relay has routed, authenticated and admitted the
request; here the bot is connected (with the forwarding headers), the client gets its ``101`` only after
the bot's, frames flow through the pump, and ``run()`` returns when both sockets are gone.

Every decision about closing, flow control and the end belongs to the sans-I/O
``SessionMachine`` (core/session_machine.py). The pump's two ``Side`` listeners report
rare events here (``side_connected``, ``close_frame``, ``protocol_error``,
``side_disconnected``, ``pause_source_of``, ``resume_source_of``); this driver turns each
into a machine event and carries out the actions it returns on the sockets. The pump's
per-frame check reads two C flags per side (``close_sent``, ``disconnected``), which only
this driver writes, as the machine's actions say.

Nothing here calls back up: the upstream connector, the client hand-over and what to do
at the end are callables handed in by the relay.

Session resume (docs/resume.md): for an agent with ``resume_seconds`` the bot's side gets a
``ReplayBuffer`` (core/replay.py) that the pump hands a copy of each data frame; the machine's
``Detach`` leaves the bot connected and the buffer counting; ``reattach`` (the relay's call, for
a client that came back with the session's token) gives the session a new client ``Side``, whose
``101`` carries the next token, and replays what the client missed before anything else.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from picows import WSListener, WSMsgType, WSUpgradeRequest, WSUpgradeResponse

from ..core.session_machine import (BOT, CLIENT, SIDE_CONNECTING, TIMER_WATCH, Abandon, CancelTimer, Detach,
                                   Disconnect, End, ForwardClose, PauseReading, ResumeReading, SendClose,
                                   SessionMachine, StartTimer, Timer)
from ..errors import ResumeRefused
from ..core.session_ids import new_session_id
from . import peer_watch
from .deadlines import Deadlines

if TYPE_CHECKING:
    from ..core.replay import ReplayBuffer
    from ..config import AgentConfig, RelayConfig
    from ..core.upgrade import UpgradeRequest
    from ..core.routing import Route

log = logging.getLogger("wsrelay.session")

Connector = Callable[..., Awaitable[Any]]
Attach = Callable[..., bool]             # the gate's attach(side, subprotocol, key[, resume_token])
Refuse = Callable[..., None]             # the gate's refuse(status, public_reason, reason=...)

CLOSE_FRAME = WSMsgType.CLOSE          # as a module name: an enum member read costs more on 3.11
REFUSED_BEFORE_OPEN = 503                # a client ended by the relay before its 101 (shutdown, the operator)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionServices:
    """What every session of one relay shares, made once by the relay: the pump, the bounds,
    the upstream connector, the deadline wheel, whether the listener has TLS, and the two
    calls that count a session (``on_start`` when the client's 101 is written, ``on_end``
    once, when the machine ends it)."""

    pump: Any
    limits: "RelayConfig"
    connect: Connector
    deadlines: Deadlines
    secure: bool
    on_start: Callable[["Session"], None]
    on_end: Callable[["Session"], None]
    # Session resume (docs/resume.md): mints the tokens of sessions with resume on
    # (admission/resume_tokens.py); ``on_resume`` counts a client that came back.
    resume_tokens: Any = None
    on_resume: Callable[["Session"], None] | None = None


@dataclasses.dataclass(slots=True)
class ResumeState:
    """What only a session with resume on keeps (docs/resume.md); other sessions hold None."""

    seconds: float                         # the agent's resume_seconds
    nonce: str | None = None               # of the one resume token that may be used next
    resumes: int = 0
    detached_s: float = 0.0                # time without a client, over the ended detaches
    detached_at: float | None = None       # time.monotonic() of the current detach
    ended_detached: bool = False
    up_before: tuple[int, int, int] = (0, 0, 0)   # frames, bytes, dropped of earlier client sockets
    replay: list | None = None             # what a reattaching client gets before anything else
    buffer: ReplayBuffer | None = None     # the bot's latest messages (also the bot side's ``replay``)

    def away(self, now: float) -> float:
        """Seconds without a client in all, up to ``now``."""
        return self.detached_s + (now - self.detached_at if self.detached_at is not None else 0.0)


@dataclasses.dataclass(frozen=True, slots=True)
class HeldClient:
    """A client the gate upgraded before any bot was contacted (a provider's call): how to
    close it from the gate, when its 101 was written and when its first frame arrived
    (``time.monotonic_ns()``, the pump's clock)."""

    close: Callable[[int, str], None]
    upgraded_ns: int
    first_frame_ns: int


class Session:
    """Connects one admitted client to a bot instance and drives its ``SessionMachine``."""

    # Slots: an idle session holds one of these for hours; no per-instance __dict__.
    __slots__ = ("route", "agent", "upgrade", "client_address", "endpoint", "id", "created_at", "connected_at",
                 "connected_ns", "ended_at", "upstream_seconds", "subprotocol", "machine", "client", "bot",
                 "instance", "_services", "_attach", "_bot_response", "_timers", "_close_held", "_client_first_ns",
                 "_refuse_client", "_connecting", "resume")

    def __init__(self, services: SessionServices, *, route: "Route", agent: "AgentConfig",
                 upgrade: "UpgradeRequest", client_address: str, attach: Attach, session_id: str | None = None,
                 endpoint: str = "generic", refuse_client: Refuse | None = None,
                 held: HeldClient | None = None) -> None:
        limits = services.limits
        # What routing and the client's handshake gave; dropped once the client is upgraded.
        self.route: "Route | None" = route
        self.agent = agent
        self.upgrade: "UpgradeRequest | None" = upgrade
        self.client_address = client_address
        self.endpoint = endpoint                 # "generic", or the provider's name: a shared constant
        self.id = session_id or new_session_id()
        self.created_at = time.monotonic()
        self.connected_at: float | None = None
        # time.monotonic_ns() (the pump's clock) of the client's 101: first-frame times count from it.
        # A held client got its 101 from the gate before any bot was contacted, and its first
        # frame arrived at the gate then, before the pump saw it (``HeldClient``).
        self.connected_ns = held.upgraded_ns if held is not None else 0
        self._client_first_ns = held.first_frame_ns if held is not None else 0
        self.ended_at: float | None = None
        self.upstream_seconds: float | None = None
        # The bot instance connected to (core/balancer.py's Instance: its URL and address), for
        # the Session API; set once at connect.
        self.instance: Any = None
        self.subprotocol: str | None = None
        self._services = services
        # Dropped (None) once used: a live session keeps nothing of its handshake.
        self._attach: Attach | None = attach
        # ``services.on_start`` is called when the client's 101 is written (``connected_at`` set,
        # once: ``_attach`` is dropped then): the moment from which the session will reach
        # ``on_end`` with ``connected_at`` set, and so be counted as ended. Counting starts
        # here, not at admission, so started = ended + live holds.
        self._bot_response: WSUpgradeResponse | None = None    # the bot's 101, until the bot side opens
        # The machine's timers, on the relay's one deadline wheel: Timer -> its wheel handle.
        self._timers: dict[Timer, int] = {}
        # A provider's client is upgraded and held by the gate until the bot answers:
        # ``close_held`` sends it a close from there (the machine's HOLDING side).
        self._close_held = held.close if held is not None else None
        # A client not yet upgraded is refused with an HTTP answer when the relay ends its
        # session before the bot answered; the connect is cancelled (``_connecting``).
        self._refuse_client = refuse_client
        self._connecting: asyncio.Task | None = None
        pump = services.pump
        # Resume (docs/resume.md): generic endpoint only, and only with a way to mint tokens.
        resume_seconds = agent.resume_seconds
        self.resume = ResumeState(resume_seconds) \
            if resume_seconds and endpoint == "generic" and services.resume_tokens is not None else None
        self.machine = SessionMachine(
            close_timeout=limits.close_timeout, stall_timeout=limits.stall_timeout,
            time_limit=agent.max_session_seconds or None, idle_timeout=agent.idle_timeout,
            client_held=held is not None)
        self.client = pump.Side(self, False)
        self.bot = pump.Side(self, True) if self.resume is None else pump.ResumableSide(self, True)
        self.client.peer = self.bot
        self.bot.peer = self.client
        self.client.gap_threshold_ns = self.bot.gap_threshold_ns = int(limits.gap_threshold_ms * 1_000_000)
        if self.resume is not None:
            self.machine.resume_seconds = resume_seconds
            from ..core.replay import ReplayBuffer    # loaded by the first resumable session only
            self.bot.replay = self.resume.buffer = ReplayBuffer(agent.resume_buffer_bytes)

    # -- the relay's calls ------------------------------------------------------------------

    def forward_headers(self) -> list[tuple[str, str]]:
        """The bot's handshake headers: the client's end-to-end ones, then the relay's own.

        See docs/endpoints.md. ``X-Daily-Session-Id`` is what the hosted platform's bot image
        reads, so such bots work behind the relay unchanged.
        """
        assert self.upgrade is not None and self.route is not None, "the bot is connected before the client's 101"
        headers = list(self.upgrade.forward)
        headers += [
            ("X-Forwarded-For", self.client_address),
            ("X-Forwarded-Proto", "https" if self._services.secure else "http"),
            ("X-Forwarded-Host", self.upgrade.host),
            ("X-Session-Id", self.id),
            ("X-Daily-Session-Id", self.id),
            ("X-Service-Host", self.route.service_host),
        ]
        if self.upgrade.subprotocols:
            headers.append(("Sec-WebSocket-Protocol", self.upgrade.subprotocols))
        return headers

    async def run(self) -> None:
        """Connect the bot; the client gets its 101 on the way (``side_connected``).

        Returns once the bot's WebSocket is open; from then on the pump's events drive the
        session, and ``on_end`` is called once both sockets are gone. Raises
        ``UpstreamError`` when no bot instance takes the session (the relay answers the
        client with its status). Cancelled while connecting (the client left), it drops
        whatever the bot side has opened. Ended by the relay while connecting (shutdown, the
        operator: the machine abandons the bot), it returns with ``upstream_seconds`` None:
        the client has been answered and ``on_end`` called.
        """
        started = time.monotonic()
        # picows keeps the extra headers object for the connection's life: hand it a list
        # (a header such as Cookie may repeat) and empty it once the handshake is sent.
        headers = self.forward_headers()
        assert self.route is not None and self.upstream_seconds is None, "run() is called once"
        # What ``_abandon`` cancels when the relay ends the session while the bot is being
        # connected: the task running this (the relay's admission task), not a task of its own.
        services = self._services
        task = self._connecting = asyncio.current_task(services.deadlines.loop)
        try:
            self.instance = await services.connect(
                self.route.service_host, self.agent.upstreams, query=self.route.forward_query, headers=headers,
                listener_factory=self._bot_listener)
        except asyncio.CancelledError:
            if self.bot.transport is not None and not self.bot.disconnected:
                self.bot.transport.disconnect(False)
            # ``_abandon`` cancelled (and cleared ``_connecting``): when its cancel is the only
            # one, the relay ended the session and run() returns; a client that left also
            # cancelled, and that cancel goes on.
            if self._connecting is None and task is not None and task.uncancel() == 0:
                return
            raise
        finally:
            self._connecting = None
            headers.clear()
        self.upstream_seconds = time.monotonic() - started

    def close(self, code: int, reason: str, outcome) -> None:
        """End the session from the relay's side (drain, shutdown)."""
        self._do(self.machine.close_by_relay((code, reason), (code, reason), outcome))

    def abort(self) -> None:
        """Drop both sockets now (second shutdown signal)."""
        self._do(self.machine.abort())

    @property
    def ended(self) -> bool:
        return self.machine.ended

    @property
    def started(self) -> bool:
        """The bot's WebSocket opened: the session machine will see it to its end."""
        return self.machine.sides[BOT].state is not SIDE_CONNECTING

    # -- events from the pump ---------------------------------------------------------------

    def _bot_listener(self, request: WSUpgradeRequest, response: WSUpgradeResponse) -> WSListener:
        self._bot_response = response
        return self.bot

    def side_connected(self, side) -> None:
        """A side's WebSocket is open: bound its write buffer; on the bot's, attach the client."""
        if self.machine.ended:
            # The session was ended (relay shutdown) while this side was still connecting.
            side.transport.disconnect(False)
            return
        limits = self._services.limits
        side.transport.underlying_transport.set_write_buffer_limits(limits.write_buffer_high, limits.write_buffer_low)
        if not side.is_bot:
            if self.resume is not None and self.machine.detached:
                self._reattached()
            else:
                self._do(self.machine.opened(CLIENT))
            return
        self._do(self.machine.opened(BOT))
        response = self._bot_response
        self.subprotocol = response.headers.get("Sec-WebSocket-Protocol") if response is not None else None
        self._bot_response = None
        attach, self._attach = self._attach, None
        key = self.upgrade.key if self.upgrade is not None else ""
        # The client's 101 is written inside attach(): its time is taken before, so a first-frame
        # time is never shorter than the client's own wait after its 101 (as on the gate's 101).
        before_101_ns = time.monotonic_ns()
        if attach is not None and (attach(self.client, self.subprotocol, key, self._next_resume_token())
                                   if self.resume is not None else attach(self.client, self.subprotocol, key)):
            self.connected_at = time.monotonic()
            self.connected_ns = self.connected_ns or before_101_ns
            # The client is upgraded: what only a not-yet-upgraded client needed goes, and with
            # it the last reference to its gate (an idle session keeps no handshake state).
            self._refuse_client = self._close_held = None
            self.upgrade = self.route = None
            self._services.on_start(self)
        else:                                    # the client left while the bot answered
            self._do(self.machine.client_gone_before_open())

    def close_frame(self, side, payload: bytes) -> None:
        """``side`` sent a close frame (its payload: code and reason, exactly as sent)."""
        if side is not self.client and side is not self.bot:
            return                               # a resumed client's earlier socket
        self._note_picows_close(side)
        self._do(self.machine.close_frame(_name(side), payload))

    def protocol_error(self, side) -> None:
        """picows closed ``side`` itself (it sent a close the relay did not ask for)."""
        if side is self.client or side is self.bot:
            self._note_picows_close(side)

    def side_disconnected(self, side) -> None:
        if side is not self.client and side is not self.bot:
            return                               # a resumed client's earlier socket
        self._note_picows_close(side)
        self._do(self.machine.disconnected(_name(side)))

    def pause_source_of(self, side) -> None:
        if side is self.client or side is self.bot:
            self._do(self.machine.write_high(_name(side), self._services.deadlines.loop.time()))

    def resume_source_of(self, side) -> None:
        if side is self.client or side is self.bot:
            self._do(self.machine.write_low(_name(side)))

    def resume_buffer_full(self, side) -> None:
        """The pump: the bot sent more while its client was away than the buffer holds."""
        actions = self.machine.buffer_full()
        if actions:
            self.bot.replay = None               # the session ends: nothing more is kept
        self._do(actions)

    # -- session resume (docs/resume.md) ----------------------------------------------------------

    @property
    def resumable(self) -> bool:
        """A client may come back to this session now (detached, or attached and detachable)."""
        return self.resume is not None and getattr(self.bot, "replay", None) is not None \
            and (self.machine.detached or self.machine.may_detach())

    def replay_for(self, received: int | None) -> list:
        """The frames a client that has ``received`` messages would be replayed; ResumeRefused
        (409) when the buffer cannot (changes nothing)."""
        from ..core.replay import ReplayConflict
        replay = getattr(self.bot, "replay", None)
        if replay is None:
            raise ResumeRefused.gone(f"session {self.id} can no longer be resumed")
        try:
            return replay.since(received)
        except ReplayConflict as exc:
            raise ResumeRefused.conflict(str(exc)) from None

    def reattach(self, attach: Attach, key: str, received: int | None) -> bool:
        """A client came back with this session's current resume token (checked and used up by
        the relay): give it a new client side, write its ``101`` with the next token, then the
        replay (from ``side_connected``). A client still attached (its old socket not yet seen
        gone) is detached first, its socket dropped. ResumeRefused (404, 409) before any upgrade
        when the session cannot be resumed; False when the new client left meanwhile."""
        if not self.resumable or self.resume is None:
            raise ResumeRefused.gone(f"session {self.id} can no longer be resumed")
        frames = self.replay_for(received)
        state = self.resume
        old = self.client
        if not self.machine.detached:
            self._do(self.machine.disconnected(CLIENT))          # detaches it (Detach)
            if old.transport is not None and not old.disconnected:
                old.transport.disconnect(False)
        f, b, d = state.up_before
        state.up_before = (f + old.frames, b + old.bytes, d + old.dropped)
        side = self._services.pump.Side(self, False)
        side.gap_threshold_ns = old.gap_threshold_ns
        side.peer = self.bot
        self.client = self.bot.peer = side
        state.replay = frames
        return attach(side, self.subprotocol, key, self._next_resume_token())

    def _next_resume_token(self) -> str:
        """A new resume token for the next ``101``; the one it replaces can no longer be used."""
        assert self.resume is not None
        ttl = (self.agent.max_session_seconds or 0) + self.resume.seconds + 60
        token, self.resume.nonce = self._services.resume_tokens.mint(self.agent.service_host, self.id, ttl,
                                                                     first=self.resume.nonce is None)
        return token

    def _reattached(self) -> None:
        """The resumed client's WebSocket is open: it is attached again (so backpressure from
        here on pauses the bot), then gets what it missed, then the pump goes on."""
        state = self.resume
        assert state is not None
        frames, state.replay = state.replay or [], None
        now = time.monotonic()
        state.detached_s = state.away(now)
        state.detached_at = None
        state.resumes += 1
        self._do(self.machine.reattached())
        replay = getattr(self.bot, "replay", None)
        if replay is not None:
            replay.attach()
        transport = self.client.transport
        for _, opcode, fin, payload in frames:
            if self.client.disconnected:
                break
            transport.send(opcode, payload, fin)
        if self._services.on_resume is not None:
            self._services.on_resume(self)

    # -- carrying out actions -----------------------------------------------------------------

    def _note_picows_close(self, side) -> None:
        """Tell the machine when picows has closed ``side`` on its own."""
        transport = side.transport
        if transport is not None and transport.is_close_frame_sent and not side.close_sent:
            sent = transport.close_handshake.sent if transport.close_handshake else None
            self._do(self.machine.picows_closed(_name(side), int(sent.code) if sent is not None else None))

    def _side(self, name: str):
        return self.bot if name == BOT else self.client

    def _do(self, actions) -> None:
        for action in actions:
            _CARRY_OUT[type(action)](self, action)

    def _send_close(self, action: SendClose | ForwardClose) -> None:
        side = self._side(action.side)
        side.close_sent = True           # the pump relays nothing more to it
        if side.transport is None and not side.is_bot and self._close_held is not None:
            if isinstance(action, SendClose):        # a held client: the gate has its socket
                self._close_held(action.code, action.reason)
            return
        if side.transport is not None and not side.disconnected:
            if isinstance(action, SendClose):
                side.transport.send_close(action.code, action.reason.encode())
            else:
                side.transport.send(CLOSE_FRAME, action.payload)

    def _abandon(self, action: Abandon) -> None:
        """A side that never opened: stop connecting the bot; refuse the client before its 101."""
        if action.side == BOT:
            if self._connecting is not None:
                connecting, self._connecting = self._connecting, None
                connecting.cancel()
            elif self.bot.transport is not None and not self.bot.disconnected:
                self.bot.transport.disconnect(False)
        elif self._refuse_client is not None:
            self._refuse_client(REFUSED_BEFORE_OPEN, f"Service Unavailable: {action.reason}",
                                reason=f"{action.reason} before the bot answered")

    def _disconnect(self, action: Disconnect) -> None:
        side = self._side(action.side)
        if side.transport is not None and not side.disconnected:
            side.transport.disconnect(action.graceful)

    def _pause(self, action: PauseReading) -> None:
        self._side(action.side).transport.underlying_transport.pause_reading()

    def _resume(self, action: ResumeReading) -> None:
        side = self._side(action.side)
        if side.transport is not None and not side.disconnected:
            side.transport.underlying_transport.resume_reading()

    def _start_timer(self, action: StartTimer) -> None:
        self._timers[action.timer] = self._services.deadlines.add(action.seconds, self, action.timer)

    def _cancel_timer(self, action: CancelTimer) -> None:
        handle = self._timers.pop(action.timer, None)
        if handle is not None:
            self._services.deadlines.remove(handle, self, action.timer)

    def _detach(self, action: Detach) -> None:
        """The client is gone without a close and the session waits for it (docs/resume.md)."""
        if self.resume is not None:
            self.resume.detached_at = time.monotonic()
            if self.resume.buffer is not None:
                self.resume.buffer.detach()

    def _end(self, action: End) -> None:
        self.ended_at = time.monotonic()
        state = self.resume
        if state is not None and state.detached_at is not None:
            state.ended_detached = True
            state.detached_s = state.away(self.ended_at)
            state.detached_at = None
        self._services.on_end(self)
        if self.client.disconnected and self.bot.disconnected:
            self._unlink()

    def _unlink(self) -> None:
        """Drop the references that make a session a cycle (each side points at the session and
        at its peer), once the relay has logged and counted it and both sockets are gone.

        The session, its machine, its two sides and their picows and uvloop transports are then
        freed at once by reference counting. Linked, they waited for the cyclic collector's next
        full collection, which runs after some thousands of sessions: megabytes of ended
        sessions held meanwhile (the soak saw RSS climb 12 MiB in 2 minutes at 20 sessions/s),
        then scanned in one pause. Only when both sockets are gone: a side still connecting
        (the relay ended the session while the bot answered) still calls its session.
        """
        for side in (self.client, self.bot):
            side.session = None
            side.peer = None

    def deadline_passed(self, timer: Timer) -> None:
        """One of the machine's timers has run out (edge/deadlines.py calls it)."""
        self._timers.pop(timer, None)
        if timer is TIMER_WATCH:
            paused = self.machine.paused()
            gone = {name for name in paused if peer_watch.closed_by_peer(self._side(name).transport)}
            destinations = (self._side(name).peer for name in paused if name not in gone)
            progress = {_name(side): seen for side in destinations
                        if (seen := peer_watch.progress(side.transport)) is not None}
            self._do(self.machine.watch(self._services.deadlines.loop.time(), gone, progress))
        else:
            self._do(self.machine.timer_fired(timer, self.client.frames + self.bot.frames))

    # -- the log line ---------------------------------------------------------------------------

    def timing(self) -> dict[str, dict]:
        """Per direction ("up" = client to bot, "down" = bot to client): frames, bytes and the
        pump's arrival timing of data frames, in milliseconds (None before the first frame).

        On a provider endpoint both count from the 101 the gate wrote, and the client's first
        frame from its arrival at the gate (the pump sees it only when it is handed over)."""
        up = _direction_timing(self.client, self.connected_ns, self._client_first_ns)
        if self.resume is not None:              # the earlier client sockets' frames count too
            up["frames"] += self.resume.up_before[0]
            up["bytes"] += self.resume.up_before[1]
        return {"up": up, "down": _direction_timing(self.bot, self.connected_ns)}

    def summary(self, timing: dict[str, dict] | None = None) -> dict:
        """The fields of the session's one log line (``timing``: this session's ``timing()``,
        when the caller has it already)."""
        m = self.machine
        client, bot = m.sides[CLIENT], m.sides[BOT]
        end = self.ended_at or time.monotonic()
        line = {
            "event": "session_end",
            "session_id": self.id,
            "agent": self.agent.name,
            "organization": self.agent.organization,
            "client": self.client_address,
            "subprotocol": self.subprotocol,
            "frames_up": self.client.frames,
            "bytes_up": self.client.bytes,
            "frames_down": self.bot.frames,
            "bytes_down": self.bot.bytes,
            "dropped": self.client.dropped + self.bot.dropped,
            "close_from_client": client.close_from,
            "close_from_bot": bot.close_from,
            "close_to_client": client.close_to,
            "close_to_bot": bot.close_to,
            "first_closer": m.first_closer,
            "end_reason": m.end_reason or "closed",
            "upstream_connect_ms": round((self.upstream_seconds or 0) * 1000, 3),
            **{f"{name}_{direction}": value for direction, figures in (timing or self.timing()).items()
               for name, value in figures.items() if name not in ("frames", "bytes")},
            "duration_s": round(end - (self.connected_at or self.created_at), 3),
        }
        if self.resume is not None:              # only sessions with resume on have these fields
            frames, size, dropped = self.resume.up_before     # the client's earlier sockets'
            line["frames_up"] += frames
            line["bytes_up"] += size
            line["dropped"] += dropped - (self.resume.buffer.kept_away if self.resume.buffer else 0)
            line["resumes"] = self.resume.resumes
            line["detached_s"] = round(self.resume.away(end), 3)
        return line

    @property
    def outcome(self) -> str:
        """The metric label of how the session ended."""
        return self.machine.outcome.value if self.machine.outcome else "closed"


_CARRY_OUT: dict[type, Callable[[Session, Any], None]] = {
    SendClose: Session._send_close, ForwardClose: Session._send_close, Abandon: Session._abandon,
    Disconnect: Session._disconnect,
    PauseReading: Session._pause, ResumeReading: Session._resume, StartTimer: Session._start_timer,
    CancelTimer: Session._cancel_timer, Detach: Session._detach, End: Session._end,
}


def _direction_timing(side, connected_ns: int, first_ns: int = 0) -> dict:
    """One direction's figures from the frames read on ``side`` (see pump ``_time_arrival``);
    ``first_ns``: when its first frame arrived, if that was before the pump had the socket."""
    first = first_ns or side.first_frame_ns
    return {
        "frames": side.frames,
        "bytes": side.bytes,
        # from the client's 101; a frame sent with the client's head arrives before it (0)
        "first_frame_ms": round(max(0, first - connected_ns) / 1e6, 3) if first and connected_ns else None,
        "jitter_ms": round(side.jitter_ns / 1e6, 3),
        "max_gap_ms": round(side.max_gap_ns / 1e6, 3),
        "gaps": side.gaps,
    }


def _name(side) -> str:
    return BOT if side.is_bot else CLIENT
