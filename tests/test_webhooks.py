"""Signed webhooks for session events, delivered to a real HTTP receiver on 127.0.0.1.

The receiver is aiohttp's server; it checks every request with the ``standardwebhooks``
package, the reference a receiver would use. The outbox is a real SQLite file; the
schedule is the real one's shape, scaled down so that hours take seconds.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

import msgspec
import pytest
from aiohttp import web
from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry
from standardwebhooks import Webhook

from wsrelay.errors import ConfigError
from wsrelay.webhooks import SessionEnd, SessionStart, Schedule, WebhookSettings, Webhooks
from wsrelay.webhooks.events import new_event

from support import arun, free_port

SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
FAST = Schedule(first=(0.2, 0.4, 0.8), cap=1.0, horizon=30.0)

START = SessionStart(session_id="s-1", agent="echo", organization="demo", endpoint="/ws", region="eu")
SUMMARY = {
    "event": "session_end", "session_id": "s-2", "agent": "echo", "organization": "demo",
    "frames_up": 10, "bytes_up": 3500, "frames_down": 7, "bytes_down": 4480,
    "close_from_client": 1000, "close_from_bot": None, "close_to_client": None, "close_to_bot": 1000,
    "first_closer": "client", "end_reason": "closed", "upstream_connect_ms": 1.2,
    "first_frame_ms_up": 20.5, "jitter_ms_up": 1.25, "max_gap_ms_up": 40.0, "gaps_up": 1,
    "first_frame_ms_down": None, "jitter_ms_down": 0.0, "max_gap_ms_down": 0.0, "gaps_down": 0,
    "duration_s": 12.345,
}
END = SessionEnd.from_summary(SUMMARY, endpoint="/ws/twilio", outcome="closed", region=None)


class Receiver:
    """A webhook receiver on 127.0.0.1: answers with ``answer(n)`` for its n-th request
    (a status, or None: never answer), verifying each with standardwebhooks first."""

    def __init__(self, answer=lambda n: 200, port: int | None = None) -> None:
        self.answer = answer
        self.port = port or free_port()
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self.verified: list[dict] = []
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()}
        self.requests.append((time.monotonic(), headers, body))
        self.verified.append(Webhook(SECRET).verify(body, headers))      # raises on a bad signature
        self.arrived.set()
        status = self.answer(len(self.requests))
        if status is None:
            await asyncio.sleep(3600)
        return web.Response(status=status, text="ok")

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hooks", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            assert time.monotonic() < deadline, f"{len(self.requests)} of {count} requests in {timeout} s"
            await asyncio.sleep(0.02)


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def settings_for(url: str, tmp_path, **overrides) -> WebhookSettings:
    return WebhookSettings(url=url, secret=SECRET, spool=str(tmp_path / "spool.sqlite3"), **overrides)


# -- settings (the [webhooks] table's checks: tests/test_webhooks_relay.py) -------------------------------------------------------------------------------


def test_settings_defaults():
    s = WebhookSettings(url="https://hooks.example.com/in", secret=SECRET, events=["session.ended"])  # type: ignore[arg-type]
    assert s.events == frozenset({"session.ended"}) and s.timeout == 10.0 and s.redis_url is None
    assert WebhookSettings(url="http://h/", secret=SECRET).events == {"session.started", "session.ended"}
    assert SECRET[6:] not in repr(s)                 # the key never reaches a log line


# -- bodies and the schedule ------------------------------------------------------------------


def test_event_bodies():
    started = msgspec.json.decode(new_event("session.started", START, 1_796_662_800.5).body)
    assert started == {"type": "session.started", "timestamp": "2026-12-07T17:00:00.500Z",
                       "data": {"sessionId": "s-1", "agent": "echo", "organization": "demo", "endpoint": "/ws",
                                "region": "eu"}}
    ended = msgspec.json.decode(new_event("session.ended", END, 1_796_662_800.0).body)
    assert ended["type"] == "session.ended"
    assert ended["data"] == {
        "sessionId": "s-2", "agent": "echo", "organization": "demo", "endpoint": "/ws/twilio", "region": None,
        "outcome": "closed",
        "closeCodes": {"fromClient": 1000, "fromBot": None, "toClient": None, "toBot": 1000},
        "firstCloser": "client", "durationSeconds": 12.345,
        "up": {"frames": 10, "bytes": 3500, "firstFrameMs": 20.5, "jitterMs": 1.25, "maxGapMs": 40.0, "gaps": 1},
        "down": {"frames": 7, "bytes": 4480, "firstFrameMs": None, "jitterMs": 0.0, "maxGapMs": 0.0, "gaps": 0},
    }
    a, b = new_event("session.ended", END, 0.0), new_event("session.ended", END, 0.0)
    assert a.id != b.id and a.id.startswith("msg_")
    # A session of an agent with resume on also says how often its client came back, and how long
    # it was away; other sessions' events have neither key (above).
    resumed = SessionEnd.from_summary({**SUMMARY, "resumes": 2, "detached_s": 1.75}, endpoint="generic",
                                      outcome="closed")
    data = msgspec.json.decode(new_event("session.ended", resumed, 0.0).body)["data"]
    assert (data["resumes"], data["detachedSeconds"]) == (2, 1.75)


def test_schedule_first_soon_then_doubling_to_half_an_hour_for_a_day():
    s = Schedule()
    assert [s.delay(n) for n in range(1, 11)] == [1, 5, 30, 60, 120, 240, 480, 960, 1800, 1800]
    assert s.delay(10_000) == 1800
    assert s.next_try(0.0, 1, 10.0) == 11.0
    assert s.next_try(0.0, 50, 86400 - 1800) == 86400
    assert s.next_try(0.0, 50, 86400 - 1799) is None
    with pytest.raises(ValueError):
        Schedule(first=(5.0, 1.0))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.001, max_value=10.0), min_size=1, max_size=4),
       st.floats(min_value=0.0, max_value=5.0))
def test_schedule_is_monotone_capped_and_within_the_horizon(first, answer_time):
    """For any shape, the real schedule included: delays never decrease and never exceed the
    cap, and the last attempt falls within the horizon of the event's creation."""
    for s in (Schedule(), Schedule(first=tuple(sorted(first)), cap=10.0, horizon=300.0)):
        delays = [s.delay(n) for n in range(1, 200)]
        assert all(a <= b for a, b in zip(delays, delays[1:]))
        assert max(delays) <= s.cap and delays[-1] == s.cap
        now, attempts, last = 0.0, 0, 0.0
        while True:                        # each attempt takes answer_time, then the schedule
            now += answer_time
            attempts += 1
            due = s.next_try(0.0, attempts, now)
            if due is None:
                break
            now = last = due
        assert last <= s.horizon
        assert now + s.delay(attempts) > s.horizon      # given up only when the next would be late


