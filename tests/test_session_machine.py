"""The session machine, without sockets: every close path of docs/architecture.md's "Flow
control and close", Autobahn's section 7 as event sequences, and hypothesis over arbitrary sequences (no sequence raises, every
sequence ends, each side gets at most one close from the relay)."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrelay.core.session_machine import (BOT, CLIENT, Abandon, CancelTimer, Detach, Disconnect, End, ForwardClose, Outcome,
                                          PauseReading, ResumeReading, SendClose, SessionMachine, SessionState,
                                          SideState, StartTimer, Timer, legal_close_code)

PROPERTY = settings(max_examples=400, deadline=None, derandomize=True, database=None)


def close(code: int | None = None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


class Harness:
    """Plays the driver: records actions, keeps the timers, turns Disconnect into disconnects."""

    def __init__(self, **settings) -> None:
        defaults = dict(close_timeout=5.0, stall_timeout=60.0)
        defaults.update(settings)
        self.m = SessionMachine(**defaults)
        self.actions: list = []
        self.timers: set[Timer] = set()
        self.pending_disconnects: list[str] = []

    def do(self, actions) -> list:
        for action in actions:
            self.actions.append(action)
            if isinstance(action, StartTimer):
                assert action.timer not in self.timers, f"{action.timer} started twice"
                self.timers.add(action.timer)
            elif isinstance(action, CancelTimer):
                self.timers.discard(action.timer)
            elif isinstance(action, Disconnect):
                self.pending_disconnects.append(action.side)
        return list(actions)

    def open(self) -> "Harness":
        self.do(self.m.opened(BOT))
        self.do(self.m.opened(CLIENT))
        assert self.m.state is SessionState.OPEN
        return self

    def fire(self, timer: Timer, activity: int = 0, now: float = 1e9, gone: set[str] = frozenset(),
             progress: dict | None = None) -> list:
        self.timers.discard(timer)
        if timer is Timer.WATCH:
            return self.do(self.m.watch(now, set(gone), progress))
        return self.do(self.m.timer_fired(timer, activity))

    def disconnect_pending(self) -> None:
        while self.pending_disconnects:
            self.do(self.m.disconnected(self.pending_disconnects.pop(0)))

    def drain(self) -> End:
        """Carry every pending disconnect and timer through until the session ends."""
        for _ in range(50):
            self.disconnect_pending()
            if self.m.ended:
                break
            if not self.timers:
                raise AssertionError(f"stuck: no timer and not ended, actions {self.actions}")
            timer = Timer.CLOSE if Timer.CLOSE in self.timers else sorted(self.timers, key=lambda t: t.value)[0]
            self.fire(timer)
        ends = [a for a in self.actions if isinstance(a, End)]
        assert len(ends) == 1, ends
        assert not self.timers, f"timers left running: {self.timers}"
        return ends[0]

    def closes_to(self, side: str) -> list:
        return [a for a in self.actions if isinstance(a, (SendClose, ForwardClose, Abandon)) and a.side == side]


# -- the close paths of docs/architecture.md's "Flow control and close" -----------------------------------

@pytest.mark.parametrize("first", [CLIENT, BOT])
def test_a_close_is_forwarded_and_its_reply_comes_back(first):
    h = Harness().open()
    second = BOT if first == CLIENT else CLIENT
    assert h.do(h.m.close_frame(first, close(1000, b"bye"))) == [
        ForwardClose(second, close(1000, b"bye")), StartTimer(Timer.CLOSE, 5.0)]
    assert h.m.state is SessionState.CLOSING
    assert h.do(h.m.close_frame(second, close(1000, b"bye"))) == [
        ForwardClose(first, close(1000, b"bye")), Disconnect(CLIENT), Disconnect(BOT)]
    end = h.drain()
    assert end.outcome is Outcome.CLOSED and h.m.first_closer == first
    assert h.m.sides[first].close_from == 1000 and h.m.sides[second].close_to == 1000


def test_a_close_without_a_code_is_forwarded_as_it_came():
    h = Harness().open()
    assert h.do(h.m.close_frame(CLIENT, b""))[0] == ForwardClose(BOT, b"")
    h.do(h.m.close_frame(BOT, b""))
    assert h.drain().outcome is Outcome.CLOSED
    assert h.m.sides[CLIENT].close_from is None


@pytest.mark.parametrize("lost,code,reason,outcome", [
    (CLIENT, 1001, "client lost", Outcome.CLIENT_LOST),
    (BOT, 1011, "bot lost", Outcome.BOT_LOST),
])
def test_a_side_lost_without_a_close_gets_its_peer_closed(lost, code, reason, outcome):
    h = Harness().open()
    peer = BOT if lost == CLIENT else CLIENT
    assert h.do(h.m.disconnected(lost)) == [SendClose(peer, code, reason), Disconnect(peer),
                                             StartTimer(Timer.CLOSE, 5.0)]
    assert h.drain().outcome is outcome


def test_an_unanswered_close_ends_after_close_timeout():
    h = Harness().open()
    h.do(h.m.close_frame(CLIENT, close(1000)))
    assert h.fire(Timer.CLOSE) == [Disconnect(CLIENT, graceful=False), Disconnect(BOT, graceful=False)]
    assert h.drain().outcome is Outcome.CLOSE_TIMEOUT


def test_the_time_limit_closes_both_sides_with_1008():
    h = Harness(time_limit=7200.0).open()
    assert StartTimer(Timer.TIME_LIMIT, 7200.0) in h.actions
    fired = h.fire(Timer.TIME_LIMIT)
    reason = "session time limit of 7200s reached"
    assert fired[:2] == [SendClose(CLIENT, 1008, reason), SendClose(BOT, 1008, reason)]
    h.do(h.m.close_frame(CLIENT, close(1008)))
    h.do(h.m.close_frame(BOT, close(1008)))
    assert h.drain().outcome is Outcome.TIME_LIMIT


def test_idle_ends_only_a_session_where_nothing_moved():
    h = Harness(idle_timeout=30.0).open()
    assert h.fire(Timer.IDLE, activity=5) == [StartTimer(Timer.IDLE, 30.0)]     # frames moved
    assert h.fire(Timer.IDLE, activity=9) == [StartTimer(Timer.IDLE, 30.0)]
    closed = h.fire(Timer.IDLE, activity=9)                                      # nothing since
    assert closed[:2] == [SendClose(CLIENT, 1001, "idle for 30s"), SendClose(BOT, 1001, "idle for 30s")]
    assert h.drain().outcome is Outcome.IDLE_TIMEOUT


def test_shutdown_closes_both_with_1012_and_a_second_close_changes_nothing():
    h = Harness().open()
    h.do(h.m.close_by_relay((1012, "relay restarting"), (1012, "relay restarting"), Outcome.SHUTDOWN))
    h.do(h.m.close_by_relay((1012, "again"), (1012, "again"), Outcome.SHUTDOWN))
    assert len(h.closes_to(CLIENT)) == len(h.closes_to(BOT)) == 1
    assert h.drain().outcome is Outcome.SHUTDOWN


@pytest.mark.parametrize("code,peer_code,outcome", [
    (1002, 1002, Outcome.PROTOCOL_ERROR), (1007, 1007, Outcome.PROTOCOL_ERROR),
    (1009, 1009, Outcome.PROTOCOL_ERROR), (1001, 1011, Outcome.KEEPALIVE_TIMEOUT),
])
def test_picows_closing_the_bot_tells_the_client_why(code, peer_code, outcome):
    h = Harness().open()
    actions = h.do(h.m.picows_closed(BOT, code))
    assert actions[0].code == peer_code and actions[0].side == CLIENT
    assert h.m.sides[BOT].close_to == code
    assert h.drain().outcome is outcome
    assert h.m.end_reason == f"{outcome.value} (bot)"


@pytest.mark.parametrize("code", [0, 1006, 5000, 65535, 1005, 1015, 2999, 999])
def test_an_illegal_close_code_is_a_protocol_error_never_relayed(code):
    assert not legal_close_code(code)
    h = Harness().open()
    actions = h.do(h.m.close_frame(CLIENT, close(code)))
    assert SendClose(CLIENT, 1002, f"invalid close code {code}") in actions
    assert SendClose(BOT, 1002, "client broke the protocol") in actions
    assert not [a for a in actions if isinstance(a, ForwardClose)]
    assert h.drain().outcome is Outcome.PROTOCOL_ERROR


def test_a_full_destination_pauses_its_source_and_a_drain_resumes_it():
    h = Harness().open()
    assert h.do(h.m.write_high(BOT, now=10.0)) == [PauseReading(CLIENT), StartTimer(Timer.WATCH, 1.0)]
    assert h.do(h.m.write_high(BOT, now=10.5)) == []
    assert h.do(h.m.write_low(BOT)) == [ResumeReading(CLIENT)]
    assert h.fire(Timer.WATCH, now=11.0) == []                 # nothing paused: the watch stops


def test_a_paused_side_found_gone_is_read_again():
    h = Harness().open()
    h.do(h.m.write_high(BOT, now=10.0))
    assert h.fire(Timer.WATCH, now=11.0, gone={CLIENT}) == [ResumeReading(CLIENT)]
    h.do(h.m.disconnected(CLIENT))                              # its EOF or reset is now seen
    assert h.drain().outcome is Outcome.CLIENT_LOST


def test_a_destination_that_reads_nothing_for_stall_timeout_is_stalled():
    h = Harness(stall_timeout=60.0).open()
    h.do(h.m.write_high(BOT, now=0.0))
    assert h.fire(Timer.WATCH, now=30.0) == [StartTimer(Timer.WATCH, 1.0)]
    stalled = h.fire(Timer.WATCH, now=60.0)
    why = "bot stalled: it read nothing for 60s"
    assert stalled[0] == SendClose(CLIENT, 1011, why)
    assert ResumeReading(CLIENT) in stalled                     # to read the client's reply
    assert SendClose(BOT, 1001, why) in stalled
    assert h.drain().outcome is Outcome.STALLED and h.m.end_reason == "stalled (bot)"


FROZEN_WHY = "bot stalled: it read nothing for 2s with its receive window full"


def test_a_destination_alive_and_reading_nothing_is_stalled_after_close_timeout():
    """Its window closed, nothing acknowledged, its probes answered: a close its peer sends
    now is out of sight behind the data, so close_timeout, not stall_timeout, bounds it."""
    h = Harness(close_timeout=2.0, stall_timeout=60.0).open()
    h.do(h.m.write_high(BOT, now=0.0))
    frozen = {BOT: (1000, True)}
    assert h.fire(Timer.WATCH, now=1.0, progress=frozen) == [StartTimer(Timer.WATCH, 1.0)]   # first seen
    assert h.fire(Timer.WATCH, now=2.0, progress=frozen) == [StartTimer(Timer.WATCH, 1.0)]   # 1 s
    stalled = h.fire(Timer.WATCH, now=3.0, progress=frozen)                                  # 2 s
    assert stalled[0] == SendClose(CLIENT, 1011, FROZEN_WHY)
    assert ResumeReading(CLIENT) in stalled                     # its close, if sent, is read
    assert SendClose(BOT, 1001, FROZEN_WHY) in stalled
    assert h.drain().outcome is Outcome.STALLED and h.m.end_reason == "stalled (bot)"


@pytest.mark.parametrize("observations", [
    [(1000 + i, True) for i in range(59)],                     # it acknowledges, however slowly
    [(1000, False)] * 59,                                      # window open, or probes unanswered
    [None] * 59,                                               # TCP_INFO unreadable
    [(1000, True), (1000, False)] * 29 + [(1000, True)],       # never closed two watches running
])
def test_only_stall_timeout_ends_a_destination_not_seen_frozen(observations):
    h = Harness(close_timeout=2.0, stall_timeout=60.0).open()
    h.do(h.m.write_high(BOT, now=0.0))
    for t, seen in enumerate(observations, start=1):
        progress = None if seen is None else {BOT: seen}
        assert h.fire(Timer.WATCH, now=float(t), progress=progress) == [StartTimer(Timer.WATCH, 1.0)]
    assert h.fire(Timer.WATCH, now=60.0)[0] == SendClose(CLIENT, 1011, "bot stalled: it read nothing for 60s")


def test_a_resumed_source_watches_its_destination_afresh():
    h = Harness(close_timeout=2.0).open()
    h.do(h.m.write_high(BOT, now=0.0))
    h.fire(Timer.WATCH, now=1.0, progress={BOT: (1000, True)})
    h.fire(Timer.WATCH, now=2.0, progress={BOT: (1000, True)})
    h.do(h.m.write_low(BOT))                                    # it drained after all
    h.do(h.m.write_high(BOT, now=2.5))
    # the same count again is a first sighting, not 2.5 s of freezing
    assert h.fire(Timer.WATCH, now=3.5, progress={BOT: (1000, True)}) == [StartTimer(Timer.WATCH, 1.0)]
    assert h.fire(Timer.WATCH, now=4.5, progress={BOT: (1000, True)}) == [StartTimer(Timer.WATCH, 1.0)]
    assert h.fire(Timer.WATCH, now=5.5, progress={BOT: (1000, True)})[0] == SendClose(CLIENT, 1011, FROZEN_WHY)


@PROPERTY
@given(st.lists(st.tuples(st.floats(0.1, 3.0), st.integers(0, 2), st.booleans()), min_size=1, max_size=40))
def test_a_freeze_ends_the_session_exactly_when_it_has_lasted_close_timeout(observations):
    """Watches at increasing times with (acked, reads nothing): the session is stalled at the
    first watch where the same count has been seen frozen for close_timeout, and not before."""
    h = Harness(close_timeout=2.0, stall_timeout=1e6).open()
    h.do(h.m.write_high(BOT, now=0.0))
    now, since, last = 0.0, None, None
    for step, acked, reads_nothing in observations:
        now += step
        if not reads_nothing or acked != last:
            since = now
        last = acked if reads_nothing else None
        actions = h.fire(Timer.WATCH, now=now, progress={BOT: (acked, reads_nothing)})
        expected = reads_nothing and now - since >= 2.0
        assert (SendClose(CLIENT, 1011, FROZEN_WHY) in actions) == expected, (now, since, actions)
        if expected:
            break


def test_a_close_sent_to_a_full_side_resumes_its_peer():
    h = Harness().open()
    h.do(h.m.write_high(CLIENT, now=0.0))                      # the client is full: bot paused
    actions = h.do(h.m.close_frame(BOT, close(1000)))          # (read before the pause)
    assert ForwardClose(CLIENT, close(1000)) in actions
    assert ResumeReading(BOT) in actions


def test_the_client_leaving_while_the_bot_answers():
    h = Harness()
    h.do(h.m.opened(BOT))
    assert h.do(h.m.client_gone_before_open()) == [SendClose(BOT, 1001, "client lost"), Disconnect(BOT),
                                                    StartTimer(Timer.CLOSE, 5.0)]
    assert h.drain().outcome is Outcome.CLIENT_LOST


def test_states_along_the_way():
    h = Harness()
    assert h.m.state is SessionState.CONNECTING
    h.do(h.m.opened(BOT))
    assert h.m.sides[BOT].state is SideState.OPEN and h.m.state is SessionState.CONNECTING
    h.do(h.m.opened(CLIENT))
    assert h.m.state is SessionState.OPEN and h.m.may_relay_to(CLIENT)
    h.do(h.m.close_frame(CLIENT, close(1000)))
    assert h.m.sides[CLIENT].state is SideState.CLOSING and not h.m.may_relay_to(BOT)
    h.do(h.m.close_frame(BOT, close(1000)))
    h.drain()
    assert h.m.state is SessionState.ENDED
    assert all(s.state is SideState.CLOSED for s in h.m.sides.values())


# -- Autobahn section 7 as event sequences (what the pump reports for each case) -------------------

AUTOBAHN_7 = {
    # case: (events from the client after the upgrade, what the client must get from the relay)
    "7.1.1 close after echo": ([("close", close(1000))], [close(1000)]),
    "7.1.2 two closes": ([("close", close(1000)), ("close", b"")], [close(1000)]),
    "7.3.1 empty close": ([("close", b"")], [b""]),
    "7.3.2 one-byte close": ([("picows", 1002)], [1002]),
    "7.3.3 code only": ([("close", close(1000))], [close(1000)]),
    "7.3.4 code and reason": ([("close", close(1000, b"Hello World!"))], [close(1000, b"Hello World!")]),
    "7.3.5 123-byte reason": ([("close", close(1000, b"*" * 123))], [close(1000, b"*" * 123)]),
    "7.3.6 reason too long": ([("picows", 1002)], [1002]),
    "7.5.1 invalid UTF-8 reason": ([("picows", 1007)], [1007]),
    "7.7.x valid 3000": ([("close", close(3000))], [close(3000)]),
    "7.7.x valid 4999": ([("close", close(4999))], [close(4999)]),
    "7.9.x invalid 1004": ([("picows", 1002)], [1002]),
    "7.9.x invalid 0": ([("close", close(0))], [1002]),
    "7.9.x invalid 1006": ([("close", close(1006))], [1002]),
    "7.13.1 code 5000": ([("close", close(5000))], [1002]),
    "7.13.2 code 65535": ([("close", close(65535))], [1002]),
}


@pytest.mark.parametrize("case", AUTOBAHN_7)
def test_autobahn_section_7_against_a_strict_bot(case):
    """The bot echoes a legal close and fails an illegal one with 1002, as `websockets` does."""
    events, expected = AUTOBAHN_7[case]
    h = Harness().open()
    for kind, value in events:
        if kind == "close":
            h.do(h.m.close_frame(CLIENT, value))
        else:
            h.do(h.m.picows_closed(CLIENT, value))
    for action in list(h.actions):                  # the strict bot answers what reached it
        if isinstance(action, ForwardClose) and action.side == BOT:
            h.do(h.m.close_frame(BOT, action.payload))
        elif isinstance(action, SendClose) and action.side == BOT:
            h.do(h.m.close_frame(BOT, close(action.code)))
    h.drain()
    got = [a.payload if isinstance(a, ForwardClose) else a.code for a in h.closes_to(CLIENT)]
    picows_sent = [value for kind, value in events if kind == "picows"]
    assert (picows_sent or got) == expected


# -- a provider's held client (HOLDING) -----------------------------------------------------------

def test_a_held_client_opens_when_its_frames_are_handed_to_the_pump():
    h = Harness(client_held=True)
    assert h.m.sides[CLIENT].state is SideState.HOLDING and h.m.state is SessionState.CONNECTING
    assert not h.m.may_relay_to(CLIENT)
    h.open()
    assert h.m.sides[CLIENT].state is SideState.OPEN


def test_shutdown_while_the_bot_is_contacted_closes_the_held_client_once():
    h = Harness(client_held=True)
    actions = h.do(h.m.close_by_relay((1012, "relay restarting"), (1012, "relay restarting"), Outcome.SHUTDOWN))
    assert actions[0] == SendClose(CLIENT, 1012, "relay restarting")
    assert h.m.sides[CLIENT].state is SideState.CLOSED and h.m.sides[CLIENT].close_to == 1012
    assert h.closes_to(CLIENT) == [actions[0]]
    # The bot answers meanwhile: it is closed too, and the session ends.
    h.do(h.m.opened(BOT))
    h.fire(Timer.CLOSE)
    h.drain()
    assert h.m.ended and len(h.closes_to(CLIENT)) == 1


OPERATOR = (1008, "ended by the operator")


def test_the_operator_ending_a_session_whose_bot_has_not_answered_abandons_both_sides_and_ends_it():
    """Both sides still connecting (the client has no 101): nothing to close, no handshake to
    wait for. The bot's connect is dropped, the client refused, and the session ends at once."""
    h = Harness()
    actions = h.do(h.m.close_by_relay(OPERATOR, OPERATOR, Outcome.ENDED_BY_OPERATOR))
    assert actions == [Abandon(CLIENT, *OPERATOR), Abandon(BOT, *OPERATOR), End(Outcome.ENDED_BY_OPERATOR)]
    assert h.m.ended and h.m.end_reason == "ended by operator" and h.m.first_closer == "relay"
    assert h.m.sides[CLIENT].close_to == h.m.sides[BOT].close_to == 1008
    assert h.do(h.m.opened(BOT)) == []                  # a 101 arriving anyway: the driver drops it
    assert h.do(h.m.close_by_relay(OPERATOR, OPERATOR, Outcome.ENDED_BY_OPERATOR)) == []
    assert h.drain().outcome is Outcome.ENDED_BY_OPERATOR


