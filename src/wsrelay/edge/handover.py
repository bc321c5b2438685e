"""The hand-over: the client's socket passes from the gate to picows. The one Python module
that reaches into picows' internals.

picows' server-side listener factory is synchronous, but a session needs async work
(connecting to the bot) before the client may get its ``101``. So the gate reads the
head itself, and once the bot has answered, this module builds picows' server-side
``WSProtocol`` by hand (its constructor is not public API: 14 positional arguments,
written against picows ``PICOWS_VERSION``), puts the pump's ``ClientStream`` in front of
it on the client's transport, and feeds it a *canonical* upgrade head built from the
checked request (picows never parses the client's own head, so its stricter parser can
never refuse what the relay accepted), then the client's early bytes. picows answers
``101`` with the bot's sub-protocol. ``bot_protocol`` builds the client-side protocol the
upstream connector opens the bot's connection with. The compiled pump's only other reach
into picows internals is ``_trim_picows_buffers`` in ``csrc/wsrelay/pump/side.pxi``.
"""

from __future__ import annotations

import logging
import socket
from http import HTTPStatus
from typing import Any

import picows
from picows import WSUpgradeResponse, WSUpgradeResponseWithListener
from picows.picows import WSAutoPingStrategy
# WSProtocol is a real class of the compiled module but not public API, so picows.pyi does not declare it.
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from ..config import RelayConfig
from ..core.upgrade import canonical_upgrade_head

PICOWS_VERSION = "2.3.1"      # the constructor below, and the pump's C interface, are this version's
if picows.__version__ != PICOWS_VERSION:
    raise ImportError(
        f"wsrelay is built against picows {PICOWS_VERSION}, but picows {picows.__version__} is "
        f"installed: its internals differ between versions. Install picows=={PICOWS_VERSION} "
        "(pip install --force-reinstall 'picows==" + PICOWS_VERSION + "') and rebuild wsrelay.")

log = logging.getLogger("wsrelay.handover")
# A LoggerAdapter stops picows from creating one child Logger per connection.
_picows_log = logging.LoggerAdapter(logging.getLogger("wsrelay.picows"), {})


class SocketOnce:
    """The transport as picows' ``connection_made`` sees it: one socket object for its six
    socket options instead of six.

    picows' ``connection_made`` asks the transport for its socket and sets or reads six
    options on it (``TCP_NODELAY``, ``TCP_QUICKACK`` and four for an INFO line). uvloop's
    ``get_extra_info('socket')`` is a pseudo-socket that builds and detaches a
    ``socket.socket`` for each of those calls, and CPython checks each new one's descriptor
    with a ``getsockname``: 10 system calls and about 70,000 instructions a session. This
    wrapper hands picows one real ``socket.socket`` on the same descriptor, detached again
    by ``release()`` right after ``connection_made`` (it never owns, and so never closes,
    the descriptor). Everything else is the wrapped transport's: WSTransport binds
    ``write`` and ``get_write_buffer_size`` from it, so frames never pass through here.
    The compiled pump puts the wrapped transport back in ``underlying_transport`` when its
    side connects (``csrc/wsrelay/pump/side.pxi``); the pure pump keeps the wrapper.
    """

    __slots__ = ("wrapped", "_socket")

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self._socket: socket.socket | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket" and self._socket is not None:
            return self._socket
        return self.wrapped.get_extra_info(name, default)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def lend(self) -> "SocketOnce":
        """Make the one socket object picows will be given (None on a transport without one)."""
        pseudo = self.wrapped.get_extra_info("socket")
        if pseudo is not None:
            self._socket = socket.socket(pseudo.family, pseudo.type, pseudo.proto, pseudo.fileno())
        return self

    def release(self) -> None:
        """Give the descriptor back: the socket object is detached, never closed."""
        if self._socket is not None:
            self._socket.detach()
            self._socket = None


class RelayWSProtocol(WSProtocol):
    """picows' ``WSProtocol``, whose ``connection_made`` sees the transport through
    ``SocketOnce``. Nothing else differs (no slots of its own, so no per-connection dict)."""

    __slots__ = ()

    def connection_made(self, transport: Any) -> None:
        shim = SocketOnce(transport).lend()
        try:
            super().connection_made(shim)
        finally:
            shim.release()


