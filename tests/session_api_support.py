"""A bot as the hosted platform's bot image is one: one aiohttp server for its WebSocket and its
HTTP routes (the Session API's), in a process of its own, naming itself in every answer.

``GET /ws`` upgrades, greets with ``{"instance", "session"}`` (the ``X-Session-Id`` it got),
then echoes. ``/state`` (any method) answers JSON with the instance, the method, the path,
the query, the headers as received and the body. ``/slow`` answers after 10 s, ``/big?n=``
with ``n`` bytes, ``/headers`` with two ``Set-Cookie`` lines, a hop-by-hop header named by
``Connection``, a ``Keep-Alive`` and its own CORS header, ``/gzip`` with a gzip body as sent;
``POST /stop-listening`` closes its listening socket (its live WebSockets go on).
Run as a script: ``python session_api_support.py NAME HOST PORT``.
"""

from __future__ import annotations

import subprocess
import sys


class SessionBot:
    """The bot in its own process on ``host:port``, answering as ``name``."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name, self.host, self.port = name, host, port
        self.proc = subprocess.Popen([sys.executable, __file__, name, host, str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()          # "listening" once the socket is bound
        assert line.startswith(b"listening"), line

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _run(name: str, host: str, port: int) -> None:
    import asyncio
    import gzip
    import json

    from aiohttp import WSMsgType, web

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_str(json.dumps({"instance": name, "session": request.headers.get("X-Session-Id")}))
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                await socket.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await socket.send_bytes(message.data)
        return socket

    async def state(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "instance": name, "method": request.method, "path": request.raw_path.partition("?")[0],
            "query": request.raw_path.partition("?")[2], "headers": [[k.decode(), v.decode()] for k, v in request.raw_headers],
            "body": body.decode("latin-1")}, headers={"X-Instance": name})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response(text="late")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * int(request.query["n"]))

    async def headers(request: web.Request) -> web.Response:
        response = web.Response(text="cookies", headers={"Connection": "X-Hop", "X-Hop": "1",
                                                           "Keep-Alive": "timeout=5",
                                                           "Access-Control-Allow-Origin": "https://bot.example"})
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def zipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"squeezed"), headers={"Content-Encoding": "gzip",
                                                                      "Content-Type": "text/plain"})

    sites: list = []

    async def stop_listening(request: web.Request) -> web.Response:
        """Stop accepting connections; the live WebSocket goes on (a bot whose HTTP side is gone)."""
        asyncio.get_running_loop().call_soon(sites[0]._server.close)
        response = web.Response(text="no longer listening")
        response.force_close()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/ws", ws)
        app.router.add_route("*", "/state", state)
        app.router.add_route("*", "/state/{rest:.*}", state)
        app.router.add_get("/slow", slow)
        app.router.add_get("/big", big)
        app.router.add_get("/headers", headers)
        app.router.add_get("/gzip", zipped)
        app.router.add_post("/stop-listening", stop_listening)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sites.append(web.TCPSite(runner, host, port))
        await sites[0].start()
        print("listening", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    _run(sys.argv[1], sys.argv[2], int(sys.argv[3]))
