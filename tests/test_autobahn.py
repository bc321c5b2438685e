"""Autobahn TestSuite cases (run by kosoku) against a strict bot, directly and through the relay.

The bot is the `websockets` library's echo server: it keeps the RFC to the letter. A relay
that is transparent gives each case the same verdict as the bot alone. Sections 9 (speed,
minutes of traffic) and 12-13 (compression, never negotiated by the relay) are left out.
"""

from __future__ import annotations

import asyncio

import pytest
import websockets
from kosoku import FailureError, run_fuzzingclient
from websockets.asyncio.server import serve

from support import arun, relay_config, start_relay

CASES = ["*"]
EXCLUDED = ["9.*", "12.*", "13.*"]


async def _echo(ws) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    except websockets.ConnectionClosed:
        pass


async def _verdicts(url: str) -> dict[str, tuple[str, str]]:
    try:
        results = await run_fuzzingclient(url, cases=CASES, exclude_cases=EXCLUDED, concurrency=4)
    except FailureError as exc:          # raised when any case did not pass; results are kept
        results = exc.results
    return {r.case_id: (r.behavior.value, r.behavior_close.value) for r in results}


def test_every_case_keeps_its_verdict_through_the_relay(pump):
    async def main():
        async with serve(_echo, "127.0.0.1", 0, max_size=None, compression=None) as server:
            bot_url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
            direct = await _verdicts(bot_url)
            relay = await start_relay(relay_config({"echo.demo": [bot_url]}), pump)
            relayed = await _verdicts(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
            await relay.stop()
        assert len(direct) > 200 and set(relayed) == set(direct)
        # Two closes in one write: the client must get the bot's 1000, not a 1002.
        assert relayed["7.1.2"] == direct["7.1.2"] == ("OK", "OK")
        changed = {case: (direct[case], relayed[case]) for case in direct if relayed[case] != direct[case]}
        # The one allowed difference: sections 3 and 4, and case 5.15 (a fragmented message, then
        # a continuation with nothing to continue, in one write), send a valid message with a
        # bad frame right behind it. Whether the echo of the valid message still arrives before
        # the 1002 is a race (in the bot alone too: under load the direct run flips as well);
        # Autobahn rates a missing echo NON-STRICT rather than OK. Anything FAILED, or any
        # other close behaviour, is not tolerated.
        racy = {("OK", "OK"), ("NON-STRICT", "OK")}
        tolerated = {case for case, (was, now) in changed.items()
                     if (case.split(".")[0] in ("3", "4") or case == "5.15") and was in racy and now in racy}
        assert set(changed) == tolerated, changed
    arun(main(), timeout=240)


@pytest.mark.parametrize("case", ["7.1.2", "7.1.1", "5.19"])
def test_known_close_cases_directly_against_the_relay(pump, case):
    """Fast single-case runs, so a regression names its case."""
    async def main():
        async with serve(_echo, "127.0.0.1", 0, max_size=None, compression=None) as server:
            bot_url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
            relay = await start_relay(relay_config({"echo.demo": [bot_url]}), pump)
            try:
                results = await run_fuzzingclient(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo",
                                                  cases=[case])
            except FailureError as exc:
                results = exc.results
            await relay.stop()
        assert [(r.case_id, r.behavior.value) for r in results] == [(case, "OK")]
    arun(main())