def test_the_operator_ending_a_held_session_whose_bot_has_not_answered():
    """A provider's client (its 101 written by the gate) gets its close; the bot's connect is dropped."""
    h = Harness(client_held=True)
    actions = h.do(h.m.close_by_relay(OPERATOR, OPERATOR, Outcome.ENDED_BY_OPERATOR))
    assert actions == [SendClose(CLIENT, *OPERATOR), Abandon(BOT, *OPERATOR), End(Outcome.ENDED_BY_OPERATOR)]
    assert h.drain().outcome is Outcome.ENDED_BY_OPERATOR


def test_the_operator_ending_an_open_session_abandons_nothing():
    h = Harness().open()
    actions = h.do(h.m.close_by_relay(OPERATOR, OPERATOR, Outcome.ENDED_BY_OPERATOR))
    assert actions == [SendClose(CLIENT, *OPERATOR), SendClose(BOT, *OPERATOR), StartTimer(Timer.CLOSE, 5.0)]
    assert not h.m.ended


def test_a_held_client_that_leaves_before_the_bot_answers():
    h = Harness(client_held=True)
    h.do(h.m.opened(BOT))
    h.do(h.m.client_gone_before_open())
    h.drain()
    assert h.m.ended and h.m.outcome is Outcome.CLIENT_LOST


