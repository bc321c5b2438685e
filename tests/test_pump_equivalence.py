"""The compiled pump and its pure-Python twin are two sources (see wsrelay/pump/__init__.py
for why); this keeps them equal: the same scripted sessions through each, and everything
the peers receive and the session's log line must match field for field."""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import replace

import pytest
from picows import WSMsgType

from support import Bot, Frame, arun, connect_client, masked_frame, relay_config, send_frame, start_relay, upgrade_head

T, B, C, PING, PONG = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION, WSMsgType.PING, WSMsgType.PONG
COMPARED = ("frames_up", "bytes_up", "frames_down", "bytes_down", "dropped", "close_from_client",
            "close_from_bot", "close_to_client", "close_to_bot", "first_closer", "end_reason")
RESUME_FIELDS = ("resumes",)


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


async def _client_resumes(port: int, bot: Bot) -> list:
    """Session resume (docs/resume.md): the bot's frames before and while the client is away,
    fragments and a ping among them, and the replay from the second message."""
    client, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
    token = client.response.headers["X-Wsrelay-Resume"]
    bot_rec = await bot.session()
    before = [Frame(T, b"a"), Frame(T, b"frag", fin=False), Frame(C, b"ment"), Frame(PING, b"p"), Frame(B, b"\0" * 9)]
    for f in before:
        send_frame(bot_rec.transport, f)
    await rec.wait_for(lambda: len(rec.frames) >= len(before))
    client.disconnect(False)                     # gone without a close frame: the session detaches
    await asyncio.wait_for(rec.disconnected.wait(), 5)
    await asyncio.sleep(0.1)
    for f in (Frame(T, b"b"), Frame(B, b"c" * 3000), Frame(T, b"x", fin=False), Frame(C, b"y")):
        send_frame(bot_rec.transport, f)
    await asyncio.sleep(0.1)
    again, rec2 = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo?resume={token}&received=1")
    await rec2.wait_for(lambda: len(rec2.frames) >= 7)
    again.send_close(1000, b"")
    await asyncio.wait_for(bot_rec.disconnected.wait(), 5)
    return [(f.msg_type, f.payload, f.fin) for f in rec2.frames]


RESUMING = {"client resumes": _client_resumes}     # run with resume_seconds on


SCENARIOS = {
    "frames both ways": _frames_both_ways,
    "bot breaks the protocol": _bot_breaks_the_protocol,
    "client vanishes": _client_vanishes,
    "two closes in one write": _two_closes_in_one_write,
    "oversized frame": _oversized_frame,
    **RESUMING,
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
            config = relay_config({"echo.demo": [bot.url]}, max_frame_size=4096)
            if scenario in RESUMING.values():
                config = replace(config, agents=tuple(replace(a, resume_seconds=5.0) for a in config.agents))
            relay = await start_relay(config, pump)
            client_seen = await scenario(relay.port, bot)
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
        return bot_seen, client_seen, {k: handler.lines[0][k] for k in COMPARED + RESUME_FIELDS
                                       if k in handler.lines[0]}
    return arun(main())


@pytest.mark.parametrize("name", SCENARIOS)
def test_both_pumps_relay_and_log_the_same(name):
    compiled = _run("cython", SCENARIOS[name])
    pure = _run("python", SCENARIOS[name])
    assert compiled == pure
    if name in RESUMING:                        # and the replay is what the client missed
        _, client_seen, line = compiled
        assert [p for t, p, _ in client_seen if t != 8] == [b"frag", b"ment", b"\0" * 9, b"b", b"c" * 3000, b"x", b"y"]
        assert line["resumes"] == 1 and line["dropped"] == 0 and line["end_reason"] == "closed"