# -- delivery -----------------------------------------------------------------------------------


def test_events_are_signed_and_delivered_with_metrics(tmp_path):
    async def main():
        receiver = await Receiver().start()
        registry = CollectorRegistry()
        hooks = Webhooks.open(settings_for(receiver.url, tmp_path), registry)
        await hooks.start()
        try:
            t0 = time.monotonic()
            hooks.session_started(START)
            hooks.session_ended(END)
            await receiver.wait_for(2)
            assert receiver.requests[-1][0] - t0 < 1.0          # queued events go at once
            await until(lambda: hooks.delivered == 2)
        finally:
            await hooks.close()
            await receiver.stop()
        types = [v["type"] for v in receiver.verified]
        assert sorted(types) == ["session.ended", "session.started"]
        for _, headers, _ in receiver.requests:
            assert headers["webhook-signature"].startswith("v1,")
            assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
            assert headers["Content-Type"] == "application/json"
        assert len({h["webhook-id"] for _, h, _ in receiver.requests}) == 2
        assert registry.get_sample_value("wsrelay_webhooks_delivered_total") == 2
        assert registry.get_sample_value("wsrelay_webhooks_retried_total") == 0
        assert registry.get_sample_value("wsrelay_webhooks_dropped_total", {"reason": "max_pending"}) == 0
        assert registry.get_sample_value("wsrelay_webhooks_pending") == 0
    arun(main())


def test_only_the_configured_events_are_sent(tmp_path):
    async def main():
        receiver = await Receiver().start()
        hooks = Webhooks.open(settings_for(receiver.url, tmp_path, events=frozenset({"session.ended"})))
        await hooks.start()
        try:
            hooks.session_started(START)
            hooks.session_ended(END)
            await until(lambda: hooks.delivered == 1)
            await asyncio.sleep(0.3)
        finally:
            await hooks.close()
            await receiver.stop()
        assert [v["type"] for v in receiver.verified] == ["session.ended"]
    arun(main())


