"""Frames cross the relay exactly as sent, both ways, in both pump implementations."""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from picows import WSMsgType

from support import Bot, Frame, arun, connect_client, relay_config, relayed_session, send_frame, start_relay

T, B, C = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
PING, PONG, CLOSE = WSMsgType.PING, WSMsgType.PONG, WSMsgType.CLOSE

CASES = {
    "text": [Frame(T, "héllo wörld".encode())],
    "binary": [Frame(B, os.urandom(640))],
    "empty": [Frame(T, b""), Frame(B, b"")],
    "one_mib": [Frame(B, os.urandom(1 << 20))],
    "64k_boundary": [Frame(B, os.urandom(65535)), Frame(B, os.urandom(65536)), Frame(B, os.urandom(126)),
                     Frame(B, os.urandom(125))],
    "fragmented_with_ping": [Frame(T, b"frag-1 ", fin=False), Frame(PING, b"between"),
                             Frame(C, b"frag-2 ", fin=False), Frame(PONG, b"unsolicited"),
                             Frame(C, b"frag-3", fin=True)],
    "rsv_bits": [Frame(B, b"r1", rsv1=True), Frame(T, b"r2", rsv2=True), Frame(B, b"r3", rsv3=True),
                 Frame(B, b"all", rsv1=True, rsv2=True, rsv3=True)],
    "control_payloads": [Frame(PING, b""), Frame(PING, os.urandom(125)), Frame(PONG, b"pong")],
    "invalid_utf8_text": [Frame(T, b"\xff\xfe\xfd")],
    "burst_of_500": [Frame(B, struct.pack("!I", i) * 40) for i in range(500)],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("direction", ["client_to_bot", "bot_to_client"])
def test_frames_arrive_exactly_as_sent(pump, case, direction):
    frames = CASES[case]

    async def main():
        bot, relay, client, client_rec, bot_rec = await relayed_session(pump)
        sender, receiver = (client, bot_rec) if direction == "client_to_bot" else (bot_rec.transport, client_rec)
        for f in frames:
            send_frame(sender, f)
        await receiver.wait_frames(len(frames))
        assert receiver.frames == frames
        client.send_close(1000, b"done")
        await client_rec.disconnected.wait()
        bot.close()
    arun(main())


@pytest.mark.parametrize("initiator", ["client", "bot"])
@pytest.mark.parametrize("payload", [struct.pack("!H", 1000) + b"bye", struct.pack("!H", 4321) + "ünïcode".encode(),
                                     b"", struct.pack("!H", 1001)], ids=["1000", "4321", "empty", "1001"])
def test_close_is_forwarded_and_reply_comes_back(pump, initiator, payload):
    async def main():
        bot, relay, client, client_rec, bot_rec = await relayed_session(pump)
        first, first_rec, second_rec = ((client, client_rec, bot_rec) if initiator == "client"
                                        else (bot_rec.transport, bot_rec, client_rec))
        first.send(CLOSE, payload)
        await second_rec.wait_frames(1)
        assert second_rec.close_frames() == [Frame(CLOSE, payload)]      # forwarded as sent
        await first_rec.wait_frames(1)
        assert first_rec.close_frames() == [Frame(CLOSE, payload)]       # the reply, forwarded back
        await asyncio.wait_for(client_rec.disconnected.wait(), 5)
        await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
        await asyncio.sleep(0.05)
        assert not relay.sessions
        bot.close()
    arun(main())


def test_client_vanishing_closes_bot_with_1001(pump):
    async def main():
        bot, relay, client, client_rec, bot_rec = await relayed_session(pump)
        client.send(B, b"last words")
        await bot_rec.wait_frames(1)
        client.disconnect(False)                       # abort: no close frame
        await bot_rec.wait_frames(2)
        close = bot_rec.close_frames()
        assert close and struct.unpack("!H", close[0].payload[:2])[0] == 1001
        await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
        bot.close()
    arun(main())


def test_bot_vanishing_closes_client_with_1011(pump):
    async def main():
        bot, relay, client, client_rec, bot_rec = await relayed_session(pump)
        bot_rec.transport.send(B, b"last words")
        await client_rec.wait_frames(1)
        bot_rec.transport.disconnect(False)
        await client_rec.wait_frames(2)
        close = client_rec.close_frames()
        assert close and struct.unpack("!H", close[0].payload[:2])[0] == 1011
        await asyncio.wait_for(client_rec.disconnected.wait(), 5)
        bot.close()
    arun(main())


def test_unanswered_close_ends_after_close_timeout(pump):
    async def main():
        bot = await Bot(reply_close=False).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, close_timeout=0.5), pump)
        client, client_rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
        bot_rec = await bot.session()
        loop = asyncio.get_running_loop()
        started = loop.time()
        client.send_close(1000, b"bye")
        await asyncio.wait_for(client_rec.disconnected.wait(), 5)
        elapsed = loop.time() - started
        assert 0.4 <= elapsed < 3, elapsed
        assert bot_rec.close_frames()[0].payload == struct.pack("!H", 1000) + b"bye"
        assert client_rec.close_frames() == []        # the bot never answered
        bot.close()
    arun(main())


def test_bot_frame_in_same_read_as_its_101_reaches_client(pump):
    async def main():
        # The bot sends right inside on_ws_connected: its first frame leaves with the 101.
        bot = await Bot(on_connect=lambda t: t.send(T, b"welcome")).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        client, client_rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
        await client_rec.wait_frames(1)
        assert client_rec.frames == [Frame(T, b"welcome")]
        bot.close()
    arun(main())


def test_client_frames_sent_before_its_101_reach_bot(pump):
    """A client that pipelines frames right behind its request head loses none of them."""
    from support import upgrade_head

    async def main():
        bot = await Bot().start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        mask = b"\x01\x02\x03\x04"
        payload = b"early bird"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frame = bytes([0x82, 0x80 | len(payload)]) + mask + masked
        writer.write(upgrade_head("/ws/generic/echo.demo") + frame)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101")
        rec = await bot.session()
        await rec.wait_frames(1)
        assert rec.frames == [Frame(B, payload)]
        writer.close()
        bot.close()
    arun(main())


def test_frame_over_max_frame_size_gets_1009(pump):
    async def main():
        bot = await Bot().start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, max_frame_size=1024), pump)
        client, client_rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
        bot_rec = await bot.session()
        client.send(B, b"x" * 1024)                     # at the limit: relayed
        await bot_rec.wait_frames(1)
        client.send(B, b"x" * 1025)                     # over: the client is closed with 1009
        await asyncio.wait_for(client_rec.disconnected.wait(), 5)
        codes = [struct.unpack("!H", f.payload[:2])[0] for f in client_rec.close_frames()]
        assert codes and codes[0] == 1009
        assert [len(f.payload) for f in bot_rec.data_frames()] == [1024]
        await bot_rec.wait_for(lambda: bot_rec.close_frames(), 5)
        bot_codes = [struct.unpack("!H", f.payload[:2])[0] for f in bot_rec.close_frames()]
        assert bot_codes[0] in (1009, 1001)          # told why, or that the client is gone
        bot.close()
    arun(main())