# -- session resume (docs/resume.md) ----------------------------------------------------------------

def detached(**settings) -> Harness:
    h = Harness(resume_seconds=30.0, **settings).open()
    assert h.do(h.m.disconnected(CLIENT)) == [Detach(), StartTimer(Timer.RESUME, 30.0)]
    assert h.m.state is SessionState.DETACHED and h.m.detached
    return h


def test_a_client_lost_without_a_close_detaches_and_its_bot_is_told_nothing():
    h = detached()
    assert h.closes_to(BOT) == [] and h.m.sides[BOT].state is SideState.OPEN
    assert h.m.sides[CLIENT].state is SideState.DETACHED and not h.m.may_relay_to(CLIENT)


def test_without_resume_a_lost_client_ends_the_session_as_before():
    h = Harness(resume_seconds=0.0).open()
    assert SendClose(BOT, 1001, "client lost") in h.do(h.m.disconnected(CLIENT))


def test_a_keepalive_timeout_detaches_too():
    h = Harness(resume_seconds=5.0).open()
    assert h.do(h.m.picows_closed(CLIENT, 1001)) == [Disconnect(CLIENT, graceful=False), Detach(),
                                                      StartTimer(Timer.RESUME, 5.0)]
    assert h.m.detached and h.closes_to(BOT) == []
    assert h.do(h.m.disconnected(CLIENT)) == []               # the socket's end, which detached it


