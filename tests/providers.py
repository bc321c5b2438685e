"""Telephony providers for the tests: call simulators and a bot running pipecat's own code.

The simulators send each provider's documented message shapes (Twilio Media Streams,
Telnyx media streaming, Plivo audio streams, Exotel Voicebot): the first messages, then
``media`` at 50 messages/s (20 ms of 8 kHz audio each), ``dtmf``, ``mark`` and ``stop``.
The bot is what a platform bot runs: pipecat's ``parse_telephony_websocket`` on the first
text frames, then the provider's pipecat frame serializer for everything after, replying
to each audio frame with audio serialized by that serializer.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import types
import warnings
from dataclasses import dataclass, field

from hypothesis import strategies as st
from websockets.asyncio.server import serve

from support import needs_test_extra

logging.getLogger("pipecat").setLevel(logging.WARNING)


def _import_pipecat() -> None:
    """pipecat's parser, frames and serializers, imported by the first PipecatBot: only the bot
    needs them (the call simulators and strategies do not), and cibuildwheel's containers, which
    install the short test-requires list without pipecat-ai, skip the bot's tests."""
    global InputAudioRawFrame, InputDTMFFrame, OutputAudioRawFrame, parse_telephony_websocket
    global ExotelFrameSerializer, PlivoFrameSerializer, TelnyxFrameSerializer, TwilioFrameSerializer
    if "parse_telephony_websocket" in globals():
        return
    needs_test_extra("pipecat")
    with warnings.catch_warnings():    # pipecat's audio helpers import audioop (deprecated in 3.11+)
        warnings.simplefilter("ignore", DeprecationWarning)
        from pipecat.frames.frames import InputAudioRawFrame, InputDTMFFrame, OutputAudioRawFrame
        from pipecat.runner.utils import parse_telephony_websocket
        from pipecat.serializers.exotel import ExotelFrameSerializer
        from pipecat.serializers.plivo import PlivoFrameSerializer
        from pipecat.serializers.telnyx import TelnyxFrameSerializer
        from pipecat.serializers.twilio import TwilioFrameSerializer
    try:                               # pipecat logs with loguru: keep the test output quiet
        from loguru import logger as _loguru
        _loguru.remove()
    except ImportError:                # pragma: no cover - loguru comes with pipecat
        pass

PROVIDERS = ("twilio", "telnyx", "plivo", "exotel")
MEDIA_PER_SECOND = 50


def _audio(provider: str, n: int) -> str:
    """20 ms of audio, distinct per message: 160 bytes of µ-law, or 320 of 16-bit PCM (Exotel)."""
    size = 320 if provider == "exotel" else 160
    return base64.b64encode(bytes((n * 7 + i) % 251 for i in range(size))).decode()


