"""Provider endpoints end to end: simulated calls through a real relay to a pipecat bot.

Real sockets on 127.0.0.1, ``websockets`` clients sending each provider's message shapes,
and a bot running pipecat's ``parse_telephony_websocket`` and frame serializers
(tests/providers.py). Every refusal is checked over real sockets: its status or close
code and reason, that no bot was contacted, and its one log line.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import re
import socket

import pytest
import websockets
from websockets.asyncio.client import connect

from providers import PROVIDERS, Call, PipecatBot, collect, play
from support import (Bot, arun, free_port, masked_frame, raw_request, relay_config, start_relay, status_of,
                     upgrade_head)
from wsrelay.telephony.signatures import twilio_signature

AGENT = "bot.acme"
# A body whose standard base64 has a '+' (and a '/'): it must reach the bot byte for byte.
BODY = base64.b64encode(json.dumps({"caller": "+15550100", "note": "~~~>", "x": "ÿ"},
                                  ensure_ascii=False).encode()).decode()
assert "+" in BODY and "/" in BODY and BODY.endswith("=")


def _path(provider: str, *, service_host: str = AGENT, query: str = "") -> str:
    if provider == "twilio":
        return "/ws/twilio"
    return f"/ws/{provider}?serviceHost={service_host}" + (f"&{query}" if query else "")


def _call(provider: str, service_host: str = AGENT) -> Call:
    return Call(provider, service_host=service_host if provider == "twilio" else None)


async def _relay(upstreams, pump, *, agent_overrides=None, **relay_overrides):
    config = relay_config({AGENT: upstreams}, **relay_overrides)
    if agent_overrides:
        config = dataclasses.replace(config, agents=(dataclasses.replace(config.agents[0], **agent_overrides),))
    return await start_relay(config, pump)


async def _refusal(port: int, path: str, messages, headers=None) -> websockets.frames.Close:
    """Connect, send ``messages`` (str or bytes), return the close frame the relay sent."""
    async with connect(f"ws://127.0.0.1:{port}{path}", additional_headers=headers, open_timeout=5,
                       close_timeout=5) as ws:
        for message in messages:
            try:
                await ws.send(message)
            except websockets.ConnectionClosed:
                break
        try:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        except websockets.ConnectionClosed as exc:
            assert exc.rcvd is not None, "the relay closed without a close frame"
            return exc.rcvd
    raise AssertionError("unreachable")


def _refused_lines(caplog) -> list[dict]:
    return [r.fields for r in caplog.records
            if getattr(r, "fields", {}).get("event") in ("session_refused", "handshake_refused")]


# -- calls that work ---------------------------------------------------------------------------

@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_call_reaches_a_pipecat_bot_unchanged_and_its_replies_come_back(pump, provider):
    async def main():
        bot = await PipecatBot().start()
        relay = await _relay([bot.url], pump)
        call = _call(provider)
        replies: list = []
        query = "" if provider == "twilio" else f"body={BODY}"
        async with connect(f"ws://127.0.0.1:{relay.port}{_path(provider, query=query)}", max_size=None) as ws:
            reader = asyncio.create_task(collect(ws, replies))
            sent = await play(ws, call, seconds=2.5)
            await asyncio.wait_for(_until(lambda: len(bot.sessions) == 1
                                          and len(bot.sessions[0].received) == len(sent)), 10)
            await asyncio.wait_for(_until(lambda: len(replies) >= bot.sessions[0].replies_sent > 0), 10)
            await ws.close()
            await reader
        session = bot.sessions[0]
        # pipecat recognised the provider and the call from the first two text frames ...
        assert session.transport_type == provider
        assert session.call_data["call_id"] == call.call_id
        assert session.call_data["stream_id"] == call.stream_id
        if provider == "twilio":
            assert session.call_data["body"]["_pipecatCloudServiceHost"] == AGENT
            assert session.path == "/ws"
        else:
            assert session.path == f"/ws?body={BODY}"              # byte for byte: '+' stays '+'
        # ... every message arrived, first messages included, in order, byte for byte ...
        assert session.received == sent
        n_media = sum(1 for m in sent if json.loads(m)["event"] == "media")
        assert n_media >= 120
        assert session.audio_frames == n_media             # each one decoded by pipecat's serializer
        assert session.dtmf == ["5"]
        # ... and the bot's serialized audio replies reached the caller, in order.
        reply_event = "playAudio" if provider == "plivo" else "media"
        assert len(replies) == session.replies_sent
        assert all(json.loads(r)["event"] == reply_event for r in replies)
        # The platform's bot image reads the session id from X-Daily-Session-Id.
        headers = {k.lower(): v for k, v in session.headers.items()}
        assert headers["x-daily-session-id"] == headers["x-session-id"]
        assert headers["x-service-host"] == AGENT
        await relay.stop()
        bot.close()
    arun(main(), timeout=60)


async def _until(predicate, interval: float = 0.01) -> None:
    while not predicate():
        await asyncio.sleep(interval)


def test_frames_sent_before_the_bot_answers_are_held_in_order_with_bounded_memory(pump):
    """A slow bot: the caller streams meanwhile; the relay holds at most its bound, loses nothing."""
    async def main():
        bot = await PipecatBot(delay=1.5, reply=False).start()
        relay = await _relay([bot.url], pump, upstream_connect_timeout=5)
        call = _call("twilio")
        held_peak = 0
        async with connect(f"ws://127.0.0.1:{relay.port}/ws/twilio", max_size=None) as ws:
            sender = asyncio.create_task(play(ws, dataclasses.replace(call), seconds=3))

            async def watch():
                nonlocal held_peak
                while not sender.done():
                    for gate in _gates(relay):
                        held_peak = max(held_peak, len(gate.early))
                    await asyncio.sleep(0.005)
            watcher = asyncio.create_task(watch())
            sent = await sender
            await watcher
            await asyncio.wait_for(_until(lambda: bot.sessions and len(bot.sessions[0].received) == len(sent)), 15)
            await ws.close()
        assert bot.sessions[0].received == sent
        assert held_peak <= 65536 + 16384, held_peak            # the early-data bound plus one read
        await relay.stop()
        bot.close()
    arun(main(), timeout=60)


def _gates(relay):
    """The gates of sessions still connecting (the hold lives in the gate)."""
    gates = []
    for session in relay.sessions:
        attach = getattr(session, "_attach", None)
        gate = getattr(attach, "__self__", None)
        if gate is not None:
            gates.append(gate)
    return gates


def test_a_big_burst_behind_the_start_pauses_reading_instead_of_growing(pump):
    """Thousands of frames while the bot is slow: the gate's buffer stays bounded, all arrive."""
    async def main():
        bot = await PipecatBot(delay=1.0, reply=False).start()
        relay = await _relay([bot.url], pump)
        call = _call("twilio")
        async with connect(f"ws://127.0.0.1:{relay.port}/ws/twilio", max_size=None) as ws:
            sent = call.first_messages()
            peak = 0

            def sample() -> None:                        # throughout the burst, not once after it
                nonlocal peak
                peak = max([peak, *(len(g.early) for g in _gates(relay))])

            for m in sent:
                await ws.send(m)
            for n in range(3000):                       # 60 s of audio at once (~1 MB)
                m = call.media(n)
                sent.append(m)
                await ws.send(m)
                if n % 50 == 0:
                    sample()
                    await asyncio.sleep(0)
            for _ in range(100):                        # while the slow bot is still being contacted
                sample()
                await asyncio.sleep(0.005)
            await asyncio.wait_for(_until(lambda: bot.sessions and len(bot.sessions[0].received) == len(sent)), 20)
            await ws.close()
        assert 0 < peak <= 65536 + 65536, peak
        assert bot.sessions[0].received == sent
        await relay.stop()
        bot.close()
    arun(main(), timeout=60)


