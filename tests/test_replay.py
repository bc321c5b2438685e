"""core/replay.py, sans-I/O: the resume buffer numbers the bot's messages as a client counts them,
replays exactly from ``received + 1``, stays within its bytes, and is full only for a detached client."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrelay.core.replay import FRAME_OVERHEAD, ReplayBuffer, ReplayConflict

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
TEXT, BINARY, CONT = 1, 2, 0


def messages_of(frames) -> list[bytes]:
    """Whole messages from replayed frames, as a client assembles them."""
    out, current = [], b""
    for _, opcode, fin, payload in frames:
        current += payload
        if fin:
            out.append(current)
            current = b""
    return out


def feed(buffer: ReplayBuffer, message: bytes, parts: int = 1) -> bool:
    """Keep one message, split into ``parts`` frames."""
    cut = max(1, len(message) // parts)
    chunks = [message[i:i + cut] for i in range(0, len(message), cut)] or [b""]
    ok = True
    for i, chunk in enumerate(chunks):
        ok = buffer.keep(TEXT if i == 0 else CONT, i == len(chunks) - 1, chunk) and ok
    return ok


def test_messages_are_counted_as_a_client_counts_them():
    b = ReplayBuffer(1 << 20)
    feed(b, b"one")
    feed(b, b"two-in-parts", parts=3)
    assert b.count == 2 and b.complete() == 2
    b.keep(BINARY, False, b"half")
    assert b.count == 3 and b.complete() == 2
    b.keep(CONT, True, b"-done")
    assert messages_of(b.since(1)) == [b"two-in-parts", b"half-done"]
    assert b.since(3) == []


def test_received_beyond_what_was_sent_is_a_conflict():
    b = ReplayBuffer(1 << 20)
    feed(b, b"a")
    b.detach()
    feed(b, b"b")                      # kept while away: not sent
    with pytest.raises(ReplayConflict, match="more than the 1 messages"):
        b.since(2)
    assert messages_of(b.since(None)) == [b"b"]
    assert messages_of(b.since(0)) == [b"a", b"b"]


def test_received_older_than_the_buffer_is_a_conflict():
    b = ReplayBuffer(4 * (FRAME_OVERHEAD + 10))
    for i in range(10):
        feed(b, b"%010d" % i)
    assert b.reach == 7 and b.size <= b.limit
    assert messages_of(b.since(6)) == [b"%010d" % i for i in (6, 7, 8, 9)]
    with pytest.raises(ReplayConflict, match="older than the resume buffer"):
        b.since(5)


def test_detached_the_buffer_is_full_before_it_would_lose_an_unsent_message():
    b = ReplayBuffer(3 * (FRAME_OVERHEAD + 10))
    for i in range(5):
        assert feed(b, b"%010d" % i)                     # attached: old ones simply go
    b.detach()
    assert feed(b, b"x" * 10) and feed(b, b"y" * 10) and feed(b, b"z" * 10)   # the sent ones make room
    assert not feed(b, b"w" * 10)                         # now only unsent ones are left
    b2 = ReplayBuffer(1024)
    b2.detach()
    assert not b2.keep(BINARY, True, b"q" * 2000)         # one message over the whole buffer


@PROPERTY
@given(st.lists(st.tuples(st.binary(max_size=40), st.integers(1, 3)), max_size=40),
       st.integers(0, 40), st.integers(200, 2000), st.data())
def test_a_replay_is_exactly_the_messages_after_received(messages, detach_at, limit, data):
    b = ReplayBuffer(limit)
    detach_at = min(detach_at, len(messages))
    full = False
    for i, (message, parts) in enumerate(messages):
        if i == detach_at:
            b.detach()
        if not feed(b, message, parts):
            full = True
            break
    if detach_at == len(messages):
        b.detach()
    assert full or b.size <= limit
    if full:
        assert detach_at < len(messages)
        return
    sent = min(detach_at, len(messages))
    received = data.draw(st.integers(0, sent + 2))
    try:
        replay = b.since(received)
    except ReplayConflict:
        assert received > sent or received + 1 < b.reach
        return
    assert messages_of(replay) == [m for m, _ in messages[received:]]
