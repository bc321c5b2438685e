"""Sides whose reading is paused by backpressure, and frames around protocol errors.

A paused side is still watched: its EOF or reset is noticed, a destination alive and
reading nothing ends the session after ``close_timeout`` and one that takes nothing after
``stall_timeout``, with a reason; every close, forwarded or the relay's own, even behind a
full write buffer, ends its side within ``close_timeout`` (docs/operations.md: A stalled or vanished peer).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import os
import socket
import struct

from picows import WSMsgType

from support import Bot, arun, connect_client, masked_frame, relay_config, start_relay, upgrade_head

B = WSMsgType.BINARY
CHUNK = b"x" * 65536


async def _raw_client(port: int, path: str = "/ws/generic/echo.demo"):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_head(path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def _wait(predicate, timeout: float) -> float:
    """Wait until ``predicate()``; returns the seconds it took (fails past ``timeout``)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.02)
    return loop.time() - start


def _flood(writer) -> None:
    for _ in range(256):                              # 16 MiB: far over every buffer on the way
        writer.write(masked_frame(B, CHUNK))


def _reset(transport) -> None:
    """Vanish as a killed process with unread data or a broken network does: with a RST.

    (A FIN queued behind unsent data cannot reach a peer that is not reading; that case
    is what the stall deadline is for, tested below.)
    """
    sock = transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def test_client_leaving_while_paused_is_noticed(pump):
    """The bot stopped reading, so the client is paused; the client leaves: session ends."""
    async def main():
        bot = await Bot(on_connect=lambda t: t.underlying_transport.pause_reading()).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, write_buffer_high=16384,
                                               write_buffer_low=4096, close_timeout=1), pump)
        reader, writer = await _raw_client(relay.port)
        bot_rec = await bot.session()
        _flood(writer)
        await asyncio.sleep(1.0)                       # the relay is now paused on the client
        assert len(relay.sessions) == 1
        _reset(writer.transport)                       # the client vanishes
        took = await _wait(lambda: not relay.sessions, 6)
        assert took < 4                                # a watch period + close_timeout, not 2 h
        bot_rec.transport.underlying_transport.resume_reading()
        await asyncio.wait_for(bot_rec.disconnected.wait(), 5)   # the bot's socket was released
        bot.close()
    arun(main())


def test_bot_dying_while_paused_is_noticed(pump):
    """The client stopped reading, so the bot is paused; the bot dies: session ends."""
    async def main():
        def flood(transport):
            for _ in range(256):
                transport.send(B, CHUNK)
        bot = await Bot(on_connect=flood).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, write_buffer_high=16384,
                                               write_buffer_low=4096, close_timeout=1), pump)
        reader, writer = await _raw_client(relay.port)   # and never reads again
        bot_rec = await bot.session()
        await asyncio.sleep(1.0)
        assert len(relay.sessions) == 1
        _reset(bot_rec.transport.underlying_transport)   # the bot vanishes
        took = await _wait(lambda: not relay.sessions, 6)
        assert took < 4
        writer.close()
        bot.close()
    arun(main())


def test_a_stalled_bot_is_dropped_after_stall_timeout(pump):
    """The bot reads nothing for stall_timeout (here shorter than close_timeout, so this bound
    comes first): the client (still reading) gets 1011."""
    async def main():
        bot = await Bot(on_connect=lambda t: t.underlying_transport.pause_reading()).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, write_buffer_high=16384,
                                               write_buffer_low=4096, close_timeout=3,
                                               stall_timeout=1.0), pump)
        client, client_rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
        await bot.session()
        for _ in range(256):
            client.send(B, CHUNK)
        await asyncio.wait_for(client_rec.disconnected.wait(), 8)
        closes = client_rec.close_frames()
        assert closes, "the client was told why"
        assert struct.unpack("!H", closes[0].payload[:2])[0] == 1011
        assert closes[0].payload.endswith(b"bot stalled: it read nothing for 1s")
        await _wait(lambda: not relay.sessions, 5)
        bot.close()
    arun(main())


async def _push(writer, seconds: float) -> int:
    """Send binary frames for ``seconds`` as fast as the relay takes them: bytes sent."""
    loop = asyncio.get_running_loop()
    frame, sent, start = masked_frame(B, b"a" * 6400), 0, loop.time()
    while loop.time() - start < seconds:
        writer.write(frame)
        sent += len(frame)
        try:
            await asyncio.wait_for(writer.drain(), 0.05)
        except asyncio.TimeoutError:
            pass
    return sent