def test_a_failure_is_retried_with_the_same_id_and_a_fresh_signature(tmp_path):
    async def main():
        receiver = await Receiver(answer=lambda n: 500 if n == 1 else 204).start()
        registry = CollectorRegistry()
        hooks = Webhooks.open(settings_for(receiver.url, tmp_path), registry, schedule=FAST)
        await hooks.start()
        try:
            hooks.session_ended(END)
            await until(lambda: hooks.delivered == 1)
        finally:
            await hooks.close()
            await receiver.stop()
        (t1, h1, b1), (t2, h2, b2) = receiver.requests
        assert h1["webhook-id"] == h2["webhook-id"] and b1 == b2
        assert t2 - t1 >= 0.2                                    # the schedule's first delay
        assert hooks.retried == 1 and hooks.dropped == 0
        assert registry.get_sample_value("wsrelay_webhooks_retried_total") == 1
    arun(main())


def test_no_answer_within_the_timeout_is_a_failure(tmp_path):
    async def main():
        receiver = await Receiver(answer=lambda n: None if n == 1 else 200).start()
        hooks = Webhooks.open(settings_for(receiver.url, tmp_path, timeout=0.5), schedule=FAST)
        await hooks.start()
        try:
            hooks.session_started(START)
            await until(lambda: hooks.delivered == 1)
        finally:
            await hooks.close()
            await receiver.stop()
        (t1, h1, _), (t2, h2, _) = receiver.requests
        assert h1["webhook-id"] == h2["webhook-id"]
        assert t2 - t1 >= 0.5 + 0.2                              # the timeout, then the first delay
        assert hooks.retried == 1
    arun(main())


def test_a_receiver_down_then_started_gets_the_event(tmp_path):
    async def main():
        receiver = Receiver()                                    # its port, nothing listening yet
        hooks = Webhooks.open(settings_for(receiver.url, tmp_path), schedule=FAST)
        await hooks.start()
        try:
            hooks.session_ended(END)
            await until(lambda: hooks.retried >= 2)
            assert hooks.pending == 1 and hooks.delivered == 0
            await receiver.start()
            await until(lambda: hooks.delivered == 1)
        finally:
            await hooks.close()
            await receiver.stop()
        assert len(receiver.requests) == 1 and receiver.verified[0]["data"]["sessionId"] == "s-2"
    arun(main())


def test_an_event_past_its_horizon_is_dropped_counted_and_logged(tmp_path, caplog):
    async def main():
        receiver = await Receiver(answer=lambda n: 503).start()
        registry = CollectorRegistry()
        short = Schedule(first=(0.1,), cap=0.2, horizon=0.5)
        hooks = Webhooks.open(settings_for(receiver.url, tmp_path), registry, schedule=short)
        await hooks.start()
        try:
            hooks.session_ended(END)
            await until(lambda: hooks.dropped == 1)
        finally:
            await hooks.close()
            await receiver.stop()
        assert hooks.delivered == 0 and hooks.pending == 0
        assert registry.get_sample_value("wsrelay_webhooks_dropped_total", {"reason": "expired"}) == 1
        return len(receiver.requests), receiver.requests[0][1]["webhook-id"]
    with caplog.at_level(logging.WARNING, logger="wsrelay.webhooks"):
        attempts, webhook_id = arun(main())
    drops = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "webhook_dropped"]
    assert drops == [{"event": "webhook_dropped", "reason": "expired", "webhook_id": webhook_id,
                      "type": "session.ended", "session_id": "s-2", "attempts": attempts,
                      "age_s": drops[0]["age_s"]}]
    assert attempts >= 2


