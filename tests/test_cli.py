"""The ``wsrelay`` command as a user runs it: real processes, real signals."""

from __future__ import annotations

import asyncio
import json
import signal
import struct
import subprocess
import sys
import time

import websockets
from picows import WSMsgType

from support import Bot, RelayProcess, arun, connect_client, free_port, raw_request, status_of, upgrade_head


def _wsrelay(*args, env=None, timeout=30):
    return subprocess.run([sys.executable, "-m", "wsrelay", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_serve_without_config_runs_the_echo_demo(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "wsrelay", "serve", "--port", str(port), "--host", "127.0.0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    async def main():
        for _ in range(100):
            try:
                async with websockets.connect(f"ws://localhost:{port}/ws/generic/echo.demo") as ws:
                    await ws.send("hello")
                    echoed = await ws.recv()
                break
            except OSError:
                await asyncio.sleep(0.1)
        refused = await raw_request(port, upgrade_head("/ws/generic/nobody.demo"))
        return echoed, status_of(refused)
    try:
        assert arun(main()) == ("hello", 404)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    ends = [line for line in lines if line.get("event") == "session_end"]
    assert len(ends) == 1
    end = ends[0]
    assert (end["agent"], end["organization"], end["frames_up"], end["bytes_up"]) == ("echo", "demo", 1, 5)
    assert end["close_from_client"] == 1000 and end["first_closer"] == "client"
    assert end["frames_down"] == 1 and end["bytes_down"] == 5 and end["duration_s"] >= 0
    assert len(end["session_id"]) == 36 and end["end_reason"] == "closed"
    refusals = [line for line in lines if line.get("event") == "handshake_refused"]
    assert [(r["status"], r["target"]) for r in refusals] == [(404, "/ws/generic/nobody.demo")]
    assert "unknown service host" in refusals[0]["reason"]


def test_check_names_key_and_line_and_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[relay]\nport = 8765\nprot = 1\n[[agents]]\nname = "a"\norganization = "b"\n'
                    'upstreams = ["http://x"]\n')
    result = _wsrelay("check", "--config", str(path))
    assert result.returncode == 2
    assert f"{path}:3, key 'relay.prot'" in result.stderr and "did you mean 'port'" in result.stderr
    assert f"{path}:7, key 'agents[0].upstreams[0]'" in result.stderr
    good = tmp_path / "good.toml"
    good.write_text('[[agents]]\nname = "a"\norganization = "b"\nupstreams = ["ws://x"]\n')
    result = _wsrelay("check", "--config", str(good))
    assert result.returncode == 0 and "a.b" in result.stdout


def test_check_refuses_token_agents_under_workers_without_shared_nonces(tmp_path):
    path = tmp_path / "workers.toml"
    agent = '[[agents]]\nname = "a"\norganization = "b"\nupstreams = ["ws://x"]\nwebsocket_auth = "token"\n'
    path.write_text('[relay]\nworkers = 2\n[auth]\nsecret = "s3cret"\n' + agent)
    result = _wsrelay("check", "--config", str(path))
    assert result.returncode == 2 and "relay.nonce_store" in result.stderr and "a.b" in result.stderr
    path.write_text('[relay]\nworkers = 2\nnonce_store = "redis"\nredis_url = "redis://127.0.0.1:6379/0"\n'
                    '[auth]\nsecret = "s3cret"\n' + agent)
    assert _wsrelay("check", "--config", str(path)).returncode == 0


def test_token_command_and_missing_key(tmp_path):
    path = tmp_path / "auth.toml"
    path.write_text('[[agents]]\nname = "a"\norganization = "b"\nupstreams = ["ws://x"]\nwebsocket_auth = "token"\n')
    result = _wsrelay("token", "a.b", "--config", str(path))
    assert result.returncode == 1 and "WSRELAY_AUTH_SECRET" in result.stderr
    import os
    env = dict(os.environ, WSRELAY_AUTH_SECRET="env-secret")
    result = _wsrelay("token", "a.b", "--config", str(path), "--ttl", "60", env=env)
    assert result.returncode == 0
    from wsrelay.tokens import verify_token
    claims = verify_token(result.stdout.strip(), service_host="a.b", keys={"env": "env-secret"},
                          now=time.time(), leeway=0)
    assert 55 <= claims.exp - time.time() <= 61
    # A relay with a token agent and no key refuses to start, saying why.
    result = _wsrelay("serve", "--config", str(path), timeout=15)
    assert result.returncode == 2 and "a.b" in result.stderr and "signing key" in result.stderr


def _config(port: int, upstream: str, extra_agent: str = "", relay_extra: str = "") -> str:
    return f"""
[relay]
host = "127.0.0.1"
port = {port}
admin_port = 0
drain_seconds = 1
{relay_extra}
[[agents]]
name = "echo"
organization = "demo"
upstreams = ["{upstream}"]
{extra_agent}
"""


def test_sighup_and_file_change_reload_agents_without_dropping_sessions(tmp_path):
    async def main():
        bot = await Bot(echo=True).start()
        port = free_port()
        relay = RelayProcess(_config(port, bot.url), tmp_path)
        try:
            await relay.wait_port(port)
            client, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
            added = '[[agents]]\nname = "new"\norganization = "demo"\nupstreams = ["%s"]\n' % bot.url
            relay.path.write_text(_config(port, bot.url, added))
            relay.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/generic/new.demo") as ws:
                await ws.send("new agent")
                assert await ws.recv() == "new agent"
            # An invalid file is rejected and the running config kept.
            relay.path.write_text(_config(port, bot.url, added) + "\n[relay]\nbogus = 1\n")
            relay.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert "config reload rejected" in relay.log()
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws/generic/new.demo") as ws:
                await ws.send("still")
                assert await ws.recv() == "still"
            # A change of the file alone reloads too (no signal): the agent is removed.
            relay.path.write_text(_config(port, bot.url))
            await asyncio.sleep(2.5)
            response = await raw_request(port, upgrade_head("/ws/generic/new.demo"))
            assert status_of(response) == 404
            # The session from before every reload never noticed.
            client.send(WSMsgType.TEXT, b"survived")
            await rec.wait_frames(1)
            assert rec.frames[0].payload == b"survived"
            client.send_close(1000)
            await rec.disconnected.wait()
        finally:
            assert relay.stop() == 0, relay.log()
            bot.close()
    arun(main(), timeout=60)


def test_sigterm_drains_then_closes_with_1012_and_exits_0(tmp_path):
    async def main():
        bot = await Bot(echo=True).start()
        port = free_port()
        relay = RelayProcess(_config(port, bot.url).replace("drain_seconds = 1", "drain_seconds = 1.5"), tmp_path)
        await relay.wait_port(port)
        client, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
        bot_rec = await bot.session()
        started = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        # Draining: the live session goes on, new ones are refused.
        client.send(WSMsgType.TEXT, b"during drain")
        await rec.wait_frames(1)
        assert rec.frames[0].payload == b"during drain"
        try:
            await raw_request(port, upgrade_head("/ws/generic/echo.demo"), read_timeout=2)
            refused = False
        except OSError:
            refused = True
        assert refused
        await asyncio.wait_for(rec.disconnected.wait(), 10)
        elapsed = time.monotonic() - started
        assert 1.4 <= elapsed < 8, elapsed
        code = struct.unpack("!H", rec.close_frames()[0].payload[:2])[0]
        assert code == 1012
        assert struct.unpack("!H", bot_rec.close_frames()[0].payload[:2])[0] == 1012
        await asyncio.get_running_loop().run_in_executor(None, relay.proc.wait, 10)
        assert relay.proc.returncode == 0
        relay.stop()
        bot.close()
    arun(main(), timeout=60)


def test_second_signal_stops_at_once(tmp_path):
    async def main():
        bot = await Bot(echo=True).start()
        port = free_port()
        relay = RelayProcess(_config(port, bot.url).replace("drain_seconds = 1", "drain_seconds = 60"), tmp_path)
        await relay.wait_port(port)
        client, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
        relay.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, relay.proc.wait, 10)
        assert time.monotonic() - started < 3
        assert relay.proc.returncode != 0
        relay.stop()
        bot.close()
    arun(main(), timeout=60)


def test_workers_share_the_port_and_max_sessions_stays_exact(tmp_path):
    async def main():
        bot = await Bot(echo=True).start()
        port = free_port()
        relay = RelayProcess(_config(port, bot.url, relay_extra="workers = 2",
                                     extra_agent="max_sessions = 6"), tmp_path)
        try:
            await relay.wait_port(port)
            await asyncio.sleep(0.5)                   # let both workers listen
            url = f"ws://127.0.0.1:{port}/ws/generic/echo.demo"
            clients = [await connect_client(url) for _ in range(6)]
            statuses = [status_of(await raw_request(port, upgrade_head("/ws/generic/echo.demo")))
                        for _ in range(6)]
            assert statuses == [429] * 6               # exact across both workers
            for transport, rec in clients:
                transport.send(WSMsgType.TEXT, b"ok")
                await rec.wait_frames(1)
                transport.send_close(1000)
                await rec.disconnected.wait()
            await asyncio.sleep(0.2)
            again, rec = await connect_client(url)
            again.send(WSMsgType.TEXT, b"freed")
            await rec.wait_frames(1)
            assert rec.frames[0].payload == b"freed"
            again.disconnect()
            import psutil
            assert len(psutil.Process(relay.proc.pid).children()) == 2
        finally:
            assert relay.stop() == 0, relay.log()
            bot.close()
    arun(main(), timeout=60)