def test_a_client_that_closes_with_a_close_frame_ends_the_session():
    h = Harness(resume_seconds=30.0).open()
    h.do(h.m.close_frame(CLIENT, close(1000)))
    h.do(h.m.disconnected(CLIENT))                  # gone before the bot's reply: still no resume
    assert not h.m.detached
    h.do(h.m.close_frame(BOT, close(1000)))
    assert h.drain().outcome is Outcome.CLOSED


def test_reattaching_opens_the_client_again_and_the_session_goes_on():
    h = detached()
    assert h.do(h.m.reattached()) == [CancelTimer(Timer.RESUME)]
    assert h.m.state is SessionState.OPEN and h.m.may_relay_to(CLIENT)
    # and it may detach again, and again come back
    assert Detach() in h.do(h.m.disconnected(CLIENT))
    h.do(h.m.reattached())
    assert h.m.state is SessionState.OPEN and h.closes_to(BOT) == []
    h.do(h.m.close_frame(CLIENT, close(1000)))
    assert h.closes_to(BOT) == [ForwardClose(BOT, close(1000))]


def test_no_client_within_resume_seconds_ends_it_as_a_lost_client():
    h = detached()
    actions = h.fire(Timer.RESUME)
    assert actions[:2] == [SendClose(BOT, 1001, "client lost"), Disconnect(BOT)]
    assert h.drain().outcome is Outcome.CLIENT_LOST
    assert h.m.end_reason == "client lost (not resumed within 30s)"
    assert h.do(h.m.reattached()) == []


