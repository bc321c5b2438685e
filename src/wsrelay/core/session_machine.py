"""The life of one relayed session as a state machine: events in, actions out, no I/O.

docs/architecture.md explains it (its "Flow control and close"). The pump moves
frames in C and tells the session driver only of rare events (a side opened, a close frame, picows closing a side itself, a disconnect, a
write buffer crossing its water marks, a timer). The driver feeds them to this machine
and carries out the actions it returns, in order. The machine decides everything about
closing, flow control and the end of a session; the driver only does I/O.

Each side (``CLIENT``, ``BOT``) is in one ``SideState``::

    CONNECTING ──opened──▶ OPEN ──close sent or received──▶ CLOSING ──socket gone──▶ CLOSED
         │                   │                                                     ▲
         └───────────────────┴──────────────── socket gone ────────────────────────┘

A provider endpoint's client starts ``HOLDING`` instead (``client_held``): it is upgraded,
but its socket is still the gate's, which holds its first frames while the bot is
contacted (telephony/hold.py); ``opened`` takes it to ``OPEN`` when the held frames are handed
to the pump, and a close the relay sends it meanwhile ends it at once (the gate lingers
for the reply), so ``HOLDING ──close sent──▶ CLOSED``.

With session resume on (``resume_seconds`` > 0, docs/resume.md) a client lost without a close
(its socket gone, or no pong to a keepalive ping) is ``DETACHED`` instead of ``CLOSED``, and its
bot is told nothing::

    OPEN ──lost without a close──▶ DETACHED ──reattached──▶ OPEN
                                       │
                                       └──resume_seconds, buffer full, bot gone, the relay's close──▶ CLOSED

The ``RESUME`` timer bounds the wait: when it fires the bot gets 1001 "client lost", as if
the client had just gone; a full resume buffer (``buffer_full``) gives it 1011 "resume buffer
full"; a bot that closes meanwhile has its close answered. The session is ``DETACHED`` while
so. The session is ``CONNECTING`` until both sides are open, ``OPEN`` while frames flow, ``CLOSING`` from the first close or loss, and ``ENDED``
once both sockets are gone: then exactly one ``End`` action carries the ``Outcome``.

Rules, each one place:

* A close from one side is forwarded byte for byte to the other, and the reply back; a
  side whose handshake is complete (close sent and received) is disconnected; every
  close waits at most ``close_timeout`` for its reply, then both sides are aborted.
* A close with a code that may never be on the wire (RFC 6455 §7.4) is a protocol error.
* A side lost without a close gets its peer closed with 1011 (bot lost) or 1001 (client
  lost). picows closing a side itself (a protocol error, or no pong to a keepalive) gets
  the peer the same code, or 1011/1001 for a keepalive timeout.
* Backpressure: a side whose write buffer is over the high-water mark pauses reading its
  peer until it drains. A paused side is still watched: its socket is checked every
  ``watch_seconds``, and one found gone is read again so its close or EOF is seen; a
  destination that takes nothing for ``stall_timeout`` is stalled, and the session ends.
* A destination that reads nothing at all is stalled after ``close_timeout``: its TCP
  window closed, nothing acknowledged, its window probes answered (it is alive; its
  application reads nothing). A close its paused peer sends is queued behind what it
  sent before, where the relay cannot see it, so this bound is what keeps that close
  within ``close_timeout`` (``stall_timeout`` stays for a destination that may come back:
  a network that drops its packets). The driver observes TCP; the machine keeps the clock.
* A side that was sent a close has nothing more relayed to it, so its peer, if paused
  because of it, is read again (its close reply or EOF must be seen).
* ``max_session_seconds`` and ``idle_timeout`` end the session from the relay's side.
* The relay's close to a side still ``CONNECTING`` (shutdown, the operator, before the
  bot's ``101``) abandons it: the bot's connection is dropped, the client is refused
  before its ``101``, and the session ends at once.

Each side gets at most one close from the relay, and every event sequence ends: the
close timer bounds every wait (property-tested in tests/test_session_machine.py).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

CLIENT = "client"
BOT = "bot"
SIDES = (CLIENT, BOT)

GOING_AWAY = 1001          # to the bot: the client is gone
PROTOCOL_ERROR = 1002
POLICY_VIOLATION = 1008    # the session time limit
INTERNAL_ERROR = 1011      # to the client: the bot is gone
CLIENT_LOST = (GOING_AWAY, "client lost")
BOT_LOST = (INTERNAL_ERROR, "bot lost")


class SideState(enum.Enum):
    CONNECTING = "connecting"   # its WebSocket is not open yet
    OPEN = "open"               # frames flow
    CLOSING = "closing"         # a close went one way: sent to it or received from it
    CLOSED = "closed"           # its socket is gone
    HOLDING = "holding"         # upgraded, its first frames held by the gate (provider endpoints)
    DETACHED = "detached"       # the client lost without a close, its bot open: it may come back


class SessionState(enum.Enum):
    CONNECTING = "connecting"
    OPEN = "open"
    DETACHED = "detached"
    CLOSING = "closing"
    ENDED = "ended"


class Outcome(enum.Enum):
    """How a session ended; the value is the log text and the metric label."""

    CLOSED = "closed"
    CLIENT_LOST = "client lost"
    BOT_LOST = "bot lost"
    TIME_LIMIT = "time limit"
    IDLE_TIMEOUT = "idle timeout"
    SHUTDOWN = "shutdown"
    PROTOCOL_ERROR = "protocol error"
    KEEPALIVE_TIMEOUT = "keepalive timeout"
    CLOSE_TIMEOUT = "close timeout"
    STALLED = "stalled"
    ENDED_BY_OPERATOR = "ended by operator"      # DELETE /sessions/{id} on the admin port
    RESUME_BUFFER_FULL = "resume buffer full"    # the bot sent more than the buffer holds while detached


class Timer(enum.Enum):
    CLOSE = "close"             # a close waits for its reply
    WATCH = "watch"             # paused sides are checked
    TIME_LIMIT = "time limit"   # max_session_seconds
    IDLE = "idle"               # idle_timeout
    RESUME = "resume"           # resume_seconds: how long a detached session waits for its client


# The members as module names, which the events below use: on Python 3.11 each
# ``SideState.OPEN`` goes through ``EnumType.__getattr__`` (about 150 ns; 3.12 dropped it),
# and a session's events read about fifty (3 % of its instructions, benchmarks/gate.py).
SIDE_CONNECTING, SIDE_OPEN, SIDE_CLOSING, SIDE_CLOSED, SIDE_HOLDING, SIDE_DETACHED = (
    SideState.CONNECTING, SideState.OPEN, SideState.CLOSING, SideState.CLOSED, SideState.HOLDING,
    SideState.DETACHED)
TIMER_CLOSE, TIMER_WATCH, TIMER_TIME_LIMIT, TIMER_IDLE, TIMER_RESUME = (
    Timer.CLOSE, Timer.WATCH, Timer.TIME_LIMIT, Timer.IDLE, Timer.RESUME)
BUFFER_FULL = (INTERNAL_ERROR, "resume buffer full")
OUTCOME_CLOSED = Outcome.CLOSED


# -- actions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SendClose:
    side: str
    code: int
    reason: str


@dataclass(frozen=True)
class ForwardClose:
    """Send ``payload`` as a close frame to ``side``, exactly as the other side sent it."""

    side: str
    payload: bytes


@dataclass(frozen=True)
class Abandon:
    """``side`` never opened and never will: stop its handshake. The bot: stop connecting to it
    (drop its connection). The client before its ``101``: refuse it (an HTTP answer saying
    ``reason``); ``code`` is the close it would have got, kept as its ``close_to``."""

    side: str
    code: int
    reason: str


@dataclass(frozen=True)
class Disconnect:
    side: str
    graceful: bool = True


@dataclass(frozen=True)
class PauseReading:
    side: str


@dataclass(frozen=True)
class ResumeReading:
    side: str


@dataclass(frozen=True)
class StartTimer:
    timer: Timer
    seconds: float


@dataclass(frozen=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True)
class Detach:
    """The client is detached: its socket is gone, the session waits for it (the driver keeps
    what the bot sends, and notes the time)."""


@dataclass(frozen=True)
class End:
    outcome: Outcome
    detail: str | None = None   # which side, for protocol errors, keepalive and stalls


Progress = tuple[int, bool]
"""A destination's TCP as the driver saw it: the bytes it has acknowledged, and whether its
window is closed while it answers the window probes (alive, its application reading nothing)."""


Action = (SendClose | ForwardClose | Abandon | Disconnect | PauseReading | ResumeReading | StartTimer
          | CancelTimer | Detach | End)


# -- the machine ---------------------------------------------------------------------------

def legal_close_code(code: int) -> bool:
    """May ``code`` stand in a close frame on the wire (RFC 6455 §7.4)?

    1000-1003 and 1007-1014 are defined for use, 3000-4999 are for libraries and
    applications. 1004 is reserved, and 1005, 1006 and 1015 must never be sent.
    """
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_code_of(payload: bytes) -> int | None:
    """The status code in a close payload, or None when it carries none."""
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def other(side: str) -> str:
    return BOT if side == CLIENT else CLIENT


@dataclass(slots=True)
class Side:
    """What the machine knows of one side."""

    state: SideState = SIDE_CONNECTING
    close_received: bool = False          # a close frame came from it
    close_sent: bool = False              # the relay sent it a close (forwarded or its own)
    close_from: int | None = None         # the code it sent (None: none, or no code)
    close_to: int | None = None           # the code the relay sent it
    paused_since: float | None = None     # the relay stopped reading it (backpressure)
    # As a destination its peer is paused for: the bytes its TCP had acknowledged when first
    # seen reading nothing while alive (-1: not so when last watched), and since when.
    acked: int = -1
    acked_since: float = 0.0

    @property
    def gone(self) -> bool:
        return self.state is SIDE_CLOSED

    @property
    def open(self) -> bool:
        """Its socket is up (whether or not a close went one way)."""
        return self.state in (SIDE_OPEN, SIDE_CLOSING)


@dataclass(slots=True)
class SessionMachine:
    """One session's state; each event method returns the actions to carry out, in order."""

    close_timeout: float
    stall_timeout: float
    watch_seconds: float = 1.0
    time_limit: float | None = None
    idle_timeout: float | None = None
    client_held: bool = False             # a provider endpoint's client: it starts HOLDING
    resume_seconds: float = 0.0           # > 0: a client lost without a close detaches (docs/resume.md)
    sides: dict[str, Side] = field(default_factory=lambda: {CLIENT: Side(), BOT: Side()})
    first_closer: str | None = None       # "client", "bot" or "relay"
    outcome: Outcome | None = None
    detail: str | None = None
    ended: bool = False
    _timers: list[Timer] = field(default_factory=list)     # started and not yet fired
    _idle_mark: int = -1

    def __post_init__(self) -> None:
        if self.client_held:
            self.sides[CLIENT].state = SIDE_HOLDING

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        if self.ended:
            return SessionState.ENDED
        if self.detached:
            return SessionState.DETACHED
        states = {s.state for s in self.sides.values()}
        if self.first_closer is not None or SIDE_CLOSING in states or SIDE_CLOSED in states:
            return SessionState.CLOSING
        if states == {SIDE_OPEN}:
            return SessionState.OPEN
        return SessionState.CONNECTING

    @property
    def detached(self) -> bool:
        """The client is away and may come back (``reattached``)."""
        return self.sides[CLIENT].state is SIDE_DETACHED and not self.ended

    def may_relay_to(self, side: str) -> bool:
        """Frames may still be sent to ``side`` (the pump's per-frame check mirrors this)."""
        s = self.sides[side]
        return s.open and not s.close_sent

    def paused(self) -> list[str]:
        """Sides whose reading the relay paused: the driver checks their sockets on WATCH."""
        return [name for name, s in self.sides.items() if s.paused_since is not None]

    @property
    def end_reason(self) -> str | None:
        if self.outcome is None:
            return None
        return self.outcome.value + (f" ({self.detail})" if self.detail else "")

    # -- events --------------------------------------------------------------------------

    def opened(self, side: str) -> list[Action]:
        """``side``'s WebSocket is open. When the client opens, the session is on."""
        s = self.sides[side]
        if self.ended or s.state not in (SIDE_CONNECTING, SIDE_HOLDING):
            return []                             # (the driver drops a side opening after the end)
        s.state = SIDE_OPEN
        actions: list[Action] = []
        if side == CLIENT:
            if self.time_limit:
                actions.append(self._start(TIMER_TIME_LIMIT, self.time_limit))
            if self.idle_timeout:
                actions.append(self._start(TIMER_IDLE, self.idle_timeout))
        return actions

    def client_gone_before_open(self) -> list[Action]:
        """The bot answered, but the client left meanwhile: close the bot, bounded."""
        client = self.sides[CLIENT]
        client.state = SIDE_CLOSED
        self._set_outcome(Outcome.CLIENT_LOST)
        actions = self._close(BOT, *CLIENT_LOST)
        actions.append(Disconnect(BOT))
        actions += self._arm_close_timer()
        return actions + self._maybe_end()

    def close_frame(self, side: str, payload: bytes) -> list[Action]:
        """``side`` sent a close: forward it, or finish the handshake it answers."""
        s = self.sides[side]
        peer_name = other(side)
        s.close_received = True
        code = close_code_of(payload)
        s.close_from = code
        if s.state is SIDE_OPEN:
            s.state = SIDE_CLOSING
        if self.first_closer is None:
            self.first_closer = side
        if code is not None and not legal_close_code(code):
            return self._illegal_close(side, code)
        actions: list[Action] = []
        if self.may_relay_to(peer_name):
            actions.append(ForwardClose(peer_name, payload))
            actions += self._mark_close_sent(peer_name, code)
        elif side == BOT and self.sides[CLIENT].state is SIDE_DETACHED and not s.close_sent:
            # Nobody to forward it to: the relay answers it for the client, and the session ends.
            self.sides[CLIENT].state = SIDE_CLOSED
            actions.append(ForwardClose(BOT, payload))
            actions += self._mark_close_sent(BOT, code)
        return actions + self._finish_handshakes()

    def picows_closed(self, side: str, code: int | None) -> list[Action]:
        """picows closed ``side`` itself with ``code``: a protocol error or a keepalive timeout.

        The peer is told why: the same code for a protocol error (1002, 1007, 1009), and
        1011/1001 (bot/client lost) when the side stopped answering keepalive pings.
        """
        s = self.sides[side]
        if s.close_sent:
            return []
        code = code if code is not None else PROTOCOL_ERROR
        if self.resume_seconds and side == CLIENT and code == GOING_AWAY and self.may_detach():
            # No pong to a keepalive ping: the client's network is gone, as with a reset.
            return [Disconnect(CLIENT, graceful=False)] + self._detach()
        actions = self._mark_close_sent(side, code)
        if code == GOING_AWAY:
            outcome = Outcome.KEEPALIVE_TIMEOUT
            peer_code, peer_reason = BOT_LOST if side == BOT else CLIENT_LOST
        else:
            outcome = Outcome.PROTOCOL_ERROR
            peer_code, peer_reason = code, f"{side} broke the protocol"
        if self.first_closer is None:
            self.first_closer = "relay"
            self._set_outcome(outcome, side)
        actions += self._close(other(side), peer_code, peer_reason)
        return actions + self._arm_close_timer()

    def disconnected(self, side: str) -> list[Action]:
        """``side``'s socket is gone: close its peer if that was abrupt; end when both are."""
        s = self.sides[side]
        if s.gone or s.state is SIDE_DETACHED:
            return []
        if self.resume_seconds and side == CLIENT and self.may_detach():
            return self._detach()
        was_connecting = s.state is SIDE_CONNECTING
        s.state = SIDE_CLOSED
        s.paused_since = None
        if not s.close_received and not s.close_sent and self.first_closer is None and not was_connecting:
            self._set_outcome(Outcome.BOT_LOST if side == BOT else Outcome.CLIENT_LOST)
        actions: list[Action] = []
        peer_name = other(side)
        peer = self.sides[peer_name]
        if peer.state is SIDE_DETACHED:           # the bot is gone while its client is away
            peer.state = SIDE_CLOSED
        if peer.open:
            if not peer.close_sent:
                actions += self._close(peer_name, *(BOT_LOST if side == BOT else CLIENT_LOST))
                actions.append(Disconnect(peer_name))
            # A graceful disconnect waits for the peer to take its write buffer, which a
            # peer that stopped reading never does: bound it.
            actions += self._arm_close_timer()
        return actions + self._maybe_end()

    def write_high(self, side: str, now: float) -> list[Action]:
        """``side`` cannot take more: stop reading its peer, and watch the peer."""
        source = self.sides[other(side)]
        if not source.open or source.paused_since is not None or not self.may_relay_to(side):
            return []
        source.paused_since = now
        actions: list[Action] = [PauseReading(other(side))]
        return actions + self._start_watch()

    def write_low(self, side: str) -> list[Action]:
        """``side`` drained below the low-water mark: read its peer again."""
        return self._resume(other(side))

    def watch(self, now: float, gone: set[str], progress: dict[str, Progress] | None = None) -> list[Action]:
        """Every ``watch_seconds`` while a side is paused. ``gone``: paused sides found closed;
        ``progress``: for the destinations of paused sides whose TCP the driver could read, a
        ``Progress`` (bytes acknowledged, and whether it reads nothing while alive)."""
        self._timer_done(TIMER_WATCH)
        if self.ended:
            return []
        actions: list[Action] = []
        for name in SIDES:
            s = self.sides[name]
            if s.paused_since is None:
                continue
            if name in gone:
                actions += self._resume(name)     # its close frame or EOF is read, and ends it
                continue
            destination = other(name)
            frozen = self._frozen_for(destination, now, (progress or {}).get(destination))
            if frozen >= self.close_timeout:
                actions += self._stalled(destination, frozen=True)
            elif now - s.paused_since >= self.stall_timeout:
                actions += self._stalled(destination)
        if self.paused():
            actions += self._start_watch()
        return actions

    def timer_fired(self, timer: Timer, activity: int = 0) -> list[Action]:
        """A timer the machine started has fired; ``activity`` counts frames so far (IDLE)."""
        if timer not in self._timers:             # never started, or cancelled: a stale callback
            return []
        self._timer_done(timer)
        if self.ended:
            return []
        if timer is TIMER_CLOSE:
            if self.outcome is None:
                self._set_outcome(Outcome.CLOSE_TIMEOUT)
            return self.abort()
        if timer is TIMER_TIME_LIMIT:
            reason = f"session time limit of {self.time_limit:g}s reached"
            return self.close_by_relay((POLICY_VIOLATION, reason), (POLICY_VIOLATION, reason),
                                       Outcome.TIME_LIMIT)
        if timer is TIMER_RESUME:
            return self._give_up_client(CLIENT_LOST, Outcome.CLIENT_LOST,
                                        f"not resumed within {self.resume_seconds:g}s")
        if timer is TIMER_IDLE:
            if activity == self._idle_mark:
                reason = f"idle for {self.idle_timeout:g}s"
                return self.close_by_relay((GOING_AWAY, reason), (GOING_AWAY, reason), Outcome.IDLE_TIMEOUT)
            self._idle_mark = activity
            return [self._start(TIMER_IDLE, self.idle_timeout or 0)]
        return []

    def buffer_full(self) -> list[Action]:
        """The bot sent more while the client was away than the resume buffer holds: end the
        session (1011 "resume buffer full" to the bot). Nothing while the client is attached."""
        if not self.detached:
            return []
        if self.first_closer is None:
            self.first_closer = "relay"
        return self._give_up_client(BUFFER_FULL, Outcome.RESUME_BUFFER_FULL)

    def reattached(self) -> list[Action]:
        """A client came back with the session's resume token: it is ``OPEN`` again (the
        driver has replayed what it missed). Nothing unless the session is detached."""
        if not self.detached:
            return []
        client = self.sides[CLIENT]
        client.state = SIDE_OPEN
        client.close_sent = client.close_received = False
        client.close_to = client.close_from = None
        client.acked = -1
        self._timer_done(TIMER_RESUME)
        return [CancelTimer(TIMER_RESUME)]

    def close_by_relay(self, client: tuple[int, str], bot: tuple[int, str], outcome: Outcome) -> list[Action]:
        """The relay ends the session (time limit, idle, shutdown, the operator): close both
        sides. A side still connecting is abandoned, so a session whose bot has not answered
        ends at once (it has no close handshake to wait for)."""
        if self.ended:
            return []
        if self.first_closer is None:
            self.first_closer = "relay"
        self.outcome, self.detail = outcome, None
        actions: list[Action] = []
        for name, (code, reason) in ((CLIENT, client), (BOT, bot)):
            actions += self._close(name, code, reason)
        return actions + (self._maybe_end() or self._arm_close_timer())

    def abort(self) -> list[Action]:
        """Drop both sockets at once (second shutdown signal, close timeout)."""
        actions: list[Action] = []
        for name in SIDES:
            s = self.sides[name]
            if s.open:
                actions.append(Disconnect(name, graceful=False))
            elif s.state in (SIDE_CONNECTING, SIDE_HOLDING, SIDE_DETACHED):
                s.state = SIDE_CLOSED        # no socket of the session's to drop
        return actions + self._maybe_end()

    # -- internals -------------------------------------------------------------------------

    def _set_outcome(self, outcome: Outcome, detail: str | None = None) -> None:
        if self.outcome is None:
            self.outcome, self.detail = outcome, detail

    def may_detach(self) -> bool:
        """A client lost now detaches: resume is on, frames flowed, and no close went either way."""
        client, bot = self.sides[CLIENT], self.sides[BOT]
        return (self.resume_seconds > 0 and not self.ended and self.first_closer is None
                and client.state is SIDE_OPEN and not client.close_sent and not client.close_received
                and bot.state is SIDE_OPEN and not bot.close_sent and not bot.close_received)

    def _detach(self) -> list[Action]:
        client = self.sides[CLIENT]
        client.state = SIDE_DETACHED
        client.paused_since = None
        actions: list[Action] = [Detach()]
        actions += self._resume(BOT)              # paused because the client could take no more
        return actions + [self._start(TIMER_RESUME, self.resume_seconds)]

    def _give_up_client(self, bot_close: tuple[int, str], outcome: Outcome, detail: str | None = None) -> list[Action]:
        """A detached client will not come back: close its bot, bounded, as for a lost client."""
        if not self.detached:
            return []
        self.sides[CLIENT].state = SIDE_CLOSED
        self._set_outcome(outcome, detail)
        actions: list[Action] = []
        if TIMER_RESUME in self._timers:
            self._timer_done(TIMER_RESUME)
            actions.append(CancelTimer(TIMER_RESUME))
        actions += self._close(BOT, *bot_close)
        actions.append(Disconnect(BOT))
        return actions + self._arm_close_timer() + self._maybe_end()

    def _close(self, side: str, code: int, reason: str) -> list[Action]:
        """The relay's own close to ``side``, if it may still get one."""
        s = self.sides[side]
        if s.state is SIDE_DETACHED:
            # Away: it gets no close, and it will not come back to one.
            s.close_sent, s.close_to, s.state = True, code, SIDE_CLOSED
            return []
        if s.state is SIDE_CONNECTING:
            # Not open yet, and it never will be: no close frame, its handshake is abandoned.
            s.close_sent, s.close_to, s.state = True, code, SIDE_CLOSED
            return [Abandon(side, code, reason)]
        if s.state is SIDE_HOLDING and not s.close_sent:
            # The gate sends it and waits for the reply: for the session the side is gone.
            s.close_sent, s.close_to, s.state = True, code, SIDE_CLOSED
            return [SendClose(side, code, reason)]
        if not self.may_relay_to(side):
            return []
        return [SendClose(side, code, reason)] + self._mark_close_sent(side, code)

    def _mark_close_sent(self, side: str, code: int | None) -> list[Action]:
        """A close went to ``side``: nothing more is relayed to it, so read its peer again."""
        s = self.sides[side]
        s.close_sent = True
        s.close_to = code
        if s.state is SIDE_OPEN:
            s.state = SIDE_CLOSING
        return self._resume(other(side))

    def _resume(self, side: str) -> list[Action]:
        s = self.sides[side]
        if s.paused_since is None:
            return []
        s.paused_since = None
        self.sides[other(side)].acked = -1        # watched afresh if it is paused for again
        return [ResumeReading(side)] if s.open else []

    def _illegal_close(self, side: str, code: int) -> list[Action]:
        if self.first_closer == side and self.outcome is None:
            self.first_closer = "relay"
            self._set_outcome(Outcome.PROTOCOL_ERROR, side)
        actions = self._close(side, PROTOCOL_ERROR, f"invalid close code {code}")
        actions += self._close(other(side), PROTOCOL_ERROR, f"{side} broke the protocol")
        return actions + self._finish_handshakes()

    def _frozen_for(self, side: str, now: float, progress: Progress | None) -> float:
        """How long ``side`` has read nothing while alive (0 when unknown or not so)."""
        s = self.sides[side]
        if progress is None:
            return 0.0
        acked, reads_nothing = progress
        if not reads_nothing:
            s.acked = -1                          # a freeze counts from when it is first seen
            return 0.0
        if acked != s.acked:
            s.acked, s.acked_since = acked, now
            return 0.0
        return now - s.acked_since

    def _stalled(self, side: str, frozen: bool = False) -> list[Action]:
        """``side`` took nothing for ``stall_timeout`` seconds, or read nothing while alive
        for ``close_timeout`` (``frozen``): end the session."""
        if self.first_closer is None:
            self.first_closer = "relay"
            self._set_outcome(Outcome.STALLED, side)
        if frozen:
            why = f"{side} stalled: it read nothing for {self.close_timeout:g}s with its receive window full"
        else:
            why = f"{side} stalled: it read nothing for {self.stall_timeout:g}s"
        code = INTERNAL_ERROR if side == BOT else GOING_AWAY
        actions = self._close(other(side), code, why)
        actions += self._close(side, GOING_AWAY, why)
        return actions + self._arm_close_timer()

    def _finish_handshakes(self) -> list[Action]:
        actions: list[Action] = []
        pending = False
        for name in SIDES:
            s = self.sides[name]
            if not s.open:
                continue
            if s.close_sent and s.close_received:
                actions.append(Disconnect(name))
            else:
                pending = True
        if pending:
            actions += self._arm_close_timer()
        return actions

    def _start(self, timer: Timer, seconds: float) -> StartTimer:
        self._timers.append(timer)
        return StartTimer(timer, seconds)

    def _timer_done(self, timer: Timer) -> None:
        if timer in self._timers:
            self._timers.remove(timer)

    def _start_watch(self) -> list[Action]:
        if TIMER_WATCH in self._timers or self.ended:
            return []
        return [self._start(TIMER_WATCH, min(self.watch_seconds, self.stall_timeout))]

    def _arm_close_timer(self) -> list[Action]:
        if TIMER_CLOSE in self._timers or self.ended:
            return []
        return [self._start(TIMER_CLOSE, self.close_timeout)]

    def _maybe_end(self) -> list[Action]:
        if self.ended:
            return []
        client, bot = self.sides[CLIENT], self.sides[BOT]
        if bot.gone and client.state in (SIDE_CLOSED, SIDE_CONNECTING, SIDE_HOLDING):
            self.ended = True
            actions: list[Action] = [CancelTimer(t) for t in sorted(self._timers, key=lambda t: t.value)]
            self._timers.clear()
            for s in self.sides.values():
                s.paused_since = None
            outcome = self.outcome or OUTCOME_CLOSED
            return actions + [End(outcome, self.detail if self.outcome else None)]
        return []