# -- refusals before the upgrade (Telnyx, Plivo, Exotel: as the generic endpoint) ----------------

PRE_UPGRADE = [
    ("missing serviceHost", lambda p: f"/ws/{p}", {}, 400),
    ("malformed serviceHost", lambda p: f"/ws/{p}?serviceHost=bot_acme", {}, 400),
    ("unknown agent", lambda p: f"/ws/{p}?serviceHost=nobody.acme", {}, 404),
    ("unknown organisation", lambda p: f"/ws/{p}?serviceHost=bot.nobody", {}, 404),
    ("token missing", lambda p: f"/ws/{p}?serviceHost={AGENT}", {"websocket_auth": "token"}, 401),
    ("token invalid", lambda p: f"/ws/{p}?serviceHost={AGENT}&token=abc.def", {"websocket_auth": "token"}, 403),
    ("at capacity", lambda p: f"/ws/{p}?serviceHost={AGENT}", {"max_sessions": 1}, 429),
]


@pytest.mark.parametrize("provider", ["telnyx", "plivo", "exotel"])
@pytest.mark.parametrize("name,path,agent,status", PRE_UPGRADE, ids=[r[0] for r in PRE_UPGRADE])
def test_routed_providers_refuse_before_the_upgrade_like_the_generic_endpoint(pump, provider, name, path,
                                                                              agent, status, caplog):
    async def main():
        bot = await Bot(echo=True).start()
        relay = await _relay([bot.url], pump, agent_overrides=agent)
        if "max_sessions" in agent:                  # one call holds the only slot
            relay.capacity.try_acquire(AGENT, 1)
        if "websocket_auth" in agent:
            relay.authenticator.auth = dataclasses.replace(relay.authenticator.auth, keys={"k1": "s" * 32},
                                                           active_key="k1")
        with caplog.at_level(logging.INFO, logger="wsrelay"):
            response = await raw_request(relay.port, upgrade_head(path(provider)))
        assert status_of(response) == status, response[:200]
        assert bot.requests == []
        lines = _refused_lines(caplog)
        assert len(lines) == 1 and lines[0]["status"] == status
        await relay.stop()
        bot.close()
    arun(main())


