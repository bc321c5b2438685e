"""The admin port's live sessions: GET /sessions (paged), GET and DELETE /sessions/{id}, the token.

Real sockets: an in-process relay with its admin listener, picows clients and bots, and
raw HTTP requests to the admin port.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging

import pytest

from support import (Bot, admin_request, arun, connect_client, relay_config, start_relay, status_of, upgrade_head,
                     wait_until)
from wsrelay.admin.server import AdminServer
from wsrelay.telemetry.live_sessions import LiveSessions

TOKEN = "admin-token-for-the-tests-0123456789"


BEARER = {"Authorization": f"Bearer {TOKEN}"}


class Stage:
    """A relay, its admin port with a token, and an echo bot."""

    async def __aenter__(self) -> "Stage":
        self.bot = await Bot(echo=True).start()
        self.relay = await start_relay(relay_config({"voice.acme": [self.bot.url], "chat.acme": [self.bot.url]}),
                                       "cython")
        self.admin = AdminServer(render_metrics=self.relay.metrics.render, is_ready=lambda: True,
                                 sessions=LiveSessions(lambda: self.relay.sessions), token=TOKEN)
        await self.admin.start("127.0.0.1", 0)
        self.clients: list = []
        return self

    async def client(self, agent: str = "voice.acme"):
        transport, rec = await connect_client(f"ws://127.0.0.1:{self.relay.port}/ws/generic/{agent}")
        self.clients.append((transport, rec))
        return transport, rec

    async def get(self, path: str, headers=BEARER):
        status, fields, body = await admin_request(self.admin.port, "GET", path, headers)
        return status, (json.loads(body) if fields.get("content-type") == "application/json" else body)

    async def __aexit__(self, *exc) -> None:
        for transport, _ in self.clients:
            transport.disconnect()
        await self.admin.close()
        await self.relay.stop()
        self.bot.close()


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-token-wrong-token-wrong"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Token {TOKEN}"},
    {"Authorization": "Basic " + base64.b64encode(b"admin:not-the-token").decode()},
    {"Authorization": "Basic !!!notbase64"},
    {"Authorization": "Bearer"},
], ids=["missing", "wrong", "longer", "other-scheme", "basic-wrong", "basic-garbage", "empty-bearer"])
@pytest.mark.parametrize("path", ["/sessions", "/metrics", "/", "/dashboard.js", "/sessions/x"])
def test_a_wrong_or_missing_admin_token_is_401(headers, path):
    async def main():
        async with Stage() as stage:
            status, fields, body = await admin_request(stage.admin.port, "GET", path, headers)
            assert status == 401, body
            assert "Bearer" in fields["www-authenticate"] and "Basic" in fields["www-authenticate"]
            assert b"session" not in body.lower() or b"token" in body
            status, _, _ = await admin_request(stage.admin.port, "DELETE", path, headers)
            assert status == 401
    arun(main())


def test_the_probes_need_no_token_and_the_token_opens_everything():
    async def main():
        async with Stage() as stage:
            for path in ("/healthz", "/readyz"):
                assert (await admin_request(stage.admin.port, "GET", path))[0] == 200
            assert (await stage.get("/metrics"))[0] == 200
            basic = {"Authorization": "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()}
            status, page = await stage.get("/", basic)
            assert status == 200 and b"/dashboard.js" in page
            status, fields, _ = await admin_request(stage.admin.port, "GET", "/dashboard.js", BEARER)
            assert status == 200 and fields["content-type"].startswith("text/javascript")
            assert "default-src 'self'" in fields["content-security-policy"]
    arun(main())


def test_sessions_lists_each_live_session_with_its_figures():
    async def main():
        async with Stage() as stage:
            voice, voice_rec = await stage.client("voice.acme")
            await stage.client("chat.acme")
            from picows import WSMsgType
            for _ in range(5):
                voice.send(WSMsgType.BINARY, b"x" * 100)
            await voice_rec.wait_frames(5)
            status, body = await stage.get("/sessions")
            assert status == 200 and body["total"] == 2 and body["next"] is None
            by_agent = {s["agent"]: s for s in body["sessions"]}
            assert set(by_agent) == {"voice", "chat"}
            voice_view = by_agent["voice"]
            assert voice_view["organization"] == "acme" and voice_view["state"] == "open"
            assert voice_view["client"].startswith("127.0.0.1") and voice_view["age_s"] >= 0
            assert voice_view["up"]["frames"] == 5 and voice_view["down"]["frames"] == 5
            assert voice_view["up"]["bytes"] == 500 and voice_view["up"]["first_frame_ms"] is not None
            assert set(voice_view["up"]) == {"frames", "bytes", "first_frame_ms", "jitter_ms", "max_gap_ms", "gaps"}
            status, one = await stage.get(f"/sessions/{voice_view['id']}")
            assert status == 200 and one["id"] == voice_view["id"] and one["up"]["frames"] == 5
            assert (await stage.get("/sessions/no-such-session"))[0] == 404
    arun(main())


@pytest.mark.parametrize("query, status", [
    ("?limit=0", 400), ("?limit=1001", 400), ("?limit=x", 400), ("?cursor=%%%", 400),
    ("?cursor=" + "A" * 300, 400), ("?cursor=bm90LWEtY3Vyc29y", 400), ("?limit=1000", 200),
    ("?cursor=" + base64.urlsafe_b64encode(b"nan|x").decode(), 400),
    ("?cursor=" + base64.urlsafe_b64encode(b"inf|x").decode(), 400),
    ("?cursor=" + base64.urlsafe_b64encode(b"-inf|x").decode(), 400),
    ("?" + "&".join(f"p{i}=1" for i in range(11)), 400),
])
def test_bad_paging_parameters_are_400_with_a_reason(query, status):
    async def main():
        async with Stage() as stage:
            got, body = await stage.get("/sessions" + query)
            assert got == status, body
            if status == 400:
                assert body["error"]
    arun(main())


def test_each_bad_query_gets_a_sentence_saying_what_was_wrong():
    async def main():
        async with Stage() as stage:
            _, body = await stage.get("/sessions?" + "&".join(f"p{i}=1" for i in range(11)))
            assert "too many query parameters" in body["error"] and "cursor" in body["error"], body
            _, body = await stage.get("/sessions?cursor=" + base64.urlsafe_b64encode(b"nan|x").decode())
            assert "not a cursor from this relay" in body["error"], body
            _, body = await stage.get("/sessions?limit=x")
            assert body["error"] == "limit must be a number", body
    arun(main())


@pytest.mark.parametrize("method, path", [("GET", "/sessions"), ("GET", "/sessions?limit=0"),
                                          ("GET", "/sessions/no-such-session"),
                                          ("DELETE", "/sessions/no-such-session")])
def test_json_answers_are_neither_cached_nor_sniffed(method, path):
    async def main():
        async with Stage() as stage:
            _, fields, _ = await admin_request(stage.admin.port, method, path, BEARER)
            assert fields["content-type"] == "application/json"
            assert fields["cache-control"] == "no-store" and fields["x-content-type-options"] == "nosniff"
    arun(main())


def test_delete_ends_the_session_with_1008_to_both_sides(caplog):
    caplog.set_level(logging.INFO, logger="wsrelay.session")

    async def main():
        async with Stage() as stage:
            transport, rec = await stage.client()
            bot_side = await stage.bot.session()
            _, body = await stage.get("/sessions")
            sid = body["sessions"][0]["id"]
            status, _, answer = await admin_request(stage.admin.port, "DELETE", f"/sessions/{sid}", BEARER)
            assert status == 200 and json.loads(answer) == {"ended": sid, "close_code": 1008}
            await asyncio.wait_for(rec.disconnected.wait(), 10)
            await asyncio.wait_for(bot_side.disconnected.wait(), 10)
            for closes in (rec.close_frames(), bot_side.close_frames()):
                assert closes and closes[0].payload == (1008).to_bytes(2, "big") + b"ended by the operator"
            for _ in range(100):
                if not stage.relay.sessions:
                    break
                await asyncio.sleep(0.02)
            assert (await admin_request(stage.admin.port, "DELETE", f"/sessions/{sid}", BEARER))[0] == 404
            assert (await stage.get("/sessions"))[1]["total"] == 0
    arun(main())
    ends = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "session_end"]
    assert [e["end_reason"] for e in ends] == ["ended by operator"]


class SilentBot:
    """A TCP server that reads each bot handshake and never answers it: a bot still connecting.
    ``dropped`` counts the connections the relay has closed (EOF seen)."""

    async def start(self) -> "SilentBot":
        self.requests: list[bytes] = []
        self.dropped = 0
        self.changed = asyncio.Event()
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            self.changed.set()
            while await reader.read(4096):
                pass
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        self.dropped += 1
        self.changed.set()
        writer.close()

    async def until(self, predicate, timeout: float = 5) -> None:
        await wait_until(predicate, self.changed, timeout)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/bot"

    def close(self) -> None:
        self.server.close()


@pytest.mark.parametrize("endpoint", ["generic", "twilio"])
def test_delete_of_a_session_whose_bot_has_not_answered_refuses_the_client_and_drops_the_bot(endpoint, caplog):
    """The bot has not sent its 101 yet: the client is refused (HTTP 503 before its 101, or close
    1008 on a telephony endpoint, whose 101 the relay wrote itself), the bot's connection is
    dropped, the capacity slot is free at once (not after close_timeout), and the log says so."""
    from websockets.asyncio.client import connect
    import websockets

    from providers import Call
    caplog.set_level(logging.INFO, logger="wsrelay")

    async def main():
        bot = await SilentBot().start()
        config = relay_config({"voice.acme": [bot.url]}, upstream_connect_timeout=30, close_timeout=10)
        config = dataclasses.replace(config, agents=(dataclasses.replace(config.agents[0], max_sessions=1),))
        relay = await start_relay(config, "cython")
        admin = AdminServer(render_metrics=relay.metrics.render, is_ready=lambda: True,
                            sessions=LiveSessions(lambda: relay.sessions), token=TOKEN)
        await admin.start("127.0.0.1", 0)
        try:
            if endpoint == "generic":
                reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
                writer.write(upgrade_head("/ws/generic/voice.acme"))
            else:
                ws = await connect(f"ws://127.0.0.1:{relay.port}/ws/twilio")
                for message in Call("twilio", service_host="voice.acme").first_messages():
                    await ws.send(message)
            await bot.until(lambda: len(bot.requests) == 1)
            status, _, body = await admin_request(admin.port, "GET", "/sessions", BEARER)
            view, = json.loads(body)["sessions"]
            assert view["state"] == "connecting"
            status, _, body = await admin_request(admin.port, "DELETE", f"/sessions/{view['id']}", BEARER)
            assert status == 200 and json.loads(body) == {"ended": view["id"], "close_code": 1008}
            if endpoint == "generic":
                answer = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                assert status_of(answer) == 503 and b"ended by the operator" in answer, answer
                assert relay.rejections[503] == 1
            else:
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), 5)
                assert (info.value.rcvd.code, info.value.rcvd.reason) == (1008, "ended by the operator")
                assert relay.rejections[1008] == 1
            await bot.until(lambda: bot.dropped == 1, 2)
            assert not relay.sessions
            # the slot (max_sessions = 1) is free at once: the next client reaches the bot
            reader2, writer2 = await asyncio.open_connection("127.0.0.1", relay.port)
            writer2.write(upgrade_head("/ws/generic/voice.acme"))
            await bot.until(lambda: len(bot.requests) == 2, 2)
            writer2.close()
        finally:
            await admin.close()
            await relay.stop()
            bot.close()
    arun(main())
    ends = [r.fields for r in caplog.records if getattr(r, "fields", {}).get("event") == "session_end"]
    assert ends and ends[0]["end_reason"] == "ended by operator", ends


def test_shutdown_while_the_bot_has_not_answered_refuses_the_client_with_503():
    """Relay.stop ends a session still connecting as DELETE does: at once, the client refused
    (it has no 101 yet), the bot's connection dropped; not after close_timeout, unanswered."""
    async def main():
        bot = await SilentBot().start()
        relay = await start_relay(relay_config({"voice.acme": [bot.url]}, upstream_connect_timeout=30,
                                               close_timeout=10), "cython")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(upgrade_head("/ws/generic/voice.acme"))
            await bot.until(lambda: len(bot.requests) == 1)
            await asyncio.wait_for(relay.stop(drain_seconds=0), 2)
            answer = await asyncio.wait_for(reader.read(), 2)
            writer.close()
            assert status_of(answer) == 503 and b"relay restarting" in answer, answer
            await bot.until(lambda: bot.dropped == 1, 2)
        finally:
            bot.close()
    arun(main())