@dataclass
class Call:
    """One simulated call: ids and the messages it sends, in order."""

    provider: str
    service_host: str | None = None            # Twilio's customParameters._pipecatCloudServiceHost
    call_id: str = "CA5f0c3b0e8b5b4d6e9a0d2c1b7e3f4a11"
    stream_id: str = "MZ18ad3ab5a668481ce02b83e7395059f0"
    account_id: str = "AC25e16e9a716a4a1786a7c83f58e30482"
    custom: dict = field(default_factory=lambda: {"caller": "+15550100"})

    def first_messages(self) -> list[str]:
        p = self.provider
        if p == "twilio":
            params = dict(self.custom)
            if self.service_host is not None:
                params["_pipecatCloudServiceHost"] = self.service_host
            return [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
                    json.dumps({"event": "start", "sequenceNumber": "1", "start": {
                        "accountSid": self.account_id, "streamSid": self.stream_id, "callSid": self.call_id,
                        "tracks": ["inbound"], "customParameters": params,
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
                        "streamSid": self.stream_id})]
        if p == "telnyx":
            return [json.dumps({"event": "connected", "version": "1.0.0"}),
                    json.dumps({"event": "start", "sequence_number": "1", "start": {
                        "user_id": "3e6f995f-85f7-4705-9741-53b116d28237", "call_control_id": self.call_id,
                        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d", "from": "+13122010094", "to": "+13122123456",
                        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}},
                        "stream_id": self.stream_id})]
        if p == "plivo":
            return [json.dumps({"event": "start", "sequenceNumber": 0, "start": {
                "callId": self.call_id, "streamId": self.stream_id, "accountId": self.account_id,
                "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
                "extra_headers": "{}"})]
        return [json.dumps({"event": "connected"}),
                json.dumps({"event": "start", "sequence_number": 1, "stream_sid": self.stream_id, "start": {
                    "stream_sid": self.stream_id, "call_sid": self.call_id, "account_sid": self.account_id,
                    "from": "+919876543210", "to": "+918012345678", "custom_parameters": self.custom,
                    "media_format": {"encoding": "base64", "sample_rate": "8000", "bit_rate": "128kbps"}}})]

    def media(self, n: int) -> str:
        p, payload = self.provider, _audio(self.provider, n)
        if p == "twilio":
            return json.dumps({"event": "media", "sequenceNumber": str(n + 2), "streamSid": self.stream_id,
                               "media": {"track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20),
                                         "payload": payload}})
        if p == "telnyx":
            return json.dumps({"event": "media", "sequence_number": str(n + 2), "stream_id": self.stream_id,
                               "media": {"track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20),
                                         "payload": payload}})
        if p == "plivo":
            return json.dumps({"event": "media", "sequenceNumber": n + 1, "streamId": self.stream_id,
                               "media": {"track": "inbound", "timestamp": str(n * 20), "chunk": n + 1,
                                         "payload": payload}})
        return json.dumps({"event": "media", "sequence_number": n + 2, "stream_sid": self.stream_id,
                           "media": {"chunk": n + 1, "timestamp": str(n * 20), "payload": payload}})

    def events(self, seq: int) -> list[str]:
        """``dtmf``, ``mark`` (Plivo: ``playedStream``) and ``stop``, in the provider's shapes."""
        p = self.provider
        sid_key = {"twilio": "streamSid", "telnyx": "stream_id", "plivo": "streamId", "exotel": "stream_sid"}[p]
        base = {sid_key: self.stream_id}
        mark = ({"event": "playedStream", "name": "greeting", **base} if p == "plivo"
                else {"event": "mark", "mark": {"name": "greeting"}, **base})
        stop = {"event": "stop", **base,
                "stop": {"callSid": self.call_id, "accountSid": self.account_id}}
        return [json.dumps({"event": "dtmf", **base, "dtmf": {"track": "inbound_track", "digit": "5"}}),
                json.dumps(mark), json.dumps(stop)]


async def play(ws, call: Call, *, seconds: float, replies: list | None = None) -> list[str]:
    """Send ``call`` over the open client ``ws``: first messages, media paced at 50/s, events.

    Returns everything sent, in order. With ``replies``, the bot's messages received
    meanwhile are appended to it.
    """
    sent = call.first_messages()
    for message in sent:
        await ws.send(message)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n in range(int(seconds * MEDIA_PER_SECOND)):
        delay = started + n / MEDIA_PER_SECOND - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        message = call.media(n)
        await ws.send(message)
        sent.append(message)
    for message in call.events(0):
        await ws.send(message)
        sent.append(message)
    return sent


async def collect(ws, replies: list) -> None:
    """Read the bot's messages into ``replies`` until the connection closes."""
    try:
        async for message in ws:
            replies.append(message)
    except Exception:
        pass


class _FastAPILike:
    """What ``parse_telephony_websocket`` uses of a FastAPI WebSocket: ``iter_text()``."""

    def __init__(self, ws, received: list) -> None:
        self._ws = ws
        self._received = received

    def iter_text(self):
        return self._texts()

    async def _texts(self):
        async for message in self._ws:
            self._received.append(message)
            yield message


@dataclass
class BotSession:
    path: str
    headers: dict
    received: list = field(default_factory=list)       # every message, in order, as it arrived
    transport_type: str | None = None
    call_data: dict | None = None
    audio_frames: int = 0
    dtmf: list = field(default_factory=list)
    replies_sent: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


class PipecatBot:
    """A WebSocket bot at ``/ws`` that does what a pipecat telephony bot does on connect."""

    def __init__(self, *, delay: float = 0.0, reply: bool = True) -> None:
        _import_pipecat()
        self.sessions: list[BotSession] = []
        self.delay = delay                  # seconds before the bot accepts (a slow bot)
        self.reply = reply
        self.server = None
        self.connected = asyncio.Event()

    async def start(self) -> "PipecatBot":
        self.server = await serve(self._handler, "127.0.0.1", 0, process_request=self._slow,
                                  max_size=None, compression=None)
        return self

    async def _slow(self, connection, request):
        if self.delay:
            await asyncio.sleep(self.delay)
        return None

    @property
    def url(self) -> str:
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    def close(self) -> None:
        self.server.close()

    async def _handler(self, ws) -> None:
        session = BotSession(path=ws.request.path, headers=dict(ws.request.headers.raw_items()))
        self.sessions.append(session)
        self.connected.set()
        try:
            transport_type, call_data = await parse_telephony_websocket(_FastAPILike(ws, session.received))
            session.transport_type, session.call_data = transport_type, dict(call_data)
            serializer = _serializer(transport_type, call_data)
            await serializer.setup(types.SimpleNamespace(audio_in_sample_rate=8000))
            n_first = 1 if transport_type == "plivo" else 2
            for message in list(session.received[n_first:]):
                await self._handle(ws, session, serializer, message)
            async for message in ws:
                session.received.append(message)
                await self._handle(ws, session, serializer, message)
        except Exception:
            pass
        finally:
            session.done.set()

    async def _handle(self, ws, session: BotSession, serializer, message) -> None:
        frame = await serializer.deserialize(message)
        if isinstance(frame, InputAudioRawFrame):
            session.audio_frames += 1
            if self.reply:
                out = await serializer.serialize(OutputAudioRawFrame(
                    audio=frame.audio, sample_rate=frame.sample_rate, num_channels=1))
                if out:
                    await ws.send(out)
                    session.replies_sent += 1
        elif isinstance(frame, InputDTMFFrame):
            session.dtmf.append(frame.button.value)


def _serializer(transport_type: str, call_data):
    if transport_type == "twilio":
        return TwilioFrameSerializer(stream_sid=call_data["stream_id"], call_sid=call_data["call_id"],
                                     params=TwilioFrameSerializer.InputParams(auto_hang_up=False))
    if transport_type == "telnyx":
        return TelnyxFrameSerializer(stream_id=call_data["stream_id"],
                                     outbound_encoding=call_data["outbound_encoding"], inbound_encoding="PCMU",
                                     call_control_id=call_data["call_id"],
                                     params=TelnyxFrameSerializer.InputParams(auto_hang_up=False))
    if transport_type == "plivo":
        return PlivoFrameSerializer(stream_id=call_data["stream_id"], call_id=call_data["call_id"],
                                    params=PlivoFrameSerializer.InputParams(auto_hang_up=False))
    if transport_type == "exotel":
        return ExotelFrameSerializer(stream_sid=call_data["stream_id"], call_sid=call_data["call_id"])
    raise ValueError(f"pipecat did not recognise the provider: {transport_type}")


# -- hypothesis: first messages a provider might send, or anything ---------------------------

def mutated_first_messages():
    """(provider, messages): a provider's valid first messages, then one changed (hypothesis)."""
    def mutate(args):
        provider, how, index, cut = args
        call = Call(provider, service_host="bot.acme" if provider == "twilio" else None)
        messages = call.first_messages()
        message = json.loads(messages[index % len(messages)])
        if how == "drop-event":
            message.pop("event", None)
        elif how == "null-start":
            message["start"] = None
        elif how == "int-fields":
            for key in list(message.get("start", {}) or {}):
                message["start"][key] = 1
        text = json.dumps(message)
        if how == "cut":
            text = text[:cut % max(1, len(text))]
        messages[index % len(messages)] = text
        return provider, messages
    return st.tuples(st.sampled_from(PROVIDERS), st.sampled_from(["drop-event", "null-start", "int-fields", "cut"]),
                     st.integers(0, 1), st.integers(0, 400)).map(mutate)


def any_first_messages():
    """(provider, messages): anything, JSON-ish or not, text or binary (hypothesis)."""
    return st.tuples(st.sampled_from(PROVIDERS), st.lists(
        st.one_of(st.text(max_size=60), st.binary(max_size=40),
                  st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                               lambda inner: st.lists(inner, max_size=3)
                               | st.dictionaries(st.sampled_from(["event", "start", "stream_id", "streamSid",
                                                                  "callSid", "customParameters"]), inner,
                                                 max_size=4), max_leaves=8).map(json.dumps)),
        max_size=4))
