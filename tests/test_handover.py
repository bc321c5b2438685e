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


# -- what the relay uses of picows beyond its public API (edge/picows_internals.py) -----------

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent
PUMP_SOURCES = [REPO / "csrc" / "wsrelay" / "pump" / name for name in ("side.pxi", "client_stream.pxi")]


def test_the_installed_picows_has_everything_the_relay_uses_of_it():
    from wsrelay.edge import picows_internals
    picows_internals.check()                   # what edge/handover.py runs at import


def test_another_picows_version_stops_the_import_with_what_to_install():
    import pytest

    from wsrelay.edge.picows_internals import PICOWS_VERSION, PicowsMismatch, check
    with pytest.raises(PicowsMismatch) as refused:
        check(version="9.9.9")
    text = str(refused.value)
    assert "picows 9.9.9 is installed" in text and f"pip install --force-reinstall 'picows=={PICOWS_VERSION}'" in text


def test_a_picows_pxd_without_a_c_level_name_the_pump_uses_is_refused_by_name():
    import pytest

    from wsrelay.edge.picows_internals import C_LEVEL, PICOWS_VERSION, PicowsMismatch, check
    pxd = (__import__("pathlib").Path(__import__("picows").__file__).with_name("picows.pxd")).read_text()
    check(version=PICOWS_VERSION, pxd_text=pxd)
    with pytest.raises(PicowsMismatch) as refused:
        check(version=PICOWS_VERSION, pxd_text=pxd.replace("_fast_write", "_gone"))
    assert "picows.pxd: _fast_write" in str(refused.value)
    assert set(C_LEVEL) >= {"_fast_write", "_prepare_header", "_get_header_size"}


def test_every_private_picows_name_the_pump_reaches_is_listed_and_every_listed_one_is_used():
    """The list is the whole truth: the pump's sources reach no ``_name`` of a picows object
    (a WSTransport or its buffer) that is not in C_LEVEL, and use every C_LEVEL name."""
    import re

    from wsrelay.edge.picows_internals import C_LEVEL
    if not all(p.is_file() for p in PUMP_SOURCES):
        import pytest
        pytest.skip("the pump's Cython sources are not beside these tests")
    text = "\n".join(p.read_text() for p in PUMP_SOURCES)
    reached = set(re.findall(r"\b(?:dst|transport)\.(_\w+)", text)) | set(re.findall(r"\._write_buffer\.(_\w+)", text))
    assert reached and reached <= set(C_LEVEL), reached - set(C_LEVEL)
    assert [name for name in C_LEVEL if not re.search(rf"\.{name}\b", text)] == []
