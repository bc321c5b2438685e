"""The admin listener: health, readiness, Prometheus metrics read from the pump's counters."""

from __future__ import annotations

import asyncio

import pytest
from picows import WSMsgType
from prometheus_client.parser import text_string_to_metric_families

from wsrelay.admin.server import AdminServer

from support import (Bot, arun, connect_client, free_port, raw_request, relay_config, start_relay, status_of,
                     upgrade_head)


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    response = await raw_request(port, f"{method} {path} HTTP/1.1\r\nHost: admin\r\n\r\n".encode())
    return status_of(response), response.split(b"\r\n\r\n", 1)[1]


def _samples(body: bytes) -> dict[tuple[str, tuple], float]:
    result = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            result[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return result


async def _setup(pump):
    bot = await Bot(echo=True).start()
    relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
    ready = {"value": True}
    admin = AdminServer(render_metrics=relay.metrics.render, is_ready=lambda: ready["value"], read_timeout=0.3)
    await admin.start("127.0.0.1", 0)
    return bot, relay, admin, ready


def test_metrics_count_frames_bytes_sessions_and_refusals(pump):
    async def main():
        bot, relay, admin, _ = await _setup(pump)
        _, before = await _get(admin.port, "/metrics")
        before = _samples(before)
        client, rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
        for _ in range(10):
            client.send(WSMsgType.BINARY, b"x" * 100)
        await rec.wait_frames(10)
        status, during = await _get(admin.port, "/metrics")
        assert status == 200
        during = _samples(during)
        assert during[("wsrelay_sessions_active", (("agent", "echo"), ("organization", "demo")))] == 1
        assert during[("wsrelay_sessions_started_total", (("agent", "echo"), ("organization", "demo")))] == 1
        client.send_close(1000)
        await rec.disconnected.wait()
        await asyncio.sleep(0.05)
        await raw_request(relay.port, upgrade_head("/ws/generic/nobody.demo"))
        _, after = await _get(admin.port, "/metrics")
        after = _samples(after)

        def delta(name, **labels):
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0) - before.get(key, 0)
        assert delta("wsrelay_frames_total", direction="client_to_bot") == 10
        assert delta("wsrelay_frames_total", direction="bot_to_client") == 10
        assert delta("wsrelay_bytes_total", direction="client_to_bot") == 1000
        assert delta("wsrelay_bytes_total", direction="bot_to_client") == 1000
        assert delta("wsrelay_sessions_total", agent="echo", organization="demo", outcome="closed") == 1
        assert delta("wsrelay_sessions_started_total", agent="echo", organization="demo") == 1
        assert delta("wsrelay_handshake_rejections_total", status="404") == 1
        assert delta("wsrelay_upstream_connect_seconds_count") == 1
        assert delta("wsrelay_session_seconds_count") == 1
        assert ("wsrelay_sessions_active", (("agent", "echo"), ("organization", "demo"))) not in after
        bot.close()
    arun(main())