def test_a_token_reaches_a_provider_endpoint_as_for_the_generic_one(pump):
    async def main():
        bot = await PipecatBot().start()
        relay = await _relay([bot.url], pump, agent_overrides={"websocket_auth": "token"})
        relay.authenticator.auth = dataclasses.replace(relay.authenticator.auth, keys={"k1": "s" * 32},
                                                       active_key="k1")
        token = relay.authenticator.mint(AGENT)
        async with connect(f"ws://127.0.0.1:{relay.port}/ws/telnyx?serviceHost={AGENT}&token={token}") as ws:
            await play(ws, _call("telnyx"), seconds=0.2)
            await asyncio.wait_for(_until(lambda: bot.sessions and bot.sessions[0].transport_type), 5)
        assert "token" not in bot.sessions[0].path
        replay = await raw_request(relay.port, upgrade_head(f"/ws/telnyx/{token}?serviceHost={AGENT}"))
        assert status_of(replay) == 403                  # single use
        await relay.stop()
        bot.close()
    arun(main())


# -- refusals after the upgrade: close frames with a code and a reason ---------------------------

def _twilio(service_host=AGENT, **start_changes):
    call = Call("twilio", service_host=service_host)
    first = call.first_messages()
    if start_changes:
        start = json.loads(first[1])
        start["start"].update(start_changes)
        first[1] = json.dumps(start)
    return first


AFTER_UPGRADE = [
    # (name, provider, messages, relay overrides, code, words in the reason)
    ("unknown agent", "twilio", lambda: _twilio("nobody.acme"), {}, 1008, "unknown agent"),
    ("missing parameter", "twilio", lambda: _twilio(None), {}, 1008, "_pipecatCloudServiceHost"),
    ("malformed service host", "twilio", lambda: _twilio("no_dot"), {}, 1008, "malformed"),
    ("no start in time", "twilio", lambda: _twilio()[:1], {"provider_start_timeout": 0.3}, 1008, "within 0.3s"),
    ("silence", "exotel", lambda: [], {"provider_start_timeout": 0.3}, 1008, "no exotel start"),
    ("start before connected", "twilio", lambda: _twilio()[1:], {}, 1008, "must be event 'connected'"),
    ("binary first message", "telnyx", lambda: [b"\x00\x01"], {}, 1008, "binary frame"),
    ("not JSON", "plivo", lambda: ["hello"], {}, 1008, "not JSON"),
    ("JSON not an object", "exotel", lambda: ["[1, 2]"], {}, 1008, "not a JSON object"),
    ("missing callSid", "twilio", lambda: _twilio(callSid=None), {}, 1008, "start.callSid"),
    ("telnyx without stream_id", "telnyx",
     lambda: [json.dumps({"event": "connected"}), json.dumps({"event": "start", "start": {"call_control_id": "x"}})],
     {}, 1008, "stream_id"),
    ("plivo without callId", "plivo",
     lambda: [json.dumps({"event": "start", "start": {"streamId": "s"}})], {}, 1008, "start.callId"),
    ("telnyx without an encoding", "telnyx",      # pipecat's serializer needs it as outbound_encoding
     lambda: [json.dumps({"event": "connected"}),
              json.dumps({"event": "start", "stream_id": "s", "start": {"call_control_id": "x"}})],
     {}, 1008, "start.media_format.encoding"),
]


