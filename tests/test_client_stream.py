"""ClientStream, without sockets: picows gets every byte up to the client's first close frame.

Both implementations (compiled and pure Python) are held to the same property over frame
sequences cut into arbitrary reads.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrelay import pump as pump_selector

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)


class Picows:
    """Stands in for picows' protocol: a read buffer, and the bytes it was told of."""

    def __init__(self, size: int = 4096) -> None:
        self.buffer = bytearray(size)
        self.received = bytearray()

    def get_buffer(self, size_hint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.received += self.buffer[:nbytes]


def header(opcode: int, n: int, *, masked: bool = True) -> bytes:
    """A final frame's header for an ``n``-byte payload, written with struct (RFC 6455 §5.2)."""
    second = 0x80 if masked else 0
    if n < 126:
        head = bytes([0x80 | opcode, second | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, second | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, second | 127]) + struct.pack("!Q", n)
    return head + (os.urandom(4) if masked else b"")             # the scan never unmasks


def frame(opcode: int, payload: bytes, *, masked: bool = True) -> bytes:
    return header(opcode, len(payload), masked=masked) + payload


def feed(stream, data: bytes, cuts: list[int]) -> None:
    pos = 0
    for size in cuts + [len(data)]:
        while pos < len(data) and size > 0:
            buffer = stream.get_buffer(-1)
            n = min(size, len(buffer), len(data) - pos)
            buffer[:n] = data[pos:pos + n]
            stream.buffer_updated(n)
            pos += n
            size -= n


@pytest.fixture(params=pump_selector.NAMES)
def implementation(request):
    return pump_selector.load(request.param)


FRAMES = st.lists(st.tuples(st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3]),
                            st.sampled_from([0, 1, 2, 125, 126, 127, 300, 65535, 65536, 70000]),
                            st.booleans()), min_size=1, max_size=6)


@PROPERTY
@given(frames=FRAMES, cuts=st.lists(st.integers(1, 9000), max_size=20))
def test_picows_gets_exactly_the_bytes_up_to_the_first_close(frames, cuts):
    encoded = [frame(op, b"p" * size, masked=masked) for op, size, masked in frames]
    encoded += [frame(0x8, b""), frame(0x1, b"late")]     # a close always comes, then more
    opcodes = [op for op, _, _ in frames] + [0x8, 0x1]
    first_close = opcodes.index(0x8)
    data = b"".join(encoded)
    expected = b"".join(encoded[:first_close + 1])
    for name in pump_selector.NAMES:          # both implementations agree, on every cut
        picows = Picows()
        feed(pump_selector.load(name).ClientStream(picows), data, cuts)
        assert bytes(picows.received) == expected, name


def test_two_closes_in_one_read_give_picows_the_first_only(implementation):
    picows = Picows()
    first = frame(0x8, struct.pack("!H", 1000))
    data = frame(0x1, b"hello") + first + frame(0x8, b"")
    feed(implementation.ClientStream(picows), data, [len(data)])
    assert bytes(picows.received) == data[:len(data) - 6]


def test_bytes_after_the_close_are_read_and_dropped(implementation):
    picows = Picows()
    stream = implementation.ClientStream(picows)
    feed(stream, frame(0x8, b""), [])
    for _ in range(3):                        # keeps reading, into its own scratch buffer
        buffer = stream.get_buffer(-1)
        assert len(buffer) > 0
        buffer[:4] = b"junk"
        stream.buffer_updated(4)
    assert len(picows.received) == 6 and picows.received[:2] == b"\x88\x80"


@PROPERTY
@given(length=st.one_of(st.integers(0, 300), st.integers(65000, 70000), st.integers(0, 2**63 - 1)),
       masked=st.booleans(), opcode=st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA]))
def test_the_header_arithmetic_every_frame_walker_shares_reads_any_header(length, masked, opcode):
    """core.frames.header_size and payload_length (the pure ClientStream's and FrameScanner's,
    whose C twin is client_stream.pxi's _scan) against headers written by struct."""
    from wsrelay.core.frames import header_size, payload_length
    head = header(opcode, length, masked=masked)
    assert header_size(head[1]) == len(head)
    assert payload_length(b"xy" + head, 2) == length
