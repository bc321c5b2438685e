"""Many sessions at once, and slow readers: nothing lost, nothing reordered, memory bounded."""

from __future__ import annotations

import asyncio
import gc
import struct

import pytest
from picows import WSListener, WSMsgType, ws_connect

from wsrelay import pump as pump_selector
from wsrelay.core.session_machine import SessionMachine
from wsrelay.edge.session import Session

from support import (Bot, RelayProcess, arun, connect_client, free_port, relay_config, start_relay)


def test_200_concurrent_sessions_lose_and_reorder_nothing(pump):
    sessions, messages = 200, 30

    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        url = f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo"
        clients = await asyncio.gather(*(connect_client(url) for _ in range(sessions)))
        for n, (transport, _) in enumerate(clients):
            for i in range(messages):
                transport.send(WSMsgType.BINARY, struct.pack("!II", n, i) + b"a" * 300)
        for n, (transport, rec) in enumerate(clients):
            await rec.wait_frames(messages, timeout=30)
            got = [struct.unpack("!II", f.payload[:8]) for f in rec.frames]
            assert got == [(n, i) for i in range(messages)]
        assert len(relay.sessions) == sessions
        for transport, _ in clients:
            transport.send_close(1000)
        await asyncio.gather(*(rec.disconnected.wait() for _, rec in clients))
        await asyncio.sleep(0.1)
        assert not relay.sessions
        assert relay.pump.totals()["frames_up"] >= sessions * messages
        bot.close()
    arun(main(), timeout=90)


@pytest.mark.parametrize("end", ["closed", "client lost", "bot lost"])
def test_an_ended_session_is_freed_at_once_not_by_the_cyclic_collector(pump, end):
    """A session's objects (the session, its machine, its two pump sides) are released by
    reference counting when it ends. Left in reference cycles they survived into the oldest
    GC generation and waited for a full collection: benchmarks/soak.py saw the relay's RSS
    climb 12 MiB in 2 minutes of 20 session ends a second, until one came."""
    side_class = pump_selector.load(pump).Side

    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        gc.collect()
        gc.disable()
        try:
            client, rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
            client.send(WSMsgType.BINARY, b"x" * 640)
            await rec.wait_frames(1)
            if end == "closed":
                client.send_close(1000)
                await rec.disconnected.wait()
            elif end == "client lost":
                client.disconnect(False)
            else:
                (await bot.session()).transport.disconnect(False)
                await rec.disconnected.wait()
            while relay.sessions:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            kept = [type(o).__name__ for o in gc.garbage if isinstance(o, (Session, SessionMachine, side_class))]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
        assert kept == []
        await relay.stop()
        bot.close()
    arun(main())


FRAME = 64 * 1024
TOTAL = 200 * 1024 * 1024


def _payload(i: int) -> bytes:
    return struct.pack("!Q", i) * (FRAME // 8)


class Pusher(WSListener):
    """Sends TOTAL bytes in numbered frames as fast as its own socket allows."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.transport = None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    async def push(self) -> None:
        for i in range(TOTAL // FRAME):
            await self.writable.wait()
            self.transport.send(WSMsgType.BINARY, _payload(i))


class SlowReader(WSListener):
    """Checks every frame in order; reads in short bursts with pauses in between."""

    def __init__(self) -> None:
        self.next = 0
        self.bytes = 0
        self.done = asyncio.Event()
        self.error: str | None = None
        self.transport = None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type != WSMsgType.BINARY:
            return
        payload = frame.get_payload_as_bytes()
        if payload != _payload(self.next) and self.error is None:
            self.error = f"frame {self.next} corrupted or out of order"
        self.next += 1
        self.bytes += len(payload)
        if self.bytes >= TOTAL:
            self.done.set()

    async def throttle(self) -> None:
        underlying = self.transport.underlying_transport
        while not self.done.is_set():
            underlying.pause_reading()
            await asyncio.sleep(0.004)
            underlying.resume_reading()
            await asyncio.sleep(0.001)


@pytest.mark.slow
@pytest.mark.parametrize("slow_side", ["client", "bot"])
def test_slow_reader_costs_bounded_memory_and_loses_nothing(pump, slow_side, tmp_path):
    """The other side pushes 200 MiB; the relay's RSS stays under a ceiling; all arrives in order."""
    ceiling = 48 * 1024 * 1024

    async def main():
        relay_port, bot_port = free_port(), free_port()
        bot_listener = SlowReader() if slow_side == "bot" else Pusher()
        bot_connected = asyncio.Event()

        def factory(request):
            bot_connected.set()
            return bot_listener
        from picows import ws_create_server
        bot_server = await ws_create_server(factory, "127.0.0.1", bot_port, enable_auto_pong=False,
                                            use_aiofastnet=False)
        relay = RelayProcess(f"""
[relay]
host = "127.0.0.1"
port = {relay_port}
admin_port = 0
drain_seconds = 1
[[agents]]
name = "bulk"
organization = "test"
upstreams = ["ws://127.0.0.1:{bot_port}/"]
""", tmp_path, pump=pump)
        try:
            await relay.wait_port(relay_port)
            baseline = relay.rss()
            client_listener = SlowReader() if slow_side == "client" else Pusher()
            await ws_connect(lambda: client_listener, f"ws://127.0.0.1:{relay_port}/ws/generic/bulk.test",
                             enable_auto_pong=False, use_aiofastnet=False)
            await asyncio.wait_for(bot_connected.wait(), 5)
            reader, pusher = ((client_listener, bot_listener) if slow_side == "client"
                              else (bot_listener, client_listener))
            peak = baseline

            async def sample():
                nonlocal peak
                while not reader.done.is_set():
                    peak = max(peak, relay.rss())
                    await asyncio.sleep(0.05)
            await asyncio.gather(pusher.push(), reader.throttle(), sample(),
                                 asyncio.wait_for(reader.done.wait(), 120))
            assert reader.error is None, reader.error
            assert reader.bytes == TOTAL
            assert peak - baseline < ceiling, f"relay RSS grew by {(peak - baseline) >> 20} MiB"
            print(f"\nslow {slow_side} [{pump}]: relay RSS baseline {baseline >> 20} MiB, "
                  f"peak growth {(peak - baseline) / 2**20:.1f} MiB")
        finally:
            assert relay.stop() == 0, relay.log()
            bot_server.close()
    arun(main(), timeout=180)