@pytest.mark.parametrize("name,provider,messages,overrides,code,words", AFTER_UPGRADE,
                         ids=[r[0] for r in AFTER_UPGRADE])
def test_refusals_after_the_upgrade_are_close_frames_with_a_reason(pump, name, provider, messages, overrides,
                                                                   code, words, caplog):
    async def main():
        bot = await Bot(echo=True).start()
        relay = await _relay([bot.url], pump, **overrides)
        with caplog.at_level(logging.INFO, logger="wsrelay"):
            close = await _refusal(relay.port, _path(provider), messages())
            await asyncio.sleep(0.05)
        assert close.code == code and words in close.reason, close
        assert bot.requests == []
        lines = _refused_lines(caplog)
        assert len(lines) == 1 and lines[0]["code"] == code and words in lines[0]["reason"], lines
        assert relay.rejections[code] == 1
        assert not relay.sessions
        await relay.stop()
        bot.close()
    arun(main())


def test_at_capacity_after_routing_is_1013(pump, caplog):
    async def main():
        bot = await Bot(echo=True).start()
        relay = await _relay([bot.url], pump, agent_overrides={"max_sessions": 1})
        relay.capacity.try_acquire(AGENT, 1)
        with caplog.at_level(logging.INFO, logger="wsrelay"):
            close = await _refusal(relay.port, "/ws/twilio", _twilio())
        assert close.code == 1013 and "try again later" in close.reason
        assert bot.requests == []
        assert [line["code"] for line in _refused_lines(caplog)] == [1013]
        relay.capacity.release(AGENT)
        await relay.stop()
        bot.close()
    arun(main())


@pytest.mark.parametrize("provider", ["twilio", "plivo"])
def test_no_bot_reachable_is_1014(pump, provider, caplog):
    async def main():
        dead = f"ws://127.0.0.1:{free_port()}/ws"
        relay = await _relay([dead, dead], pump)
        call = _call(provider)
        with caplog.at_level(logging.INFO, logger="wsrelay"):
            close = await _refusal(relay.port, _path(provider), call.first_messages() + [call.media(0)])
        assert close.code == 1014 and "no bot instance" in close.reason
        assert [line["code"] for line in _refused_lines(caplog)] == [1014]
        assert not relay.sessions and not relay.active
        await relay.stop()
    arun(main())


def test_a_bot_that_never_answers_is_1014_within_the_connect_timeout(pump):
    async def main():
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        relay = await _relay([f"ws://127.0.0.1:{silent.getsockname()[1]}/ws"], pump, upstream_connect_timeout=0.5)
        started = asyncio.get_running_loop().time()
        close = await _refusal(relay.port, "/ws/twilio", _twilio())
        assert close.code == 1014 and "did not answer" in close.reason
        assert asyncio.get_running_loop().time() - started < 3
        silent.close()
        await relay.stop()
    arun(main())


def test_a_caller_that_hangs_up_during_the_hold_is_logged_and_frees_everything(pump, caplog):
    async def main():
        bot = await Bot(echo=True).start()
        relay = await _relay([bot.url], pump)
        with caplog.at_level(logging.INFO, logger="wsrelay"):
            async with connect(f"ws://127.0.0.1:{relay.port}/ws/twilio") as ws:
                await ws.send(_twilio()[0])
                await ws.close(1000, "caller hung up")
            await asyncio.sleep(0.1)
        lines = _refused_lines(caplog)
        assert len(lines) == 1 and "closed" in lines[0]["reason"], lines
        assert bot.requests == [] and not relay.sessions
        await relay.stop()
        bot.close()
    arun(main())