def test_a_full_resume_buffer_ends_the_session_with_1011_to_the_bot():
    h = detached()
    actions = h.do(h.m.buffer_full())
    assert actions[:3] == [CancelTimer(Timer.RESUME), SendClose(BOT, 1011, "resume buffer full"), Disconnect(BOT)]
    assert h.drain().outcome is Outcome.RESUME_BUFFER_FULL


def test_a_full_buffer_while_attached_changes_nothing():
    h = Harness(resume_seconds=30.0).open()
    assert h.do(h.m.buffer_full()) == []


def test_a_bot_that_closes_while_its_client_is_away_has_its_close_answered():
    h = detached()
    assert h.do(h.m.close_frame(BOT, close(1000, b"done"))) == [ForwardClose(BOT, close(1000, b"done")),
                                                                Disconnect(BOT)]
    assert h.drain().outcome is Outcome.CLOSED


def test_a_bot_lost_while_its_client_is_away_ends_the_session():
    h = detached()
    h.do(h.m.disconnected(BOT))
    assert h.m.ended and h.drain().outcome is Outcome.BOT_LOST
    assert h.closes_to(CLIENT) == []


def test_a_detached_session_is_ended_by_the_relay_without_a_close_to_its_client():
    h = detached()
    h.do(h.m.close_by_relay((1012, "bye"), (1012, "bye"), Outcome.SHUTDOWN))
    assert h.closes_to(CLIENT) == [] and h.closes_to(BOT) == [SendClose(BOT, 1012, "bye")]
    assert h.drain().outcome is Outcome.SHUTDOWN


