"""The hand-over to picows: the socket options its ``connection_made`` would set are set, and
its INFO line, when someone turns it on, still reports the real ones (edge/handover.py)."""

from __future__ import annotations

import logging
import socket

from picows import WSMsgType

from support import Bot, arun, connect_client, relay_config, start_relay


def _relay_sockets(relay) -> list[socket.socket]:
    [session] = relay.sessions
    return [side.transport.underlying_transport.get_extra_info("socket") for side in (session.client, session.bot)]


async def _one_echo_session(pump, while_open=lambda relay: None) -> None:
    """One session through a relay to an echo bot: a frame and its echo, ``while_open(relay)``,
    then a clean close."""
    bot = await Bot(echo=True).start()
    relay = await start_relay(relay_config({"echo.demo": [bot.url]}), pump)
    client, rec = await connect_client(f"ws://127.0.0.1:{relay.port}/ws/generic/echo.demo")
    client.send(WSMsgType.BINARY, b"x")
    await rec.wait_frames(1)
    while_open(relay)
    client.send_close(1000)
    await rec.disconnected.wait()
    bot.close()


def test_both_sockets_of_a_session_have_nagle_off(pump):
    """picows is not let set TCP_NODELAY (QuietSocket): uvloop has set it on both sockets."""
    def check(relay):
        for sock in _relay_sockets(relay):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    arun(_one_echo_session(pump, check))


def test_picows_info_line_reports_the_real_socket_when_it_is_on(pump, caplog):
    caplog.set_level(logging.INFO, logger="wsrelay.picows")
    arun(_one_echo_session(pump))
    lines = [r.getMessage() for r in caplog.records if r.name == "wsrelay.picows"]
    accepted = [line for line in lines if line.startswith("New connection accepted")]
    established = [line for line in lines if line.startswith("WS connection established")]
    assert len(accepted) == 1 and len(established) == 1, lines
    for line in accepted + established:
        assert "nodelay=1" in line and "recvbuf=0" not in line and "('127.0.0.1'," in line, line