# -- X-Twilio-Signature (beyond the platform) ------------------------------------------------------

TWILIO_TOKEN = "12345678901234567890123456789012"


@pytest.mark.parametrize("path,good_status", [("/ws/twilio", None), (f"/ws/generic/{AGENT}", 101)])
def test_twilio_signature_is_checked_before_any_bot_is_contacted(pump, path, good_status, caplog):
    caplog.set_level(logging.INFO, logger="wsrelay")

    async def main():
        bot = await PipecatBot().start()
        relay = await _relay([bot.url], pump, agent_overrides={"websocket_auth": "twilio-signature",
                                                                 "twilio_auth_token": TWILIO_TOKEN},
                             public_url="wss://relay.example.com")
        signed = twilio_signature(TWILIO_TOKEN, f"wss://relay.example.com{path}")
        wrong = twilio_signature("another-account-token", f"wss://relay.example.com{path}")
        for headers in ({}, {"X-Twilio-Signature": wrong}):
            if good_status is None:                  # /ws/twilio: the start message names the agent
                close = await _refusal(relay.port, path, _twilio(), headers=headers)
                assert close.code == 1008 and close.reason == "forbidden: auth failed"
            else:
                extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                assert status_of(await raw_request(relay.port, upgrade_head(path, extra=extra))) == 403
        assert bot.sessions == []
        reasons = [line["reason"] for line in _refused_lines(caplog)]
        assert any("no X-Twilio-Signature" in r for r in reasons) and any("does not match" in r for r in reasons)
        # The right signature passes.
        async with connect(f"ws://127.0.0.1:{relay.port}{path}",
                           additional_headers={"X-Twilio-Signature": signed}) as ws:
            await play(ws, _call("twilio"), seconds=0.2)
            await asyncio.wait_for(_until(lambda: bot.sessions and bot.sessions[0].transport_type), 5)
        assert bot.sessions[0].transport_type == "twilio"
        await relay.stop()
        bot.close()
    arun(main())


# -- hypothesis: fuzzed first messages over real sockets -----------------------------------------

class _RelayThread:
    """A real relay on its own loop in a thread, for hypothesis' synchronous examples.

    Agent ``bot.acme``'s bot answers every upgrade with 503, so a call whose first
    messages are valid ends in 1014 (and is counted at the bot); any other ends in 1008.
    """

    def __init__(self, pump: str) -> None:
        import threading
        import uvloop
        self.pump = pump
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> "_RelayThread":
        self.thread.start()
        self.run(self._start())
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    async def _start(self) -> None:
        self.bot = await Bot(status=503).start()
        self.relay = await _relay([self.bot.url], self.pump, provider_start_timeout=0.3, close_timeout=1.0)

    async def _stop(self) -> None:
        await self.relay.stop()
        self.bot.close()

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def bot_requests(self) -> int:
        async def read():
            return len(self.bot.requests)
        return self.run(read())


