"""Micro-benchmarks (pytest-benchmark): the per-handshake and per-frame paths in isolation.

    pytest benchmarks/test_micro.py                          # full calibration
    pytest benchmarks/test_micro.py --benchmark-min-rounds=3 --benchmark-max-time=0.2   # CI
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
import uvloop
from picows import WSListener, WSMsgType, ws_connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from wsrelay.config import AgentConfig, Config, RelayConfig          # noqa: E402
from wsrelay.echo_bot import start_echo_bot                          # noqa: E402
from wsrelay.core.upgrade import parse_upgrade                          # noqa: E402
from wsrelay.core.routing import route_websocket                          # noqa: E402
from wsrelay.edge.relay import Relay                                     # noqa: E402
from wsrelay.core.tokens import mint_token, verify_token                  # noqa: E402

KEYS = {"k1": "benchmark-secret"}


def test_route_websocket(benchmark):
    target = "/ws/generic/my-agent.my-org?body=eyJjYWxsZXIiOiIrMTU1NTAxMDAifQ%3D%3D&lang=en"
    route = benchmark(route_websocket, target)
    assert route.service_host == "my-agent.my-org"


def test_parse_upgrade(benchmark):
    headers = [(b"host", b"relay.example.com"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
               (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"sec-websocket-version", b"13"),
               (b"sec-websocket-protocol", b"audio.v1")]
    upgrade = benchmark(parse_upgrade, b"GET", headers)
    assert upgrade.subprotocols == "audio.v1"


def test_token_verify(benchmark):
    now = time.time()
    token = mint_token("my-agent.my-org", keys=KEYS, active_key="k1", ttl=300, now=now)
    claims = benchmark(verify_token, token, service_host="my-agent.my-org", keys=KEYS, now=now, leeway=30)
    assert claims.kid == "k1"


class _PingPong(WSListener):
    def __init__(self) -> None:
        self.remaining = 0
        self.done: asyncio.Future | None = None
        self.payload = b"\x00" * 640

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        self.remaining -= 1
        if self.remaining > 0:
            transport.send(WSMsgType.BINARY, self.payload)
        elif self.done is not None and not self.done.done():
            self.done.set_result(None)


@pytest.mark.parametrize("pump", ["cython", "python"])
def test_pump_round_trips_in_process(benchmark, pump):
    """1000 round trips of 640 B through relay and echo bot, all on one uvloop."""
    loop = uvloop.new_event_loop()

    async def setup():
        bot = await start_echo_bot()
        cfg = Config(relay=RelayConfig(host="127.0.0.1", port=0, admin_port=0),
                     agents=(AgentConfig("bench", "perf", (f"ws://127.0.0.1:{bot.sockets[0].getsockname()[1]}/",)),))
        relay = Relay(cfg, pump=pump)
        await relay.start()
        _, client = await ws_connect(_PingPong, f"ws://127.0.0.1:{relay.port}/ws/generic/bench.perf",
                                     use_aiofastnet=False)
        return bot, relay, client

    bot, relay, client = loop.run_until_complete(setup())

    async def round_trips(n: int = 1000) -> None:
        client.remaining = n
        client.done = loop.create_future()
        client.transport.send(WSMsgType.BINARY, client.payload)
        await client.done

    benchmark.pedantic(lambda: loop.run_until_complete(round_trips()), rounds=5, warmup_rounds=1)
    assert client.remaining == 0
    bot.close()
    loop.close()
