"""Webhooks from a running relay: [webhooks] in the config, real sessions, a real receiver.

The receiver (tests/test_webhooks.py's) verifies every request with the ``standardwebhooks``
package. A relay with ``[webhooks]`` sends ``session.started`` once both sides are
upgraded and ``session.ended`` with the session's log-line facts; a ``wsrelay serve``
process stopped with events pending delivers them after its restart, from its spool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
from picows import WSMsgType

from wsrelay.config import ConfigErrors, WebhooksConfig, parse_config
from wsrelay.webhooks import WebhookSettings

from support import Bot, RelayProcess, arun, connect_client, free_port, relay_config, start_relay
from test_webhooks import SECRET, Receiver


def webhooks_table(url: str, spool, **keys) -> WebhooksConfig:
    return WebhooksConfig(url=url, secret=SECRET, spool=str(spool), **keys)


# -- the [webhooks] table: declared once, checked by the config loader ------------------------


GOOD = f'url = "https://hooks.example.com/in"\nsecret = "{SECRET}"\n'


@pytest.mark.parametrize("lines, key, words", [
    ('url = "ftp://example.com/"\n' + f'secret = "{SECRET}"\n', "webhooks.url", "http:// or https://"),
    ('url = "http:///nohost"\n' + f'secret = "{SECRET}"\n', "webhooks.url", "with a host"),
    ('url = "https://h.example/"\nsecret = "abc"\n', "webhooks.secret", "must start with 'whsec_'"),
    ('url = "https://h.example/"\nsecret = "whsec_!!!"\n', "webhooks.secret", "not base64"),
    ('url = "https://h.example/"\nsecret = "whsec_c2hvcnQ="\n', "webhooks.secret", "24 to 64"),
    ('url = "https://h.example/"\n', "webhooks.secret", "is required with webhooks.url"),
    (f'secret = "{SECRET}"\n', "webhooks", "needs url"),
    (GOOD + 'events = ["session.paused"]\n', "webhooks.events", "not 'session.paused'"),
    (GOOD + "events = []\n", "webhooks.events", "one or both"),
    (GOOD + "max_pending = 0\n", "webhooks.max_pending", "from 1 to"),
    (GOOD + "timeout = 0\n", "webhooks.timeout", "above 0"),
    (GOOD + "timeout = nan\n", "webhooks.timeout", "above 0"),
    (GOOD + 'spool = ""\n', "webhooks.spool", "SQLite file"),
    (GOOD + "retries = 3\n", "webhooks.retries", "unknown key 'retries'"),
])
def test_a_bad_webhooks_table_is_one_error_naming_its_key_and_line(lines, key, words):
    text = "[relay]\nport = 8765\n\n[webhooks]\n" + lines
    with pytest.raises(ConfigErrors) as raised:
        parse_config(text, source="relay.toml")
    errors = raised.value.errors
    assert [e.key for e in errors] == [key], errors
    assert words in errors[0].message
    assert errors[0].line is not None and errors[0].line >= 4


def test_the_webhooks_table_defaults_and_what_the_sender_is_given():
    config = parse_config("[webhooks]\n" + GOOD + 'events = ["session.ended"]\n')
    table = config.webhooks
    assert table.enabled and table.events == ("session.ended",) and table.timeout == 10.0
    assert table.spool == "wsrelay-webhooks.sqlite3" and table.max_pending == 100_000
    assert SECRET[6:] not in repr(table) and SECRET[6:] not in repr(config)     # never in a log line
    settings = WebhookSettings.from_config(table, redis_url="redis://127.0.0.1:6379/0")
    assert settings.events == frozenset({"session.ended"}) and settings.redis_url == "redis://127.0.0.1:6379/0"
    assert not parse_config("").webhooks.enabled


# -- a relay sends them ------------------------------------------------------------------------


def test_a_session_through_the_relay_is_announced_and_its_end_reported(pump, tmp_path):
    async def main():
        receiver = await Receiver().start()
        bot = await Bot(echo=True).start()
        config = dataclasses.replace(relay_config({"echo.demo": [bot.url]}),
                                     webhooks=webhooks_table(receiver.url, tmp_path / "spool.sqlite3"))
        relay = await start_relay(config, pump)
        try:
            client, client_rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
            await receiver.wait_for(1)
            started = receiver.verified[0]
            assert started["type"] == "session.started"
            session_id = started["data"]["sessionId"]
            assert started["data"] == {"sessionId": session_id, "agent": "echo", "organization": "demo",
                                       "endpoint": "generic", "region": None}
            bot_rec = await bot.session()
            assert bot_rec.request.headers["X-Session-Id"] == session_id
            client.send(WSMsgType.TEXT, b"hello")             # echoed by the bot
            await client_rec.wait_frames(1, 5)
            client.send_close(1000, b"bye")
            await receiver.wait_for(2)
        finally:
            await relay.stop()
            bot.close()
            await receiver.stop()
        ended = receiver.verified[1]
        assert ended["type"] == "session.ended"
        data = ended["data"]
        assert data["sessionId"] == session_id and data["outcome"] == "closed"
        assert data["closeCodes"]["fromClient"] == 1000 and data["firstCloser"] == "client"
        assert data["up"]["frames"] == 1 and data["up"]["bytes"] == 5
        assert data["down"]["frames"] == 1 and data["down"]["bytes"] == 5
        assert data["durationSeconds"] >= 0 and data["up"]["firstFrameMs"] is not None
        ids = [headers["webhook-id"] for _, headers, _ in receiver.requests]
        assert len(set(ids)) == 2
        metrics = relay.metrics.registry
        assert metrics.get_sample_value("wsrelay_webhooks_delivered_total") == 2
    arun(main())


def test_a_session_refused_before_its_bot_sends_nothing(tmp_path):
    async def main():
        receiver = await Receiver().start()
        config = dataclasses.replace(relay_config({"echo.demo": [f"ws://127.0.0.1:{free_port()}/bot"]}),
                                     webhooks=webhooks_table(receiver.url, tmp_path / "spool.sqlite3"))
        relay = await start_relay(config, "cython")
        try:
            with pytest.raises(Exception):
                await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")   # 502: no bot
            await asyncio.sleep(0.5)
        finally:
            await relay.stop()
            await receiver.stop()
        assert receiver.requests == []
    arun(main())


def test_a_relay_stopped_with_events_pending_delivers_them_after_its_restart(tmp_path):
    """wsrelay serve, its receiver down: a session's two events wait in the spool through a
    SIGTERM; started again (the receiver up by then), the relay delivers both within two
    seconds of listening."""
    async def main():
        bot = await Bot(echo=True).start()
        receiver = Receiver()                      # not started yet: every attempt fails
        port, spool = free_port(), tmp_path / "spool.sqlite3"
        text = (f"[relay]\nhost = '127.0.0.1'\nport = {port}\nadmin_port = 0\n\n"
                f"[webhooks]\nurl = '{receiver.url}'\nsecret = '{SECRET}'\nspool = '{spool}'\n\n"
                f"[[agents]]\nname = 'echo'\norganization = 'demo'\nupstreams = ['{bot.url}']\n")
        first = RelayProcess(text, tmp_path)
        try:
            await first.wait_port(port)
            client, _ = await connect_client(f"ws://127.0.0.1:{port}/ws/generic/echo.demo")
            client.send_close(1000, b"")
            await asyncio.sleep(0.5)
        finally:
            assert first.stop() == 0
        await asyncio.sleep(1.5)                   # the failed first attempts' retries come due
        await receiver.start()
        second = RelayProcess(text, tmp_path)
        try:
            await second.wait_port(port)
            listening = time.monotonic()
            await receiver.wait_for(2, timeout=8)
            assert receiver.requests[1][0] - listening < 2.0
        finally:
            second.stop()
            await receiver.stop()
            bot.close()
        assert sorted(v["type"] for v in receiver.verified) == ["session.ended", "session.started"]
        log = [json.loads(line) for line in second.log().splitlines() if line.startswith("{")]
        assert not [entry for entry in log if entry.get("level") in ("ERROR", "CRITICAL")], log
    arun(main(), timeout=90)


def test_two_workers_share_the_spool_and_deliver_each_event_once(tmp_path):
    """--workers 2 on one spool file: every session's two events arrive once, whichever worker
    ran the session and whichever delivered."""
    from test_workers_metrics import two_workers_with_clients

    async def main():
        receiver = await Receiver().start()
        bot = await Bot(echo=True).start()
        table = f"\n[webhooks]\nurl = '{receiver.url}'\nsecret = '{SECRET}'\nspool = '{tmp_path / 'spool.sqlite3'}'\n"
        relay, _, _, clients = await two_workers_with_clients(bot, tmp_path, table)
        try:
            for transport, _ in clients:
                transport.send_close(1000, b"")
            await receiver.wait_for(2 * len(clients), timeout=15)
            await asyncio.sleep(1.5)                      # nothing more comes: no event twice
        finally:
            relay.stop()
            bot.close()
            await receiver.stop()
        events = [(v["type"], v["data"]["sessionId"]) for v in receiver.verified]
        assert len(events) == len(set(events)) == 2 * len(clients)
        assert {t for t, _ in events} == {"session.started", "session.ended"}
        assert len({headers["webhook-id"] for _, headers, _ in receiver.requests}) == len(events)
    arun(main(), timeout=90)