def test_property_fuzzed_first_messages_never_crash_and_end_in_a_close_with_a_reason(pump):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from websockets.sync.client import connect as sync_connect

    from providers import any_first_messages, mutated_first_messages
    from support import masked_frame
    from wsrelay.telephony.providers import FirstMessages, Start

    with _RelayThread(pump) as env:
        seen = {1008: 0, 1014: 0}

        @settings(max_examples=40, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(st.one_of(mutated_first_messages(), any_first_messages()))
        def check(case):
            provider, messages = case
            wire = b"".join(masked_frame(0x1, m.encode("utf-8", "surrogatepass")) if isinstance(m, str)
                            else masked_frame(0x2, m) for m in messages)
            try:
                valid = isinstance(FirstMessages(provider).scan(wire), Start)
            except Exception:
                valid = False
            before = env.bot_requests()
            with sync_connect(f"ws://127.0.0.1:{env.relay.port}{_path(provider)}", open_timeout=5,
                              close_timeout=5) as ws:
                for m in messages:
                    try:
                        ws.send(m)
                    except websockets.ConnectionClosed:
                        break
                    except UnicodeEncodeError:       # lone surrogates: not sendable as text
                        ws.send(m.encode("utf-8", "surrogatepass"), text=True)
                try:
                    while True:
                        ws.recv(timeout=10)
                except websockets.ConnectionClosed as exc:
                    close = exc.rcvd
            assert close is not None and close.reason, "closed without a code and a reason"
            assert close.code == (1014 if valid else 1008), (close, messages)
            assert env.bot_requests() == before + (1 if valid else 0)
            seen[close.code] += 1

        check()
        assert seen[1008] >= 10, seen
        # ... and the relay still serves.
        close = asyncio.run_coroutine_threadsafe(
            _refusal(env.relay.port, "/ws/plivo?serviceHost=bot.acme", _call("plivo").first_messages()),
            env.loop).result(20)
        assert close.code == 1014


async def _closed_by_stop(ws, relay) -> None:
    """Stop the relay while the caller ``ws`` is held: it gets close 1012 "relay restarting"."""
    stopping = asyncio.create_task(relay.stop(drain_seconds=0))
    with pytest.raises(websockets.ConnectionClosed) as info:
        await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (1012, "relay restarting")
    await asyncio.wait_for(stopping, 5)


def test_a_relay_shutting_down_closes_a_held_caller_with_1012(pump, caplog):
    """The bot is slow, the relay is stopped: the caller (held by the gate) gets 1012, once."""
    caplog.set_level(logging.INFO, logger="wsrelay")

    async def main():
        bot = await PipecatBot(delay=3.0).start()
        relay = await _relay([bot.url], pump, close_timeout=0.5)
        async with connect(f"ws://127.0.0.1:{relay.port}/ws/twilio") as ws:
            for message in _twilio():
                await ws.send(message)
            await asyncio.wait_for(_until(lambda: relay.sessions), 5)
            await _closed_by_stop(ws, relay)
        assert [line["code"] for line in _refused_lines(caplog)] == [1012]
        bot.close()
    arun(main())


def test_a_token_on_the_twilio_path_is_checked_once_the_start_names_the_agent(pump, caplog):
    caplog.set_level(logging.INFO, logger="wsrelay")

    async def main():
        bot = await PipecatBot().start()
        relay = await _relay([bot.url], pump, agent_overrides={"websocket_auth": "token"})
        relay.authenticator.auth = dataclasses.replace(relay.authenticator.auth, keys={"k1": "s" * 32},
                                                       active_key="k1")
        close = await _refusal(relay.port, "/ws/twilio", _twilio())
        assert close.code == 1008 and close.reason == "forbidden: auth failed"
        assert bot.sessions == []
        assert "token" in _refused_lines(caplog)[0]["reason"]
        token = relay.authenticator.mint(AGENT)
        async with connect(f"ws://127.0.0.1:{relay.port}/ws/twilio/{token}") as ws:
            await play(ws, _call("twilio"), seconds=0.2)
            await asyncio.wait_for(_until(lambda: bot.sessions and bot.sessions[0].transport_type), 5)
        assert bot.sessions[0].path == "/ws"                    # the token never reaches the bot
        await relay.stop()
        bot.close()
    arun(main())


# -- what a hostile or early-leaving caller cannot do ---------------------------------------------

async def _raw_held(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client upgraded on a provider endpoint (the gate's own 101 read)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_head(path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert status_of(head) == 101
    return reader, writer


async def _close_from(reader: asyncio.StreamReader) -> tuple[int, str]:
    """The relay's close frame (unmasked, payload under 126 bytes)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), 5)
    assert first & 0x0F == 0x8, f"expected a close frame, got opcode {first & 0x0F:#x}"
    payload = await reader.readexactly(second & 0x7F)
    return int.from_bytes(payload[:2], "big"), payload[2:].decode()


async def _held_refusal(pump, frames: list[bytes]) -> tuple[tuple[int, str], dict, list]:
    """A raw caller on /ws/twilio sends ``frames``: the relay's close (code, reason), then its
    refusal counts and the requests its bot got, read once the relay has logged the refusal."""
    bot = await Bot(echo=True).start()
    relay = await _relay([bot.url], pump)
    try:
        reader, writer = await _raw_held(relay.port, "/ws/twilio")
        writer.write(b"".join(frames))
        close = await _close_from(reader)
        writer.close()
        await asyncio.sleep(0.05)
        return close, dict(relay.rejections), list(bot.requests)
    finally:
        await relay.stop()
        bot.close()


@pytest.mark.parametrize("code", [1004, 2999, 4000, 4999])
def test_a_caller_closing_before_its_start_gets_1000_not_its_own_code_back(pump, code, caplog):
    """1004 and 2999 may never be on the wire; any code would be a metric label the caller chose."""
    with caplog.at_level(logging.INFO, logger="wsrelay"):
        (answer, _), rejections, bot_requests = arun(_held_refusal(pump, [
            masked_frame(0x1, _twilio()[0].encode()), masked_frame(0x8, code.to_bytes(2, "big") + b"bye")]))
    assert answer == 1000
    assert rejections == {1000: 1}
    lines = _refused_lines(caplog)
    assert len(lines) == 1 and lines[0]["code"] == 1000 and str(code) in lines[0]["reason"], lines
    assert bot_requests == []


@pytest.mark.parametrize("rsv", [0x40, 0x20, 0x10])
def test_reserved_bits_on_a_first_message_are_1008_before_any_bot(pump, rsv):
    frame = bytearray(masked_frame(0x1, _twilio()[0].encode()))
    frame[0] |= rsv
    (code, reason), rejections, bot_requests = arun(_held_refusal(pump, [bytes(frame)]))
    assert code == 1008 and "reserved bits" in reason, (code, reason)
    assert bot_requests == [] and rejections[1008] == 1


def test_a_relay_shutting_down_closes_a_caller_still_waiting_for_its_start_with_1012(pump, caplog):
    """No session exists yet (no start message): the gate still sends 1012, and logs it once."""
    caplog.set_level(logging.INFO, logger="wsrelay")

    async def main():
        bot = await Bot(echo=True).start()
        relay = await _relay([bot.url], pump, close_timeout=0.5)
        async with connect(f"ws://127.0.0.1:{relay.port}/ws/exotel?serviceHost={AGENT}") as ws:
            await ws.send(json.dumps({"event": "connected"}))
            await asyncio.wait_for(_until(lambda: relay.holds), 5)
            await _closed_by_stop(ws, relay)
        assert [line["code"] for line in _refused_lines(caplog)] == [1012]
        assert bot.requests == [] and not relay.holds
        assert relay.capacity.try_acquire(AGENT, 1)        # the caller held no slot after the stop
        bot.close()
    arun(main())


@pytest.mark.parametrize("host", ["[x", "relay.test:99999", "[::1"])
def test_a_host_header_that_is_no_url_still_gets_an_answer_on_a_provider_path(pump, host):
    """The signed-URL spellings are built from Host: one that does not parse must not kill the admission."""
    async def main():
        bot = await Bot(echo=True).start()
        relay = await _relay([bot.url], pump, provider_start_timeout=0.5)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(upgrade_head("/ws/twilio", host=host))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert status_of(head) == 101
            assert (await _close_from(reader))[0] == 1008            # no start within 0.5 s
            writer.close()
        finally:
            await relay.stop()
            bot.close()
    arun(main())


@pytest.mark.parametrize("endpoint", ["generic", "generic with a sub-protocol", "telnyx"])
def test_every_endpoint_answers_with_the_relays_one_101(pump, endpoint):
    """One ``101`` (core.frames.switching_protocols): written by the gate while a provider's
    first messages are held, by picows (edge/handover.py) on the generic endpoint; the same
    bytes, header for header, with the bot's sub-protocol when it chose one."""
    from wsrelay.core.frames import accept_value, switching_protocols

    async def main():
        bot = await Bot(echo=True, subprotocol_choice=lambda offer: offer.split(",")[0].strip() if offer else None).start()
        relay = await _relay([bot.url], pump)
        offer = "Sec-WebSocket-Protocol: chosen, other\r\n" if "sub-protocol" in endpoint else ""
        path = _path("telnyx") if endpoint == "telnyx" else f"/ws/generic/{AGENT}"
        head = upgrade_head(path, extra=offer)
        key = re.search(rb"Sec-WebSocket-Key: (\S+)", head).group(1).decode()
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(head)
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        expected = switching_protocols(accept_value(key), "chosen" if offer else None)
        assert answer == expected, answer
        assert b"Connection: Upgrade\r\n" in answer and answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        writer.close()
        await relay.stop()
        bot.close()
    arun(main())