def test_a_bot_paused_for_its_client_is_read_again_when_the_client_detaches():
    h = Harness(resume_seconds=30.0).open()
    assert h.do(h.m.write_high(CLIENT, 0.0)) == [PauseReading(BOT), StartTimer(Timer.WATCH, 1.0)]
    assert ResumeReading(BOT) in h.do(h.m.disconnected(CLIENT))
    assert h.m.paused() == []


# -- any sequence ------------------------------------------------------------------------------------

SIDE = st.sampled_from([CLIENT, BOT])
PAYLOADS = st.sampled_from([b"", close(1000), close(1001, b"bye"), close(4000, b"x" * 10), close(0),
                            close(1006), close(5000), close(3000)])
EVENTS = st.one_of(
    st.tuples(st.just("opened"), SIDE),
    st.tuples(st.just("close"), SIDE, PAYLOADS),
    st.tuples(st.just("picows"), SIDE, st.sampled_from([None, 1001, 1002, 1007, 1009])),
    st.tuples(st.just("disconnected"), SIDE),
    st.tuples(st.just("high"), SIDE, st.floats(0, 200)),
    st.tuples(st.just("low"), SIDE),
    st.tuples(st.just("watch"), st.floats(0, 200), st.sets(SIDE),
              st.dictionaries(SIDE, st.tuples(st.integers(0, 2), st.booleans()))),
    st.tuples(st.just("timer"), st.sampled_from(list(Timer)), st.integers(0, 3)),
    st.tuples(st.just("relay"), st.sampled_from([Outcome.SHUTDOWN, Outcome.TIME_LIMIT, Outcome.ENDED_BY_OPERATOR])),
    st.tuples(st.just("abort")),
    st.tuples(st.just("gone early")),
    st.tuples(st.just("reattach")),
    st.tuples(st.just("buffer full")),
)