class _Client101(WSUpgradeResponse):
    """The client's ``101``, written from a template.

    picows' own (``create_101_response``) is a case-insensitive multidict rendered header by
    header in Python for every session; this one holds a plain dict (picows only adds
    ``Sec-WebSocket-Accept`` to it) and renders the same bytes, in the same order, at once.
    ``silent``: the gate wrote the client's ``101`` already (provider endpoints, edge/hold.py);
    picows still goes through its server handshake (that is how its protocol starts), and
    nothing reaches the wire.
    """

    __slots__ = ("subprotocol", "silent")

    def __init__(self, subprotocol: str | None, silent: bool = False) -> None:
        self.version = b"HTTP/1.1"
        self.status = HTTPStatus.SWITCHING_PROTOCOLS
        self.headers = {}   # type: ignore[assignment]  # picows only sets Sec-WebSocket-Accept in it
        self.body = None
        self.subprotocol = subprotocol
        self.silent = silent

    def to_bytes(self) -> bytearray:
        if self.silent:
            return bytearray()
        head = bytearray(b"HTTP/1.1 101 Switching Protocols\r\n")
        if self.subprotocol:
            head += b"Sec-WebSocket-Protocol: %b\r\n" % self.subprotocol.encode()
        head += b"Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: %b\r\n\r\n" % (
            self.headers["Sec-WebSocket-Accept"].encode())
        return head


def bot_protocol(listener_factory: Any, *, host_port: str, resource: str,
                 keepalive: tuple[float, float], max_frame_size: int, extra_headers: Any,
                 read_buffer_size: int) -> WSProtocol:
    """picows' client-side ``WSProtocol`` for one bot connection, as ``ws_connect`` builds it.

    The upstream connector (upstream.py) opens the TCP connection itself with this protocol
    instead of calling ``ws_connect``: the URL is parsed once per upstream, not once per
    session, and the connector holds the protocol from the first byte, so a connect that
    is given up mid-handshake can close its socket (``ws_connect`` would leave it open
    until the bot's own timeout). ``host_port`` is the ``Host`` header, ``resource`` the
    request target (path and query). picows' own handshake timer is off: the connector
    bounds the connect and the handshake together with one timeout.
    """
    interval, reply_timeout = keepalive
    return RelayWSProtocol(
        host_port, resource, True,                           # the client side
        listener_factory, _picows_log,
        True,                                                # disconnect_on_exception
        None,                                                # no handshake timer: the connector's bounds it
        interval > 0, interval or 20, reply_timeout,         # the relay's own keepalive pings
        WSAutoPingStrategy.PING_WHEN_IDLE,
        False,                                               # auto-pong off: pings are relayed
        max_frame_size,
        extra_headers,
        read_buffer_size,
    )


def hand_over(transport, client_side, *, stream_class: Any, subprotocol: str | None, key: str,
              early: bytes | bytearray, limits: RelayConfig, silent_101: bool = False) -> bool:
    """Give ``transport`` to picows with ``client_side`` (the pump's listener) and answer ``101``.

    ``early`` are the bytes the client sent after its head (frames it did not wait to send);
    they are fed after the head, through the ``ClientStream``. With ``silent_101`` the client
    already has its ``101`` (the gate wrote it) and picows' is not written. Returns False when picows
    did not take the connection (the client is gone, or, which cannot happen for a head
    the relay built, picows refused it: the socket is then dropped, never left half-open).
    """
    response = _Client101(subprotocol, silent=silent_101)
    protocol = RelayWSProtocol(
        None, None, False,                                   # host, path, not the client side
        lambda request: WSUpgradeResponseWithListener(response, client_side),
        _picows_log,
        True,                                                # disconnect_on_exception
        None,                                                # no handshake timeout: the head is complete
        limits.keepalive_interval > 0,                       # the relay's own keepalive pings
        limits.keepalive_interval or 20, limits.keepalive_timeout,
        WSAutoPingStrategy.PING_WHEN_IDLE,
        False,                                               # auto-pong off: pings are relayed
        limits.max_frame_size,
        None,                                                # no extra headers
        limits.read_buffer_size,
    )
    stream = stream_class(protocol)                          # stops at the client's close frame
    transport.set_protocol(stream)
    protocol.connection_made(transport)
    _feed(transport, protocol, canonical_upgrade_head(key))  # HTTP: straight to picows
    if protocol.listener is not client_side:
        log.error("picows refused the relay's canonical upgrade head; dropping the client")
        transport.abort()
        return False
    _feed(transport, stream, early)                          # frames: through the stream
    if client_side.transport is None or transport.is_closing():
        return False
    transport.resume_reading()
    return True


def _feed(transport, protocol, data) -> None:
    """Replay ``data`` into ``protocol`` as if the socket had just read it."""
    view = memoryview(data)
    pos = 0
    while pos < len(view) and not transport.is_closing():
        buffer = protocol.get_buffer(-1)
        n = min(len(buffer), len(view) - pos)
        buffer[:n] = view[pos:pos + n]
        protocol.buffer_updated(n)
        pos += n
    view.release()