def test_paging_returns_every_live_session_exactly_once_under_churn():
    """Sessions start and end between pages: each one alive throughout is listed exactly once,
    none is listed twice, one that ended before its page came is not listed, and a page never
    exceeds its limit."""
    async def main():
        async with Stage() as stage:
            initial_clients = [await stage.client() for _ in range(30)]
            for _ in range(100):
                if len([s for s in stage.relay.sessions if s.connected_at]) == 30:
                    break
                await asyncio.sleep(0.02)
            initial = sorted(stage.relay.sessions, key=lambda s: (s.created_at, s.id))
            assert len(initial) == 30
            seen: list[str] = []
            listed_on: dict[str, int] = {}          # session id -> page it was listed on
            ended_after: dict[str, int] = {}        # session id -> page after which it ended
            cursor = None
            pages = 0
            while True:
                status, body = await stage.get("/sessions?limit=7" + (f"&cursor={cursor}" if cursor else ""))
                assert status == 200 and len(body["sessions"]) <= 7
                pages += 1
                for view in body["sessions"]:
                    seen.append(view["id"])
                    listed_on[view["id"]] = pages
                # churn between pages: the newest initial session ends, a new one starts
                transport, _ = initial_clients.pop()
                ended_after[initial[len(initial_clients)].id] = pages
                transport.disconnect()
                await stage.client()
                await asyncio.sleep(0.05)
                cursor = body["next"]
                if cursor is None:
                    break
                assert pages < 20
            alive = {s.id for s in stage.relay.sessions}
            assert len(seen) == len(set(seen)), "a session was listed twice"
            alive_throughout = {s.id for s in initial} & alive
            assert len(alive_throughout) == 30 - pages
            assert alive_throughout <= set(seen)
            late = {sid: (listed_on[sid], page) for sid, page in ended_after.items()
                    if sid in listed_on and listed_on[sid] > page}
            assert late == {}, "listed on a page fetched after the session had ended"
            assert any(sid not in listed_on for sid in ended_after), "the churn never hid a session"
    arun(main())