def test_the_outbox_survives_a_restart_and_due_events_go_within_two_seconds(tmp_path):
    async def main():
        down = Receiver()
        first = Webhooks.open(settings_for(down.url, tmp_path))
        first.session_started(START)                # queued, never delivered: the relay stops
        first.session_ended(END)
        await first.close()
        receiver = await Receiver(port=down.port).start()
        second = Webhooks.open(settings_for(receiver.url, tmp_path))
        assert await second.outbox.pending() == 2
        t0 = time.monotonic()
        await second.start()
        try:
            await receiver.wait_for(2, timeout=2.0)
            assert receiver.requests[-1][0] - t0 < 2.0
            await until(lambda: second.delivered == 2)
        finally:
            await second.close()
            await receiver.stop()
        assert sorted(v["type"] for v in receiver.verified) == ["session.ended", "session.started"]
    arun(main())


def test_a_retry_that_came_due_while_stopped_goes_at_restart(tmp_path):
    async def main():
        receiver = await Receiver(answer=lambda n: 500 if n == 1 else 200).start()
        first = Webhooks.open(settings_for(receiver.url, tmp_path), schedule=FAST)
        await first.start()
        first.session_ended(END)
        await until(lambda: first.retried == 1)
        await first.close()
        await asyncio.sleep(0.3)                                 # its retry is due meanwhile
        second = Webhooks.open(settings_for(receiver.url, tmp_path), schedule=FAST)
        t0 = time.monotonic()
        await second.start()
        try:
            await receiver.wait_for(2, timeout=2.0)
            assert receiver.requests[1][0] - t0 < 2.0
        finally:
            await second.close()
            await receiver.stop()
        assert receiver.requests[0][1]["webhook-id"] == receiver.requests[1][1]["webhook-id"]
    arun(main())


def test_max_pending_drops_the_oldest_counted(tmp_path, caplog):
    async def main():
        down = Receiver()
        registry = CollectorRegistry()
        hooks = Webhooks.open(settings_for(down.url, tmp_path, max_pending=3), registry)
        for n in range(5):
            hooks.session_started(SessionStart(session_id=f"s-{n}", agent="a", organization="o", endpoint="/ws"))
        assert hooks.dropped == 2 and hooks.pending == 3
        assert registry.get_sample_value("wsrelay_webhooks_dropped_total", {"reason": "max_pending"}) == 2
        await hooks.close()
        # The bound holds in the outbox too: three more, while three wait there.
        again = Webhooks.open(settings_for(down.url, tmp_path, max_pending=3))
        for n in range(5, 8):
            again.session_started(SessionStart(session_id=f"s-{n}", agent="a", organization="o", endpoint="/ws"))
        await again.close()
        assert again.dropped == 3
        again.session_ended(END)                                 # after close(): counted, not kept
        assert again.dropped_by_reason["outbox_unavailable"] == 1
        receiver = await Receiver(port=down.port).start()
        last = Webhooks.open(settings_for(receiver.url, tmp_path, max_pending=3))
        await last.start()
        try:
            await until(lambda: last.delivered == 3)
        finally:
            await last.close()
            await receiver.stop()
        return sorted(v["data"]["sessionId"] for v in receiver.verified)
    with caplog.at_level(logging.WARNING, logger="wsrelay.webhooks"):
        delivered = arun(main())
    assert delivered == ["s-5", "s-6", "s-7"]
    dropped = [r.fields["session_id"] for r in caplog.records
               if getattr(r, "fields", {}).get("reason") == "max_pending"]
    assert [r.fields["session_id"] for r in caplog.records
            if getattr(r, "fields", {}).get("reason") == "outbox_unavailable"] == ["s-2"]
    assert dropped == ["s-0", "s-1", "s-2", "s-3", "s-4"]


def test_a_spool_that_cannot_be_opened_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as raised:
        Webhooks.open(WebhookSettings(url="http://h/", secret=SECRET, spool=str(tmp_path / "no" / "such.db")))
    assert raised.value.key == "webhooks.spool" and "cannot be opened" in raised.value.message


def test_enqueueing_never_waits_on_the_receiver(tmp_path):
    async def main():
        receiver = await Receiver(answer=lambda n: None).start()         # never answers
        hooks = Webhooks.open(settings_for(receiver.url, tmp_path, timeout=5.0))
        await hooks.start()
        try:
            hooks.session_started(START)
            await receiver.wait_for(1)
            t0 = time.perf_counter()
            for _ in range(200):
                hooks.session_ended(END)
            per_call = (time.perf_counter() - t0) / 200
        finally:
            await hooks.close()
            await receiver.stop()
        assert per_call < 0.001
    arun(main())
