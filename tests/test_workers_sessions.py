"""``--workers N``: /sessions lists, and DELETE ends, the sessions of every worker, not worker 0's alone."""

from __future__ import annotations

import asyncio
import json

from support import Bot, admin_request, arun
from test_admin_sessions import BEARER, TOKEN
from test_workers_metrics import two_workers_with_clients


def test_sessions_of_two_workers_are_one_list_and_each_can_be_ended(tmp_path):
    async def main():
        bot = await Bot(echo=True).start()
        relay, _, admin, clients = await two_workers_with_clients(bot, tmp_path, f'admin_token = "{TOKEN}"')
        try:
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
