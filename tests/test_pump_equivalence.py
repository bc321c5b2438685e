"""The compiled pump and its pure-Python twin are two sources (see wsrelay/pump/__init__.py
for why); this keeps them equal: the same scripted sessions through each, and everything
the peers receive and the session's log line must match field for field."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest
from picows import WSMsgType

from support import Bot, Frame, arun, connect_client, masked_frame, relay_config, send_frame, start_relay, upgrade_head

T, B, C, PING, PONG = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.PING, WSMsgType.PONG
COMPARED = ("frames_up", "bytes_up", "frames_down", "bytes_down", "dropped", "close_from_client",
            "close_from_bot", "close_to_client", "close_to_bot", "first_closer", "end_reason")


class SessionLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict] = []

    def emit(self, record) -> None:
        fields = getattr(record, "fields", None)
        if fields and fields.get("event") == "session_end":
            self.lines.append(fields)


async def _frames_both_ways(port: int, bot: Bot) -> None:
    client, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
    bot_rec = await bot.session()
    script = [Frame(T, b"hello"), Frame(B, bytes(range(256))), Frame(T, b""), Frame(T, b"frag", fin=False),
              Frame(PING, b"p"), Frame(C, b"ment"), Frame(B, b"r", rsv1=True), Frame(PONG, b"q"),
              Frame(B, b"x" * 4000)]
    for f in script:
        send_frame(client, f)
    for f in script[::-1]:
        send_frame(bot_rec.transport, f)
    await bot_rec.wait_for(lambda: len(bot_rec.frames) >= len(script))
    await rec.wait_for(lambda: len(rec.frames) >= len(script))
    client.send_close(4000, b"done")
    await asyncio.wait_for(rec.disconnected.wait(), 5)


async def _bot_breaks_the_protocol(port: int, bot: Bot) -> None:
    client, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
    bot_rec = await bot.session()
    bot_rec.transport.send(T, b"fine")
    bot_rec.transport.underlying_transport.write(masked_frame(T, b"a server must not mask"))
    await asyncio.wait_for(rec.disconnected.wait(), 5)


async def _client_vanishes(port: int, bot: Bot) -> None:
    client, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
    bot_rec = await bot.session()
    client.send(T, b"last words")
    await bot_rec.wait_for(lambda: bot_rec.frames)
    client.disconnect(False)
    await asyncio.wait_for(bot_rec.disconnected.wait(), 5)


async def _two_closes_in_one_write(port: int, bot: Bot) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade_head("/ws/generic/echo.demo"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.write(masked_frame(T, b"hi") + masked_frame(0x8, struct.pack("!H", 1000)) + masked_frame(0x8, b""))
    await asyncio.wait_for(reader.read(), 5)
    writer.close()


async def _oversized_frame(port: int, bot: Bot) -> None:
    client, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
    await bot.session()
    client.send(B, b"y" * 1000)
    client.send(B, b"z" * 5000)
    await asyncio.wait_for(rec.disconnected.wait(), 5)


SCENARIOS = {
    "frames both ways": _frames_both_ways,
    "bot breaks the protocol": _bot_breaks_the_protocol,
    "client vanishes": _client_vanishes,
    "two closes in one write": _two_closes_in_one_write,
    "oversized frame": _oversized_frame,
}


def _run(pump: str, scenario) -> tuple:
    async def main():
        handler = SessionLines()
        logger = logging.getLogger("wsrelay.session")
        logger.addHandler(handler)
        previous = logger.level
        logger.setLevel(logging.INFO)
        try:
            bot = await Bot(reply_close=True).start()
            relay = await start_relay(relay_config({"echo.demo": [bot.url]}, max_frame_size=4096), pump)
            await scenario(relay.port, bot)
            deadline = asyncio.get_running_loop().time() + 5
            while (relay.sessions or not handler.lines) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            await relay.stop()
            bot.close()
        finally:
            logger.removeHandler(handler)
            logger.setLevel(previous)
        bot_seen = [(f.msg_type, f.payload, f.fin, f.rsv1) for s in bot.sessions for f in s.frames]
        assert len(handler.lines) == 1, handler.lines
        return bot_seen, {k: handler.lines[0][k] for k in COMPARED}
    return arun(main())


@pytest.mark.parametrize("name", SCENARIOS)
def test_both_pumps_relay_and_log_the_same(name):
    compiled = _run("cython", SCENARIOS[name])
    pure = _run("python", SCENARIOS[name])
    assert compiled == pure