async def _answer(reader, timeout: float) -> bytes:
    """What the relay sends before the connection ends: b"" when it ends with nothing."""
    try:
        return await asyncio.wait_for(reader.read(256), timeout)
    except ConnectionResetError:
        return b""


async def _bot_dropped(bot_rec) -> None:
    """The relay dropped the connection of a bot that paused its reading: seen once it reads."""
    bot_rec.transport.underlying_transport.resume_reading()
    await asyncio.wait_for(bot_rec.disconnected.wait(), 5)


def _session_ends(caplog) -> list[dict]:
    return [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "session_end"]


def test_a_close_behind_data_a_bot_never_reads_is_answered_within_close_timeout(pump, caplog):
    """The bot accepts and never reads; the client pushes for 2 s, then closes. The close is
    queued behind what the relay cannot forward, out of its sight: the bot, alive and reading
    nothing, is dropped after close_timeout, and the client is told why within that bound."""
    caplog.set_level(logging.INFO, logger="wsrelay.session")

    async def main():
        bot = await Bot(on_connect=lambda t: t.underlying_transport.pause_reading()).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, close_timeout=2), pump)
        reader, writer = await _raw_client(relay.port)
        bot_rec = await bot.session()
        assert await _push(writer, 2.0) > 4 * 1024 * 1024       # far past every buffer on the way
        writer.write(masked_frame(WSMsgType.CLOSE, struct.pack("!H", 1000)))
        loop = asyncio.get_running_loop()
        closed_at = loop.time()
        answer = await _answer(reader, 6)
        took = loop.time() - closed_at
        assert took < 2 + 1 + 0.5, f"the close waited {took:.2f}s"  # close_timeout + one watch period
        assert answer[:1] == b"\x88" and answer[2:4] == struct.pack("!H", 1011), answer
        assert b"bot stalled: it read nothing for 2s" in answer
        await _wait(lambda: not relay.sessions, 3)              # the bot's side too, within close_timeout
        await _bot_dropped(bot_rec)
        writer.close()
        bot.close()
    arun(main())
    [end] = _session_ends(caplog)
    assert end["end_reason"] == "stalled (bot)" and end["close_to_client"] == 1011, end


def test_a_close_behind_data_a_client_never_reads_ends_within_close_timeout(pump, caplog):
    """The mirror case: the bot streams to a client that never reads, then closes."""
    caplog.set_level(logging.INFO, logger="wsrelay.session")

    async def main():
        def stream(transport):
            for _ in range(256):                                 # 16 MiB, buffered by the bot
                transport.send(B, CHUNK)
        bot = await Bot(on_connect=stream).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, close_timeout=2), pump)
        reader, writer = await _raw_client(relay.port)          # and never reads
        bot_rec = await bot.session()
        await asyncio.sleep(2.0)
        bot_rec.transport.send_close(1000)
        loop = asyncio.get_running_loop()
        closed_at = loop.time()
        await asyncio.wait_for(bot_rec.disconnected.wait(), 6)
        took = loop.time() - closed_at
        assert took < 2 + 1 + 0.5, f"the close waited {took:.2f}s"
        closes = bot_rec.close_frames()
        assert closes and closes[0].payload.startswith(struct.pack("!H", 1001) + b"client stalled"), closes
        await _wait(lambda: not relay.sessions, 3)              # the client dropped within close_timeout
        writer.close()
        bot.close()
    arun(main())
    [end] = _session_ends(caplog)
    assert end["end_reason"] == "stalled (client)" and end["close_to_bot"] == 1001, end


def test_a_forwarded_close_stuck_behind_a_full_write_buffer_is_bounded(pump, caplog):
    """The relay read the client's data and its close (its write buffer to the bot is allowed
    to grow past all of it), so the close waits in that buffer for a bot that never reads:
    the close timer drops both sides after close_timeout."""
    caplog.set_level(logging.INFO, logger="wsrelay.session")

    async def main():
        bot = await Bot(on_connect=lambda t: t.underlying_transport.pause_reading()).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, close_timeout=1,
                                               write_buffer_high=1 << 30), pump)
        reader, writer = await _raw_client(relay.port)
        bot_rec = await bot.session()
        _flood(writer)
        writer.write(masked_frame(WSMsgType.CLOSE, struct.pack("!H", 1000)))
        await writer.drain()                                    # the relay has read it all
        loop = asyncio.get_running_loop()
        closed_at = loop.time()
        assert await _answer(reader, 5) == b""                 # no reply ever came: dropped
        took = loop.time() - closed_at
        assert took < 1 + 0.5, f"the close waited {took:.2f}s"
        await _wait(lambda: not relay.sessions, 2)
        await _bot_dropped(bot_rec)
        writer.close()
        bot.close()
    arun(main())
    [end] = _session_ends(caplog)
    assert end["end_reason"] == "close timeout" and end["close_from_client"] == 1000, end


