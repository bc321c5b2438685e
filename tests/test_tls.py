"""wss:// for clients (certificate from the config) and verified wss:// upstreams."""

from __future__ import annotations

import ssl

import pytest
import trustme
import websockets
from picows import WSMsgType

from support import Bot, arun, raw_request, relay_config, start_relay, status_of, upgrade_head


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca, tmp_path_factory):
    cert = ca.issue_cert("localhost", "127.0.0.1")
    d = tmp_path_factory.mktemp("tls")
    cert_path, key_path, ca_path = d / "cert.pem", d / "key.pem", d / "ca.pem"
    cert.private_key_pem.write_to_path(key_path)
    cert.cert_chain_pems[0].write_to_path(cert_path)
    for extra in cert.cert_chain_pems[1:]:
        with open(cert_path, "ab") as f:
            f.write(extra.bytes())
    ca.cert_pem.write_to_path(ca_path)
    return str(cert_path), str(key_path), str(ca_path)


def test_relay_serves_wss_with_the_configured_certificate(pump, ca, cert_files):
    cert, key, _ = cert_files

    async def main():
        bot = await Bot(echo=True).start()
        relay = await start_relay(relay_config({"echo.demo": [bot.url]}, tls_cert=cert, tls_key=key), pump)
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        url = f"wss://localhost:{relay.port}/ws/generic/echo.demo"
        async with websockets.connect(url, ssl=client_ctx) as ws:
            await ws.send(b"\x00secret" * 1000)
            assert await ws.recv() == b"\x00secret" * 1000
            await ws.send("text")
            assert await ws.recv() == "text"
        assert bot.requests[0].headers["X-Forwarded-Proto"] == "https"
        # A client that does not trust the certificate cannot connect.
        with pytest.raises(ssl.SSLCertVerificationError):
            async with websockets.connect(url, ssl=ssl.create_default_context()):
                pass
        bot.close()
    arun(main())


def test_wss_upstream_is_verified_against_the_configured_ca(pump, ca, cert_files):
    cert, key, ca_path = cert_files

    async def main():
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        from picows import ws_create_server
        from support import Recorder
        recs = []

        def factory(request):
            recs.append(Recorder(echo=True))
            return recs[-1]
        server = await ws_create_server(factory, "127.0.0.1", 0, ssl=server_ctx, use_aiofastnet=False)
        port = server.sockets[0].getsockname()[1]
        upstream = f"wss://localhost:{port}/"
        trusted = await start_relay(relay_config({"echo.demo": [upstream]}, upstream_ca_file=ca_path), pump)
        async with websockets.connect(f"ws://127.0.0.1:{trusted.port}/ws/generic/echo.demo") as ws:
            await ws.send(b"over tls")
            assert await ws.recv() == b"over tls"
        # Without the CA the bot's certificate does not verify: no instance reachable.
        untrusted = await start_relay(relay_config({"echo.demo": [upstream]}), pump)
        response = await raw_request(untrusted.port, upgrade_head("/ws/generic/echo.demo"))
        assert status_of(response) == 502
        # The explicit opt-out (for testing) connects anyway.
        unverified = await start_relay(relay_config({"echo.demo": [upstream]}, upstream_tls_verify=False), pump)
        async with websockets.connect(f"ws://127.0.0.1:{unverified.port}/ws/generic/echo.demo") as ws:
            await ws.send("no verify")
            assert await ws.recv() == "no verify"
        server.close()
    arun(main())