def _apply(h: Harness, event) -> None:
    kind, *args = event
    m = h.m
    if kind == "opened":
        h.do(m.opened(args[0]))
    elif kind == "close":
        h.do(m.close_frame(args[0], args[1]))
    elif kind == "picows":
        h.do(m.picows_closed(args[0], args[1]))
    elif kind == "disconnected":
        h.do(m.disconnected(args[0]))
    elif kind == "high":
        h.do(m.write_high(args[0], args[1]))
    elif kind == "low":
        h.do(m.write_low(args[0]))
    elif kind == "watch":
        h.fire(Timer.WATCH, now=args[0], gone=args[1], progress=args[2])
    elif kind == "timer":
        if args[0] is not Timer.WATCH:
            h.fire(args[0], activity=args[1])
    elif kind == "relay":
        h.do(m.close_by_relay((1012, "r"), (1012, "r"), args[0]))
    elif kind == "abort":
        h.do(m.abort())
    elif kind == "gone early" and m.sides[CLIENT].state in (SideState.CONNECTING, SideState.HOLDING) \
            and m.sides[BOT].state is SideState.OPEN:
        h.do(m.client_gone_before_open())
    elif kind == "reattach":
        h.do(m.reattached())
    elif kind == "buffer full":
        h.do(m.buffer_full())