def test_the_relays_own_close_to_a_bot_reading_nothing_is_bounded(pump, caplog):
    """The session's time limit closes both sides while 16 MiB wait for a bot that never reads:
    the client answers at once, the bot's close waits behind the data, and close_timeout ends it."""
    caplog.set_level(logging.INFO, logger="wsrelay.session")

    async def main():
        bot = await Bot(on_connect=lambda t: t.underlying_transport.pause_reading()).start()
        config = relay_config({"echo.demo": [bot.url]}, close_timeout=1, write_buffer_high=1 << 30)
        config = dataclasses.replace(config, agents=tuple(dataclasses.replace(a, max_session_seconds=1.0)
                                                          for a in config.agents))
        relay = await start_relay(config, pump)
        client, client_rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
        bot_rec = await bot.session()
        for _ in range(256):
            client.send(B, CHUNK)
        await asyncio.wait_for(client_rec.disconnected.wait(), 4)
        assert client_rec.close_frames()[0].payload.startswith(struct.pack("!H", 1008))
        took = await _wait(lambda: not relay.sessions, 3)
        assert took < 1 + 0.5, f"the bot's close waited {took:.2f}s more"
        await _bot_dropped(bot_rec)
        bot.close()
    arun(main())
    [end] = _session_ends(caplog)
    assert end["end_reason"] == "time limit" and end["close_to_bot"] == 1008, end


def test_valid_frame_before_an_invalid_one_in_the_same_read_is_relayed(pump):
    """picows parses one frame ahead; the frame before a bad one must still reach the bot."""
    async def main():
        bot = await Bot().start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        reader, writer = await _raw_client(relay.port)
        bot_rec = await bot.session()
        bad = bytes([0x83, 0x80]) + os.urandom(4)      # reserved opcode 0x3: a protocol error
        writer.write(masked_frame(WSMsgType.TEXT, b"first") + masked_frame(WSMsgType.TEXT, b"second") + bad)
        await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
        assert [f.payload for f in bot_rec.data_frames()] == [b"first", b"second"]
        codes = [struct.unpack("!H", f.payload[:2])[0] for f in bot_rec.close_frames()]
        assert codes == [1002]                         # then the bot is told why
        reply = await asyncio.wait_for(reader.read(), 5)
        assert reply[:2] == bytes([0x88, len(reply) - 2]) and struct.unpack("!H", reply[2:4])[0] == 1002
        writer.close()
        bot.close()
    arun(main())


def test_protocol_error_from_the_bot_leaves_no_unretrieved_future(pump):
    """A bot breaking the protocol is one session_end, not a 'never retrieved' traceback."""
    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        loop.set_exception_handler(lambda _loop, context: seen.append(context.get("message")))

        def send_masked(transport):
            # A server must not mask its frames: the relay's bot side fails it with 1002.
            transport.underlying_transport.write(masked_frame(WSMsgType.TEXT, b"masked by a server"))
        bot = await Bot(on_connect=send_masked).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        client, client_rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
        await asyncio.wait_for(client_rec.disconnected.wait(), 5)
        codes = [struct.unpack("!H", f.payload[:2])[0] for f in client_rec.close_frames()]
        assert codes == [1002]
        await _wait(lambda: not relay.sessions, 5)
        import gc
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0.05)
        assert seen == []
        bot.close()
    arun(main())


def test_accept_header_is_computed_from_the_clients_key(pump):
    """The canonical head handed to picows carries the client's own key."""
    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        key = base64.b64encode(os.urandom(16))
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        writer.write(b"GET /ws/generic/echo.demo HTTP/1.1\nHost: r\nUpgrade: websocket\n"
                     b"Connection: keep-alive, Upgrade\nSec-WebSocket-Version: 13\n"
                     b"Sec-WebSocket-Key: " + key + b"\n\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        assert head.startswith(b"HTTP/1.1 101")
        assert b"Sec-WebSocket-Accept: " + accept + b"\r\n" in head
        writer.close()
        bot.close()
    arun(main())
