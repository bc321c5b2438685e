"""What the session resume tests share: a TCP proxy that cuts connections, a bot that streams
numbered messages, and a relay whose agent has resume on (docs/resume.md)."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import replace

from picows import WSMsgType

from support import Bot, relay_config, start_relay

RESET = "reset"          # both sockets closed with RST (SO_LINGER 0): the relay reads ECONNRESET
SILENT = "silent"        # nothing passes any more, the relay's socket stays open (a dead network)


class CuttingProxy:
    """127.0.0.1 TCP proxy to ``port``. ``cut(RESET)`` resets every connection it carries;
    ``cut(SILENT)`` makes them black holes towards the relay (bytes read and dropped, its
    socket left open: the relay learns only from its keepalive) and resets the client's side,
    as a client whose network died notices on its own. New connections pass as before."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.server: asyncio.Server | None = None
        self.pairs: list[dict] = []
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> "CuttingProxy":
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        relay_r, relay_w = await asyncio.open_connection("127.0.0.1", self.target)
        pair = {"client": client_w, "relay": relay_w, "silent": False}
        self.pairs.append(pair)
        for reader, writer in ((client_r, relay_w), (relay_r, client_w)):
            task = asyncio.get_running_loop().create_task(self._pipe(reader, writer, pair))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: dict) -> None:
        try:
            while data := await reader.read(65536):
                if not pair["silent"]:
                    writer.write(data)
        except (ConnectionError, OSError):
            pass
        finally:
            if not pair["silent"]:
                writer.close()

    def cut(self, how: str) -> None:
        for pair in self.pairs:
            if how == SILENT:
                pair["silent"] = True
                _reset(pair["client"])
            else:
                _reset(pair["client"])
                _reset(pair["relay"])
        self.pairs = [p for p in self.pairs if how == SILENT and p["silent"]]

    def close(self) -> None:
        for pair in self.pairs:
            _reset(pair["client"])
            _reset(pair["relay"])
        for task in list(self.tasks):
            task.cancel()
        if self.server is not None:
            self.server.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.fileno() >= 0:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class StreamingBot(Bot):
    """A bot that sends numbered text messages ("000001", ...) at ``rate`` a second from its
    first connection on, until ``stop()``."""

    def __init__(self, rate: float = 50.0) -> None:
        super().__init__(on_connect=self._stream)
        self.rate = rate
        self.sent = 0
        self.task: asyncio.Task | None = None

    def _stream(self, transport) -> None:
        self.task = asyncio.get_running_loop().create_task(self._send(transport))

    async def _send(self, transport) -> None:
        while not transport.is_disconnected and not transport.is_close_frame_sent:
            self.sent += 1
            transport.send(WSMsgType.TEXT, b"%06d" % self.sent)
            await asyncio.sleep(1 / self.rate)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def resume_relay(bot: Bot, pump: str, *, resume_seconds: float = 5.0, buffer: int = 1 << 20, **relay):
    """A relay for agent echo.demo with resume on."""
    config = relay_config({"echo.demo": [bot.url]}, **relay)
    config = replace(config, agents=tuple(replace(a, resume_seconds=resume_seconds, resume_buffer_bytes=buffer)
                                          for a in config.agents))
    return await start_relay(config, pump)


def numbers(messages: list[bytes]) -> list[int]:
    return [int(m) for m in messages]
