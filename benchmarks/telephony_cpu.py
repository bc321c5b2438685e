"""Relay CPU per relayed media frame: a provider endpoint after routing vs the generic endpoint.

The provider endpoints read the first messages in Python before a bot is chosen; after
that, frames must cost what they cost on the generic endpoint (the same Cython pump).
This runs a real ``wsrelay serve`` and the benchmark's echo bot, connects ``--conns``
simulated Twilio calls either to ``/ws/twilio`` (``connected`` + ``start`` first) or to
``/ws/generic/echo.bench``, streams Twilio ``media`` messages (JSON text, ~370 bytes) at
50/s per call, and reads the relay's CPU from /proc over the measured window, divided by
the frames it relayed (each message up and its echo down). Rounds alternate between the
two endpoints; medians are printed as one JSON object.

    python benchmarks/telephony_cpu.py [--conns 200] [--seconds 4] [--rounds 2] [--pure-python]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import uvloop
from picows import WSListener, WSMsgType, ws_connect

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from e2e import free_port, wait_port  # noqa: E402
from loadgen import tree_cpu  # noqa: E402

STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
FIRST = [json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).encode(),
         json.dumps({"event": "start", "sequenceNumber": "1", "streamSid": STREAM_SID, "start": {
             "accountSid": "AC25e16e9a716a4a1786a7c83f58e30482", "streamSid": STREAM_SID,
             "callSid": "CA5f0c3b0e8b5b4d6e9a0d2c1b7e3f4a11", "tracks": ["inbound"],
             "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
             "customParameters": {"_pipecatCloudServiceHost": "echo.bench"}}}).encode()]


def media(n: int) -> bytes:
    payload = base64.b64encode(bytes((n + i) % 256 for i in range(160))).decode()
    return json.dumps({"event": "media", "sequenceNumber": str(n + 2), "streamSid": STREAM_SID,
                       "media": {"track": "inbound", "chunk": str(n + 1), "timestamp": str(n * 20),
                                 "payload": payload}}).encode()


class Caller(WSListener):
    received = 0

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            Caller.received += 1


async def measure(url: str, twilio: bool, pid: int, conns: int, seconds: float, warmup: float = 1.0) -> dict:
    transports = []
    for _ in range(conns):
        transport, _ = await ws_connect(Caller, url, use_aiofastnet=False, enable_auto_pong=True)
        if twilio:
            for message in FIRST:
                transport.send(WSMsgType.TEXT, message)
        transports.append(transport)
    frames = [media(n) for n in range(50)]
    loop = asyncio.get_running_loop()
    slots = 20                                    # spread the calls over each 20 ms
    groups = [transports[i::slots] for i in range(slots)]
    start = loop.time()
    measure_from, end = start + warmup, start + warmup + seconds
    cpu0 = received0 = t0 = None
    tick = 0
    while True:
        now = loop.time()
        if cpu0 is None and now >= measure_from:
            cpu0, received0, t0 = tree_cpu(pid), Caller.received, time.perf_counter()
        if now >= end:
            break
        message = frames[(tick // slots) % len(frames)]
        for t in groups[tick % slots]:
            t.send(WSMsgType.TEXT, message)
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * 0.02 / slots - loop.time()))
    cpu1, received1, t1 = tree_cpu(pid), Caller.received, time.perf_counter()
    for t in transports:
        t.send_close()
        t.disconnect()
    echoed = received1 - received0
    return {"relay_cpu_us_per_frame": (cpu1 - cpu0) * 1e6 / (2 * echoed) if echoed else None,
            "relay_cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0), "messages_per_s": echoed / (t1 - t0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conns", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pure-python", action="store_true")
    args = parser.parse_args()
    bot_port, relay_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as workdir:
        config = os.path.join(workdir, "relay.toml")
        with open(config, "w") as f:
            f.write(f'[relay]\nhost = "127.0.0.1"\nport = {relay_port}\nadmin_port = 0\n\n'
                    f'[[agents]]\nname = "echo"\norganization = "bench"\n'
                    f'upstreams = ["ws://127.0.0.1:{bot_port}/"]\n')
        env = dict(os.environ)
        env.pop("WSRELAY_PURE_PYTHON", None)
        if args.pure_python:
            env["WSRELAY_PURE_PYTHON"] = "1"
        bot = subprocess.Popen([sys.executable, os.path.join(HERE, "echo_bot.py"), str(bot_port)])
        relay = subprocess.Popen([sys.executable, "-m", "wsrelay", "serve", "--config", config,
                                  "--log-format", "json"], env=env, stderr=subprocess.DEVNULL)
        try:
            wait_port(bot_port, bot)
            wait_port(relay_port, relay)
            results: dict[str, list[dict]] = {"generic": [], "twilio": []}
            for _ in range(args.rounds):
                for name in ("generic", "twilio"):
                    path = "/ws/twilio" if name == "twilio" else "/ws/generic/echo.bench"
                    results[name].append(uvloop.run(measure(f"ws://127.0.0.1:{relay_port}{path}", name == "twilio",
                                                            relay.pid, args.conns, args.seconds)))
                    time.sleep(0.5)
        finally:
            relay.terminate()
            bot.terminate()
            relay.wait(10)
            bot.wait(10)
    report = {name: {key: round(statistics.median(r[key] for r in rounds), 3) for key in rounds[0]}
              for name, rounds in results.items()}
    report["ratio_twilio_to_generic"] = round(report["twilio"]["relay_cpu_us_per_frame"]
                                              / report["generic"]["relay_cpu_us_per_frame"], 3)
    report["rounds"] = results
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
