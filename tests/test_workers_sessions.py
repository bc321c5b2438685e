"""``--workers N``: /sessions lists, and DELETE ends, the sessions of every worker, not worker 0's alone."""

from __future__ import annotations

import asyncio
import json

from picows import WSMsgType

from support import Bot, RelayProcess, arun, connect_client, free_port
from test_admin_sessions import BEARER, TOKEN, admin_request


def test_sessions_of_two_workers_are_one_list_and_each_can_be_ended(tmp_path):
    async def main():
        bot = await Bot(echo=True).start()
        port, admin = free_port(), free_port()
        relay = RelayProcess(f"""[relay]
host = "127.0.0.1"
port = {port}
admin_port = {admin}
admin_token = "{TOKEN}"
workers = 2
drain_seconds = 0.5

[[agents]]
name = "echo"
organization = "demo"
upstreams = ["{bot.url}"]
""", tmp_path)
        try:
            await relay.wait_port(port)
            await relay.wait_port(admin)
            await asyncio.sleep(0.5)                     # both workers listening
            clients = []
            for _ in range(12):
                transport, rec = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
                transport.send(WSMsgType.TEXT, b"x")
                await rec.wait_frames(1)
                clients.append((transport, rec))
            # SO_REUSEPORT spreads the 12 over both workers (all on one: a chance of 1 in 2048)
            seen: list[str] = []
            cursor = None
            for _ in range(10):
                status, _, body = await admin_request(admin, "GET", "/sessions?limit=5" +
                                                      (f"&cursor={cursor}" if cursor else ""), BEARER)
                assert status == 200, body
                page = json.loads(body)
                assert page["total"] == 12 and len(page["sessions"]) <= 5
                seen += [s["id"] for s in page["sessions"]]
                cursor = page["next"]
                if cursor is None:
                    break
            assert len(seen) == 12 == len(set(seen))
            assert "_order" not in page["sessions"][0]          # the merge key stays inside
            status, _, body = await admin_request(admin, "GET", f"/sessions/{seen[-1]}", BEARER)
            assert status == 200 and json.loads(body)["up"]["frames"] == 1
            for session_id in seen:                      # wherever each one lives
                status, _, body = await admin_request(admin, "DELETE", f"/sessions/{session_id}", BEARER)
                assert status == 200, body
            for _, rec in clients:
                await asyncio.wait_for(rec.disconnected.wait(), 10)
                assert rec.close_frames()[0].payload[:2] == (1008).to_bytes(2, "big")
            await asyncio.sleep(0.3)
            status, _, body = await admin_request(admin, "GET", "/sessions", BEARER)
            assert status == 200 and json.loads(body)["total"] == 0
            ended = [line for line in relay.log().splitlines() if '"end_reason":"ended by operator"' in line]
            assert len(ended) == 12
        finally:
            assert relay.stop() == 0, relay.log()
            bot.close()
    arun(main(), timeout=60)