@PROPERTY
@given(st.lists(EVENTS, max_size=25), st.booleans(), st.sampled_from([0.0, 20.0]))
def test_no_sequence_raises_every_sequence_ends_each_side_gets_at_most_one_close(events, held, resume):
    h = Harness(time_limit=100.0, idle_timeout=10.0, client_held=held, resume_seconds=resume)
    for event in events:
        _apply(h, event)
    if not h.m.ended:
        if h.m.sides[BOT].state is SideState.CONNECTING:
            h.do(h.m.opened(BOT))                     # a session is created for a bot connection
        h.do(h.m.abort() if not h.timers else [])
    h.drain()
    for side in (CLIENT, BOT):
        # A resumed client is a new connection: each of its connections gets at most one close.
        connections = [[]]
        for action in h.actions:
            if isinstance(action, Detach):
                connections.append([])
            elif isinstance(action, (SendClose, ForwardClose, Abandon)) and action.side == side:
                connections[-1].append(action)
        assert all(len(c) <= 1 for c in (connections if side == CLIENT else [h.closes_to(side)])), (side, h.actions)
    assert h.m.state is SessionState.ENDED
    assert all(s.paused_since is None for s in h.m.sides.values())


def test_the_sans_io_modules_import_neither_asyncio_nor_picows():
    code = ("import sys\n"
            "import wsrelay.core.routing, wsrelay.core.upgrade, wsrelay.core.tokens, wsrelay.core.cors, "
            "wsrelay.core.session_machine, wsrelay.telephony.providers, wsrelay.core.frames, wsrelay.core.replay, "
            "wsrelay.telephony.signatures\n"
            "print(sorted(m for m in ('asyncio', 'picows', 'uvloop', 'h11', 'httptools') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
