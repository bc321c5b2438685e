"""Frames that arrive in one read leave in one write (the compiled pump's coalescing), and
nothing about them changes: order, payloads, flags, masking towards the bot, the close
after them. Real sockets, both pumps, both directions; hypothesis over frame sequences
and how the sender's bytes are cut into writes."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from picows import WSMsgType

from support import Frame, arun, relayed_session
from wsrelay import pump as pump_selector

T, B, C = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
PING, PONG, CLOSE = WSMsgType.PING, WSMsgType.PONG, WSMsgType.CLOSE


def encode(f: Frame, *, masked: bool) -> bytes:
    """``f`` on the wire: masked as a client sends it, or plain as a server does."""
    first = (0x80 if f.fin else 0) | (0x40 if f.rsv1 else 0) | (0x20 if f.rsv2 else 0) | (0x10 if f.rsv3 else 0)
    first |= int(f.msg_type)
    n = len(f.payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", first, bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    if not masked:
        return head + f.payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(f.payload))


MIXED = [Frame(T, "héllo".encode()), Frame(B, os.urandom(640)), Frame(PING, b"p"),
         Frame(T, b"frag-1 ", fin=False), Frame(C, b"frag-2", fin=True), Frame(PONG, b""),
         Frame(B, b""), Frame(B, os.urandom(200)), Frame(B, os.urandom(125), rsv1=True),
         Frame(B, os.urandom(7)), Frame(B, os.urandom(1000))]


async def _send_raw(direction, client, bot_rec, frames, cuts=()):
    """Write ``frames`` as raw bytes from one side, cut at the fractions ``cuts`` (one write when empty)."""
    data = b"".join(encode(f, masked=direction == "client_to_bot") for f in frames)
    sender = client if direction == "client_to_bot" else bot_rec.transport
    points = sorted({int(c * len(data)) for c in cuts} - {0, len(data)})
    for start, end in zip([0, *points], [*points, len(data)]):
        sender.underlying_transport.write(data[start:end])
        if points:
            await asyncio.sleep(0.002)     # each piece its own read on the relay


@pytest.mark.parametrize("direction", ["client_to_bot", "bot_to_client"])
def test_one_read_of_many_frames_is_one_write_and_arrives_unchanged(pump, direction):
    async def main():
        bot, relay, client, client_rec, bot_rec = await relayed_session(pump)
        receiver = bot_rec if direction == "client_to_bot" else client_rec
        before = pump_selector.totals()
        close = Frame(CLOSE, struct.pack("!H", 1000) + b"after the burst")
        await _send_raw(direction, client, bot_rec, [*MIXED, close])
        await receiver.wait_frames(len(MIXED) + 1)
        assert receiver.frames[:len(MIXED)] == MIXED
        assert receiver.frames[len(MIXED)] == close         # the close comes after every frame before it
        after = pump_selector.totals()
        key = "up" if direction == "client_to_bot" else "down"
        frames = after[f"frames_{key}"] - before[f"frames_{key}"]
        sends = after[f"sends_{key}"] - before[f"sends_{key}"]
        assert frames == len(MIXED)
        if pump == "cython":
            assert sends <= 2, f"{frames} frames of one write went out in {sends} writes"
        else:
            assert sends == frames                          # the pure pump sends frame by frame
        await asyncio.wait_for(client_rec.disconnected.wait(), 5)
        bot.close()
    arun(main())


frame_lists = st.lists(st.builds(
    Frame,
    msg_type=st.sampled_from([int(T), int(B), int(PING), int(PONG)]),
    payload=st.one_of(st.binary(max_size=130), st.binary(min_size=1900, max_size=2300)),
    rsv1=st.booleans()), min_size=1, max_size=25).map(
        lambda fs: [Frame(f.msg_type, f.payload[:125] if f.msg_type in (int(PING), int(PONG)) else f.payload,
                          rsv1=f.rsv1) for f in fs])


@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(frames=frame_lists, cuts=st.lists(st.floats(0, 1), max_size=4),
       direction=st.sampled_from(["client_to_bot", "bot_to_client"]))
@pytest.mark.parametrize("pump_name", ["cython", "python"])
def test_any_frames_cut_anywhere_cross_unchanged(pump_name, frames, cuts, direction):
    async def main():
        bot, relay, client, client_rec, bot_rec = await relayed_session(pump_name)
        receiver = bot_rec if direction == "client_to_bot" else client_rec
        await _send_raw(direction, client, bot_rec, frames, cuts)
        await receiver.wait_frames(len(frames))
        assert receiver.frames == frames
        client.send_close(1000, b"done")
        await asyncio.wait_for(client_rec.disconnected.wait(), 5)
        bot.close()
        await relay.stop()
    arun(main())
