"""Telephony providers' first messages, sans-I/O: which call, which agent, or what is wrong.

See docs/telephony.md. A provider endpoint (``/ws/twilio``, ``/ws/telnyx``,
``/ws/plivo``, ``/ws/exotel``) holds the client's first frames before a bot is chosen: Twilio cannot put the agent in
its URL (no query strings), so its ``start`` message names it, and for every provider a
stream that does not open as the provider's protocol says is refused before a bot is
started for it. What is checked is what pipecat's ``parse_telephony_websocket`` (the
platform's bot runtime) reads from the first two text frames, no more:

==========  ===========================  ===============================================
provider    first messages (``event``)   fields the ``start`` message must carry
==========  ===========================  ===============================================
twilio      ``connected``, ``start``     ``start.streamSid``, ``callSid``, ``accountSid``,
                                         ``customParameters._pipecatCloudServiceHost``
telnyx      ``connected``, ``start``     top-level ``stream_id``, ``start.call_control_id``,
                                         ``start.media_format.encoding``
plivo       ``start``                    ``start.streamId``, ``start.callId``
exotel      ``connected``, ``start``     ``start.stream_sid``, ``call_sid``, ``account_sid``
==========  ===========================  ===============================================

``FirstMessages.scan`` is fed the held bytes (the gate's buffer, untouched: those very
bytes go to the bot later) and answers ``None`` (need more), a ``Start`` (valid: the
call, and for Twilio the agent), or a ``ClientClosed``; anything else raises
``ProviderRefused`` (1008, with a reason naming what was wrong: reserved bits set
included, since no extension is negotiated) or ``FrameError`` (1002).
Every input ends in one of these: nothing else is raised (property-tested).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..core.frames import BINARY, CLOSE, CONTINUATION, TEXT, FrameScanner, close_code_and_reason
from ..core.routing import parse_service_host
from ..errors import FrameError, ProviderRefused, RouteError

SERVICE_HOST_PARAMETER = "_pipecatCloudServiceHost"
MAX_FIRST_BYTES = 65536        # held bytes before the first messages are complete
MAX_FIRST_FRAMES = 16          # frames (pings included) before they are complete


@dataclass(frozen=True)
class Provider:
    name: str
    events: tuple[str, ...]                     # the ``event`` of each first message, in order
    required: tuple[tuple[str, ...], ...]       # paths in the start message: non-empty strings
    routes_by_start: bool = False               # the agent is named in the start message

    def describe(self) -> str:
        return " then ".join(repr(e) for e in self.events)


PROVIDERS = {
    "twilio": Provider("twilio", ("connected", "start"),
                       (("start", "streamSid"), ("start", "callSid"), ("start", "accountSid")),
                       routes_by_start=True),
    "telnyx": Provider("telnyx", ("connected", "start"),
                       (("stream_id",), ("start", "call_control_id"), ("start", "media_format", "encoding"))),
    "plivo": Provider("plivo", ("start",), (("start", "streamId"), ("start", "callId"))),
    "exotel": Provider("exotel", ("connected", "start"),
                       (("start", "stream_sid"), ("start", "call_sid"), ("start", "account_sid"))),
}


@dataclass(frozen=True)
class Start:
    """The first messages are complete and valid."""

    provider: str
    stream_id: str
    call_id: str
    service_host: tuple[str, str] | None        # (agent, organization), Twilio only
    end: int                                    # held bytes up to the end of the start message


@dataclass(frozen=True)
class ClientClosed:
    """The client sent a close frame before its first messages were complete."""

    code: int | None
    reason: str


class FirstMessages:
    """Reads one provider's first messages from the held bytes (see the module docstring)."""

    __slots__ = ("provider", "max_bytes", "max_frames", "_scanner", "_messages", "_parts", "_opcode")

    def __init__(self, provider: str, *, max_bytes: int = MAX_FIRST_BYTES,
                 max_frames: int = MAX_FIRST_FRAMES) -> None:
        self.provider = PROVIDERS[provider]
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self._scanner = FrameScanner(max_payload=max_bytes)
        self._messages: list[dict] = []
        self._parts: list[bytes] = []               # fragments of the message being assembled
        self._opcode: int | None = None

    def scan(self, buffer: bytes | bytearray) -> Start | ClientClosed | None:
        """Walk the new complete frames of ``buffer`` (held bytes so far, growing)."""
        while True:
            frame = self._scanner.next(buffer, want_payload=True)
            if frame is None:
                break
            if frame.opcode == CLOSE:
                code, reason = close_code_and_reason(frame.payload or b"")
                return ClientClosed(code, reason)
            if frame.rsv:
                raise ProviderRefused(f"reserved bits {frame.rsv:#05b} set on a first {self.provider.name} "
                                      "frame (no extension is negotiated)")
            if frame.opcode in (TEXT, BINARY, CONTINUATION):
                message = self._assemble(frame.opcode, frame.fin, frame.payload or b"")
                if message is not None:
                    start = self._check(message, frame.end)
                    if start is not None:
                        return start
            if self._scanner.frames >= self.max_frames:
                raise ProviderRefused(f"no complete {self.provider.describe()} in the first "
                                      f"{self.max_frames} frames")
        if len(buffer) > self.max_bytes:
            raise ProviderRefused(f"first messages over {self.max_bytes} bytes")
        return None

    def _assemble(self, opcode: int, fin: bool, payload: bytes) -> bytes | None:
        if opcode == CONTINUATION:
            if self._opcode is None:
                raise FrameError("continuation frame without a message to continue")
        elif self._opcode is not None:
            raise FrameError("new message before the previous one was finished")
        else:
            self._opcode = opcode
        self._parts.append(payload)
        if not fin:
            return None
        first_opcode, self._opcode = self._opcode, None
        message, self._parts = b"".join(self._parts), []
        n = len(self._messages) + 1
        if first_opcode != TEXT:
            raise ProviderRefused(f"{self.provider.name} message {n} is a binary frame; "
                                  "the first messages must be JSON text")
        return message

    def _check(self, message: bytes, end: int) -> Start | None:
        p = self.provider
        n = len(self._messages) + 1
        expected = p.events[n - 1]
        try:
            data = json.loads(message.decode("utf-8"))
        except UnicodeDecodeError:
            raise ProviderRefused(f"{p.name} message {n} is not valid UTF-8") from None
        except (ValueError, RecursionError):
            raise ProviderRefused(f"{p.name} message {n} is not JSON") from None
        if not isinstance(data, dict):
            raise ProviderRefused(f"{p.name} message {n} is not a JSON object")
        event = data.get("event")
        if event != expected:
            got = repr(event)[:40] if isinstance(event, str) else "no event"
            raise ProviderRefused(f"{p.name} message {n} must be event {expected!r}, got {got} "
                                  f"(expected {p.describe()})")
        self._messages.append(data)
        if len(self._messages) < len(p.events):
            return None
        return self._start(data, end)

    def _start(self, data: dict, end: int) -> Start:
        p = self.provider
        values = []
        for path in p.required:
            value = _get(data, path)
            if not isinstance(value, str) or not value:
                raise ProviderRefused(f"{p.name} start message has no {'.'.join(path)}")
            values.append(value)
        service_host = None
        if p.routes_by_start:
            params = _get(data, ("start", "customParameters"))
            if not isinstance(params, dict) or SERVICE_HOST_PARAMETER not in params:
                raise ProviderRefused(f"missing parameter {SERVICE_HOST_PARAMETER} in "
                                      "start.customParameters: add <Parameter name=\""
                                      f"{SERVICE_HOST_PARAMETER}\" value=\"agent.org\"/> to the <Stream>")
            value = params[SERVICE_HOST_PARAMETER]
            if not isinstance(value, str):
                raise ProviderRefused(f"{SERVICE_HOST_PARAMETER} is not a string")
            try:
                service_host = parse_service_host(value)
            except RouteError:
                raise ProviderRefused(f"malformed {SERVICE_HOST_PARAMETER} {value[:80]!r}: expected "
                                      "'{agent}.{organization}'") from None
        stream_id, call_id = values[0], values[1]
        return Start(p.name, stream_id, call_id, service_host, end)


def _get(data: dict, path: tuple[str, ...]) -> object:
    value: object = data
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value