def test_sessions_started_is_ended_plus_active(pump):
    """``wsrelay_sessions_started_total`` counts a session once its client has its 101, so with no
    session between admission and that 101, started = ended (every outcome) + active; a
    refused handshake (unknown agent, unreachable bot) is not a started session."""
    def totals(relay) -> tuple[float, float, float]:
        """(started, ended, active), each summed over its labels."""
        samples = _samples(relay.metrics.render()[0])
        return tuple(sum(v for (n, _), v in samples.items() if n == name)
                     for name in ("wsrelay_sessions_started_total", "wsrelay_sessions_total", "wsrelay_sessions_active"))

    async def settled(relay, active: int) -> None:
        while len(relay.sessions) != active:
            await asyncio.sleep(0.01)

    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url],
                                                "gone.demo": [f"ws://127.0.0.1:{free_port()}/"]}), pump)
        clients = [await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo") for _ in range(3)]
        assert totals(relay) == (3, 0, 3)
        assert status_of(await raw_request(relay.port, upgrade_head("/ws/generic/nobody.demo"))) == 404
        assert status_of(await raw_request(relay.port, upgrade_head("/ws/generic/gone.demo"))) == 502
        await settled(relay, 3)
        assert totals(relay) == (3, 0, 3)
        (clean, clean_rec), (lost, _), (last, last_rec) = clients
        clean.send_close(1000)
        await clean_rec.disconnected.wait()
        lost.disconnect(False)                               # no close frame: "client lost"
        await settled(relay, 1)
        started, ended, active = totals(relay)
        assert (started, ended, active) == (3, 2, 1)
        samples = _samples(relay.metrics.render()[0])
        for outcome in ("closed", "client lost"):
            key = ("wsrelay_sessions_total", (("agent", "echo"), ("organization", "demo"), ("outcome", outcome)))
            assert samples[key] == 1, outcome
        last.send_close(1000)
        await last_rec.disconnected.wait()
        await settled(relay, 0)
        assert totals(relay) == (3, 3, 0)
        await relay.stop()
        bot.close()
    arun(main())


def test_health_and_readiness(pump):
    async def main():
        bot, relay, admin, ready = await _setup(pump)
        assert await _get(admin.port, "/healthz") == (200, b"ok\n")
        assert (await _get(admin.port, "/readyz"))[0] == 200
        ready["value"] = False
        assert await _get(admin.port, "/readyz") == (503, b"draining\n")
        assert (await _get(admin.port, "/healthz"))[0] == 200
        status, body = await _get(admin.port, "/metrics", method="HEAD")
        assert status == 200 and body == b""
        bot.close()
    arun(main())


BAD = [
    (b"GET /nope HTTP/1.1\r\nHost: a\r\n\r\n", 404),
    (b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GET /metrics HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"\x00\x01garbage\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\n", 408),          # never finishes its head
]


@pytest.mark.parametrize("request_bytes,status", BAD, ids=["404", "405", "431", "garbage", "slowloris"])
def test_admin_refuses_bad_input(pump, request_bytes, status):
    async def main():
        bot, relay, admin, _ = await _setup(pump)
        response = await raw_request(admin.port, request_bytes)
        assert status_of(response) == status
        assert (await _get(admin.port, "/healthz"))[0] == 200       # still serving
        bot.close()
    arun(main())


def test_an_admin_port_open_beyond_loopback_without_a_token_is_one_warning_at_startup(tmp_path):
    """A real ``wsrelay serve``: the admin port carries client addresses and a kill switch, so
    listening on 0.0.0.0 without ``admin_token`` is said once, in the JSON log; on 127.0.0.1,
    or with a token, nothing is said."""
    import json

    from support import RelayProcess, free_port

    cases = {"open": 'admin_host = "0.0.0.0"', "loopback": 'admin_host = "127.0.0.1"',
             "token": 'admin_host = "0.0.0.0"\nadmin_token = "admin-token-for-the-tests-0123456789"'}

    async def main():
        relays = {}
        try:
            for name, extra in cases.items():
                folder = tmp_path / name
                folder.mkdir()
                port, admin = free_port(), free_port()
                relays[name] = (RelayProcess(f'[relay]\nhost = "127.0.0.1"\nport = {port}\nadmin_port = {admin}\n'
                                             f'{extra}\n[[agents]]\nname = "echo"\norganization = "demo"\n'
                                             f'upstreams = ["ws://127.0.0.1:9/"]\n', folder), admin)
            for relay, admin in relays.values():
                await relay.wait_port(admin)
                for _ in range(200):                # started: its signal handlers are in place
                    if "wsrelay listening" in relay.log():
                        break
                    await asyncio.sleep(0.05)
        finally:
            for relay, _ in relays.values():
                assert relay.stop() == 0, relay.log()
        warnings = {}
        for name, (relay, admin) in relays.items():
            lines = [json.loads(line) for line in relay.log().splitlines() if line.startswith("{")]
            warnings[name] = [line for line in lines if line["level"] == "warning" and "admin_token" in line["msg"]]
        assert len(warnings["open"]) == 1, warnings
        assert warnings["loopback"] == warnings["token"] == [], warnings
        text = warnings["open"][0]["msg"]
        assert f"0.0.0.0:{relays['open'][1]}" in text and "client addresses" in text, text
    arun(main())


def test_the_admin_port_listens_on_loopback_unless_admin_host_says_otherwise(tmp_path):
    """A real ``wsrelay serve`` whose public host is 0.0.0.0 and whose config names no
    ``admin_host``: the public port listens on every address, the admin port on 127.0.0.1
    alone; with ``admin_host = "0.0.0.0"`` it listens where it is told."""
    import psutil

    from support import RelayProcess, free_port

    async def main():
        listening = {}
        for name, extra in {"default": "", "told": 'admin_host = "0.0.0.0"\nadmin_token = "0123456789abcdef-xyz"'}.items():
            folder = tmp_path / name
            folder.mkdir()
            port, admin = free_port(), free_port()
            relay = RelayProcess(f'[relay]\nhost = "0.0.0.0"\nport = {port}\nadmin_port = {admin}\n{extra}\n'
                                 f'[[agents]]\nname = "echo"\norganization = "demo"\n'
                                 f'upstreams = ["ws://127.0.0.1:9/"]\n', folder)
            try:
                await relay.wait_port(port)
                await relay.wait_port(admin)
                sockets = psutil.Process(relay.proc.pid).net_connections(kind="tcp")
                listening[name] = {s.laddr.port: s.laddr.ip for s in sockets if s.status == psutil.CONN_LISTEN}
                listening[name] = (listening[name].get(port), listening[name].get(admin))
            finally:
                assert relay.stop() == 0, relay.log()
        assert listening == {"default": ("0.0.0.0", "127.0.0.1"), "told": ("0.0.0.0", "0.0.0.0")}
    arun(main())


def test_one_admin_connection_is_answered_once_whatever_follows_its_request(pump):
    """Bytes after a complete request (here: 20 more requests, written one by one) start no
    further answers: each answer may gather every worker's metrics, so they must not multiply."""
    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
        rendered = []

        async def gather():                  # as --workers N does: asks the others, takes a while
            rendered.append(1)
            await asyncio.sleep(0.2)
            return relay.metrics.render()
        admin = AdminServer(render_metrics=relay.metrics.render, gather_metrics=gather, is_ready=lambda: True,
                            read_timeout=2)
        await admin.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
            request = b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n"
            writer.write(request)
            for _ in range(20):
                await asyncio.sleep(0.001)
                writer.write(request)
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            assert answer.count(b"HTTP/1.1 200") == 1
            await asyncio.sleep(0.1)
            assert len(rendered) == 1
        finally:
            await admin.close()
            await relay.stop()
            bot.close()
    arun(main())
