"""RFC 6455 framing, sans-I/O: just enough to hold a provider's first frames.

The relay never parses frames on its data path: picows does, and the pump relays them
unchanged. Only a provider endpoint (telephony/providers.py) must read the client's first
messages before a bot is chosen, while they are still bytes in the gate's buffer. Those
bytes stay exactly as received (they are later fed to picows and relayed from there);
``FrameScanner`` only walks over them, unmasking a data payload into a copy when asked.
Also here: the frames and the ``101`` the relay writes itself during that hold, and the
header arithmetic every frame walker of the relay shares (``header_size``, ``payload_length``):
``FrameScanner`` here, the pure pump's ``ClientStream`` (pump/pure.py), and its compiled twin
in C (csrc/wsrelay/pump/client_stream.pxi, kept equal by tests/test_client_stream.py).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

from ..errors import FrameError, ProviderRefused

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (CONTINUATION, TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def header_size(second: int) -> int:
    """A frame header's length in bytes, from its second byte (RFC 6455 §5.2): two, plus 2 or
    8 for an extended payload length (7-bit length 126 or 127), plus 4 for a mask."""
    flag = second & 0x7F
    return 2 + (2 if flag == 126 else 8 if flag == 127 else 0) + (4 if second & 0x80 else 0)


def payload_length(header: bytes | bytearray | memoryview, pos: int = 0) -> int:
    """The payload length of the frame whose complete header starts at ``header[pos]``."""
    flag = header[pos + 1] & 0x7F
    if flag == 126:
        return int.from_bytes(header[pos + 2:pos + 4], "big")
    if flag == 127:
        return int.from_bytes(header[pos + 2:pos + 10], "big")
    return flag


@dataclass(frozen=True, slots=True)
class Frame:
    """One client frame of the held bytes. ``payload`` is unmasked, or None when skipped."""

    opcode: int
    fin: bool
    rsv: int                      # the three reserved bits (0 unless an extension was negotiated)
    length: int
    payload: bytes | None
    end: int                      # offset in the buffer just after this frame


class FrameScanner:
    """Walks client frames in a growing buffer; each complete frame is returned once.

    ``next(buffer, want_payload)`` returns the next complete frame from ``buffer`` (the
    same, growing buffer every call), or None until more bytes arrive. Raises FrameError
    for what RFC 6455 forbids a client: an unmasked frame, a reserved opcode, a control
    frame that is fragmented or over 125 bytes; and ProviderRefused (the relay's own
    limit, not a protocol error) for a frame longer than ``max_payload``.
    """

    __slots__ = ("pos", "frames", "max_payload")

    def __init__(self, max_payload: int) -> None:
        self.pos = 0                  # where the next frame starts
        self.frames = 0               # complete frames walked so far
        self.max_payload = max_payload

    def next(self, buffer: bytes | bytearray, want_payload: bool) -> Frame | None:
        pos, n = self.pos, len(buffer)
        if n - pos < 2:
            return None
        first, second = buffer[pos], buffer[pos + 1]
        opcode, fin = first & 0x0F, bool(first & 0x80)
        if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
            raise FrameError(f"reserved opcode {opcode:#x}")
        if not second & 0x80:
            raise FrameError("unmasked frame from the client")
        head = header_size(second) - 4           # the mask follows the length
        if n - pos < head:
            return None
        length = payload_length(buffer, pos)
        if opcode in CONTROL_OPCODES and (length > 125 or not fin):
            raise FrameError("control frame fragmented or over 125 bytes")
        if length > self.max_payload:
            raise ProviderRefused(f"a frame of {length} bytes while the first messages are read "
                                  f"(at most {self.max_payload})")
        start = pos + head + 4
        end = start + length
        if n < end:
            return None
        payload = None
        if want_payload or opcode == CLOSE:
            payload = unmask(bytes(buffer[start - 4:start]), bytes(buffer[start:end]))
        self.pos = end
        self.frames += 1
        return Frame(opcode, fin, (first >> 4) & 0x07, length, payload, end)


def unmask(mask: bytes, data: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``mask`` (one big-integer XOR, not a byte loop)."""
    if not data:
        return b""
    key = (mask * (len(data) // 4 + 1))[:len(data)]
    value = int.from_bytes(data, "big") ^ int.from_bytes(key, "big")
    return value.to_bytes(len(data), "big")


def close_frame(code: int, reason: str) -> bytes:
    """A server's (unmasked) close frame; the reason is cut to fit 125 bytes on a character."""
    data = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    payload = struct.pack("!H", code) + data
    return struct.pack("!BB", 0x80 | CLOSE, len(payload)) + payload


def close_code_and_reason(payload: bytes) -> tuple[int | None, str]:
    """The code and reason of a close payload (reason decoded leniently, for the log)."""
    if len(payload) < 2:
        return None, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")


def accept_value(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


RESUME_HEADER = "X-Wsrelay-Resume"


def switching_protocols(accept: str, subprotocol: str | None = None, resume_token: str | None = None) -> bytes:
    """The relay's one ``101``, for every client: ``accept`` is ``Sec-WebSocket-Accept``
    (``accept_value`` of the client's key), ``subprotocol`` the bot's choice, if any.

    Written by the gate when it holds a provider's first messages (no bot has chosen a
    sub-protocol yet), and by picows through ``edge/handover.py``'s ``_Client101`` on the
    generic endpoint: the same bytes either way. ``resume_token``: the session's next resume
    token, for a session with resume on (docs/resume.md).
    """
    chosen = b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1") + b"\r\n" if subprotocol else b""
    if resume_token:
        chosen += b"X-Wsrelay-Resume: " + resume_token.encode("ascii") + b"\r\n"
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + chosen +
            b"Sec-WebSocket-Accept: " + accept.encode("ascii") + b"\r\n\r\n")
