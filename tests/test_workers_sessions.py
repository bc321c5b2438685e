"""``--workers N``: /sessions lists, and DELETE ends, the sessions of every worker, not worker 0's alone."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal

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
                assert page["total"] == 12 and len(page["sessions"]) <= 5 and page["incomplete"] == 0
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


def test_a_worker_that_does_not_answer_is_counted_as_incomplete(tmp_path):
    """Worker 1 stopped (SIGSTOP): /sessions still answers after the 2 s wait, with worker 0's
    sessions and ``"incomplete": 1``; once it runs again, every session and ``"incomplete": 0``."""
    async def main():
        bot = await Bot(echo=True).start()
        relay, _, admin, _ = await two_workers_with_clients(bot, tmp_path, f'admin_token = "{TOKEN}"')
        worker_1 = None
        try:
            started = re.search(r"started 2 workers: \[(\d+), (\d+)\]", relay.log())
            assert started, relay.log()
            worker_1 = int(started.group(2))
            os.kill(worker_1, signal.SIGSTOP)
            status, _, body = await admin_request(admin, "GET", "/sessions", BEARER)
            page = json.loads(body)
            # SO_REUSEPORT spread the 12 over both workers (all on one: a chance of 1 in 2048)
            assert status == 200 and page["incomplete"] == 1 and page["total"] < 12, page
            assert len(page["sessions"]) == page["total"]
            status, _, body = await admin_request(admin, "GET", "/sessions/not-a-session", BEARER)
            assert status == 404 and json.loads(body)["incomplete"] == 1, body
            os.kill(worker_1, signal.SIGCONT)
            status, _, body = await admin_request(admin, "GET", "/sessions", BEARER)
            page = json.loads(body)
            assert status == 200 and page["incomplete"] == 0 and page["total"] == 12, page
        finally:
            if worker_1 is not None:
                os.kill(worker_1, signal.SIGCONT)
            assert relay.stop() == 0, relay.log()
            bot.close()
    arun(main(), timeout=60)
