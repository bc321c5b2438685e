"""Real peers for the fleet tests: redis-server, a DNS server, bots on other loopback addresses.

Nothing here imitates wsrelay. ``redis-server`` is Debian's; the DNS server is dnslib's
``DNSServer`` answering on 127.0.0.1 over UDP; bots are separate processes (this file run
as a script) that greet each client with their own address, so a test can tell which
instance a session reached, then echo.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time


from support import RedisServer, free_port


def start_redis(port: int | None = None) -> RedisServer:
    """A fresh redis-server on 127.0.0.1 (on ``port`` when given: a restart keeps its address)."""
    server = RedisServer()         # installs redis-server from Debian's packages when missing
    if port is not None:
        server.port = port
    return server.start()


def redis_command(server: RedisServer, *args: str):
    """One command to the test's Redis, to look at what the relays wrote (redis-py, synchronous)."""
    import redis
    with redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5) as client:
        return client.execute_command(*args)


class DnsServer:
    """dnslib's DNS server on 127.0.0.1:port (UDP), answering A and AAAA records from ``records``.

    ``records`` may be changed while it runs (a Service's pods coming and going). Names it
    does not know are NXDOMAIN; a known name without addresses of the asked family gets an
    empty NOERROR answer. Queries of a type in ``unanswered`` ("AAAA") get no answer at all,
    as from a resolver that drops them: the asker times out.
    """

    def __init__(self, records: dict[str, list[str]]) -> None:
        from dnslib import AAAA, QTYPE, RCODE, RR, A
        from dnslib.dns import DNSError
        from dnslib.server import BaseResolver, DNSLogger, DNSServer

        self.records = records
        self.unanswered: set[str] = set()
        self.queries = 0
        outer = self

        class Resolver(BaseResolver):
            def resolve(self, request, handler):
                outer.queries += 1
                if QTYPE[request.q.qtype] in outer.unanswered:
                    raise DNSError("dropped")            # dnslib sends nothing back
                reply = request.reply()
                name = str(request.q.qname).rstrip(".")
                if name not in outer.records:
                    reply.header.rcode = RCODE.NXDOMAIN
                else:
                    for address in outer.records[name]:
                        if request.q.qtype == QTYPE.A and ":" not in address:
                            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=1))
                        elif request.q.qtype == QTYPE.AAAA and ":" in address:
                            reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=1))
                return reply

        self.port = free_port()
        self.server = DNSServer(Resolver(), port=self.port, address="127.0.0.1",
                                logger=DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data",
                                                 prefix=False))

    def start(self) -> "DnsServer":
        self.server.start_thread()
        return self

    def stop(self) -> None:
        self.server.stop()


class BotProcess:
    """A bot in its own process on ``host:port`` that says ``hello from <host>`` first, then echoes."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.proc = subprocess.Popen([sys.executable, __file__, "bot", host, str(port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()          # "listening" once the socket is bound
        assert line.startswith(b"listening"), line

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _run_bot(host: str, port: int) -> None:
    import asyncio

    from picows import WSListener, WSMsgType, ws_create_server

    class Greeter(WSListener):
        def on_ws_connected(self, transport) -> None:
            transport.send(WSMsgType.TEXT, f"hello from {host}".encode())

        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send(WSMsgType.CLOSE, frame.get_payload_as_bytes())
                transport.disconnect()
            elif frame.msg_type not in (WSMsgType.PING, WSMsgType.PONG):
                transport.send(frame.msg_type, frame.get_payload_as_bytes())

    async def main() -> None:
        await ws_create_server(lambda request: Greeter(), host, port, use_aiofastnet=False)
        print("listening", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def wait_until(predicate, timeout: float, step: float = 0.05) -> float:
    """Seconds until ``predicate()`` held; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(step)
    return time.monotonic() - started


if __name__ == "__main__" and sys.argv[1:2] == ["bot"]:
    threading.current_thread().name = "bot"
    _run_bot(sys.argv[2], int(sys.argv[3]))
