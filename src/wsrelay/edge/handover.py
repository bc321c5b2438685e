"""The hand-over: the client's socket passes from the gate to picows. What it uses of picows
beyond the public API is listed, and checked at import, in ``picows_internals.py``.

picows' server-side listener factory is synchronous, but a session needs async work
(connecting to the bot) before the client may get its ``101``. So the gate reads the
head itself, and once the bot has answered, this module builds picows' server-side
``WSProtocol`` by hand (its constructor is not public API: 14 positional arguments,
written against the pinned picows), puts the pump's ``ClientStream`` in front of it on the
client's transport, and feeds it a *canonical* upgrade head built from the
checked request (picows never parses the client's own head, so its stricter parser can
never refuse what the relay accepted), then the client's early bytes. picows answers
``101`` with the bot's sub-protocol. ``bot_protocol`` builds the client-side protocol the
upstream connector opens the bot's connection with.
"""

from __future__ import annotations

import logging
import socket
from http import HTTPStatus
from typing import Any

from picows import WSUpgradeResponse, WSUpgradeResponseWithListener
from picows.picows import WSAutoPingStrategy
# WSProtocol is a real class of the compiled module but not public API, so picows.pyi does not declare it.
from picows.picows import WSProtocol  # type: ignore[attr-defined]

from ..config import RelayConfig
from ..core.frames import switching_protocols
from ..core.upgrade import canonical_upgrade_head
from .picows_internals import check

SWITCHING_PROTOCOLS = HTTPStatus.SWITCHING_PROTOCOLS     # an enum member read costs more on 3.11
check()          # the constructor below, and the pump's C interface, are PICOWS_VERSION's

log = logging.getLogger("wsrelay.handover")
# A LoggerAdapter stops picows from creating one child Logger per connection.
_picows_log = logging.LoggerAdapter(logging.getLogger("wsrelay.picows"), {})


class QuietSocket:
    """The connection's socket as picows' ``connection_made`` is given it: its descriptor,
    and none of the socket-option calls picows would make with it.

    picows' ``connection_made`` sets ``TCP_NODELAY`` and ``TCP_QUICKACK`` and reads four
    options for an INFO line, whose arguments it computes even when the line is off: six
    system calls a socket, and uvloop's ``get_extra_info('socket')`` pseudo-socket builds a
    ``socket.socket`` for each (CPython checks each one's descriptor with ``getsockname``).
    None of them is needed: uvloop sets ``TCP_NODELAY`` on every TCP transport itself (right
    after ``accept``, and before ``connect``: ``tests/test_handover.py`` checks both sockets);
    ``TCP_QUICKACK`` is not sticky (tcp(7)), and a new connection starts in quick-ack mode
    anyway; the INFO line is off unless ``wsrelay.picows`` logs INFO, and then picows gets
    a real socket object (``PicowsView.lend``). picows keeps ``fileno()`` (``WSTransport``
    writes to the descriptor), and nothing else of this object after ``connection_made``.
    """

    __slots__ = ("_fd",)

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def setsockopt(self, *args: Any) -> None:
        """``TCP_NODELAY`` and ``TCP_QUICKACK``: see the class."""

    def getsockopt(self, *args: Any) -> int:
        """Only for picows' INFO line, which is off whenever this object is lent."""
        return 0


class PicowsView:
    """The transport as picows' ``connection_made`` sees it: its socket is lent by ``lend``
    (a ``QuietSocket``, or one real socket object when picows' INFO line is on), and given
    back by ``release`` right after ``connection_made`` (a real one is detached, never closed:
    the descriptor is the transport's). Everything else is the wrapped transport's:
    WSTransport binds ``write`` and ``get_write_buffer_size`` from it, so frames never pass
    through here; uvloop keeps the addresses it read at ``accept`` and ``connect``, so
    ``peername`` and ``sockname`` cost nothing. The compiled pump puts the wrapped transport
    back in ``underlying_transport`` when its side connects (``csrc/wsrelay/pump/side.pxi``);
    the pure pump keeps the view.

    The transport's methods that picows and the relay call are passed on one by one, not
    through ``__getattr__``: a class with ``__getattr__`` makes every attribute read of its
    instances, its own included, go through a slower path (4 % of a session's instructions).
    """

    __slots__ = ("wrapped", "_socket", "write", "get_write_buffer_size")

    def __init__(self, wrapped: Any) -> None:
        self.wrapped = wrapped
        self._socket: QuietSocket | socket.socket | None = None
        self.write = wrapped.write                              # bound once: WSTransport keeps them
        self.get_write_buffer_size = wrapped.get_write_buffer_size

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket" and self._socket is not None:
            return self._socket
        return self.wrapped.get_extra_info(name, default)

    def writelines(self, data: Any) -> None:
        self.wrapped.writelines(data)

    def write_eof(self) -> None:
        self.wrapped.write_eof()

    def can_write_eof(self) -> bool:
        return bool(self.wrapped.can_write_eof())

    def close(self) -> None:
        self.wrapped.close()

    def abort(self) -> None:
        self.wrapped.abort()

    def is_closing(self) -> bool:
        return bool(self.wrapped.is_closing())

    def pause_reading(self) -> None:
        self.wrapped.pause_reading()

    def resume_reading(self) -> None:
        self.wrapped.resume_reading()

    def is_reading(self) -> bool:
        return bool(self.wrapped.is_reading())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.wrapped.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self.wrapped.get_write_buffer_limits()

    def set_protocol(self, protocol: Any) -> None:
        self.wrapped.set_protocol(protocol)

    def get_protocol(self) -> Any:
        return self.wrapped.get_protocol()

    def lend(self) -> "PicowsView":
        """Make the socket picows will be given (None on a transport without one)."""
        pseudo = self.wrapped.get_extra_info("socket")
        if pseudo is None:
            return self
        if _picows_log.isEnabledFor(logging.INFO):
            self._socket = socket.socket(pseudo.family, pseudo.type, pseudo.proto, pseudo.fileno())
        else:
            self._socket = QuietSocket(pseudo.fileno())
        return self

    def release(self) -> None:
        """Give the descriptor back: a real socket object is detached, never closed."""
        if isinstance(self._socket, socket.socket):
            self._socket.detach()
        self._socket = None


class RelayWSProtocol(WSProtocol):
    """picows' ``WSProtocol``, whose ``connection_made`` sees the transport through
    ``PicowsView``. Nothing else differs (no slots of its own, so no per-connection dict)."""

    __slots__ = ()

    def connection_made(self, transport: Any) -> None:
        view = PicowsView(transport).lend()
        try:
            super().connection_made(view)
        finally:
            view.release()


class _Client101(WSUpgradeResponse):
    """The client's ``101``: the relay's one (``core.frames.switching_protocols``).

    picows' own (``create_101_response``) is a case-insensitive multidict rendered header by
    header in Python for every session; this one holds a plain dict (picows only adds
    ``Sec-WebSocket-Accept`` to it) and renders the relay's ``101`` with it, the same bytes
    the gate writes on provider endpoints.
    ``silent``: the gate wrote the client's ``101`` already (provider endpoints, telephony/hold.py);
    picows still goes through its server handshake (that is how its protocol starts), and
    nothing reaches the wire.
    """

    __slots__ = ("subprotocol", "silent", "resume_token")

    def __init__(self, subprotocol: str | None, silent: bool = False, resume_token: str | None = None) -> None:
        self.version = b"HTTP/1.1"
        self.status = SWITCHING_PROTOCOLS
        self.headers = {}   # type: ignore[assignment]  # picows only sets Sec-WebSocket-Accept in it
        self.body = None
        self.subprotocol = subprotocol
        self.silent = silent
        self.resume_token = resume_token

    def to_bytes(self) -> bytearray:
        if self.silent:
            return bytearray()
        return bytearray(switching_protocols(self.headers["Sec-WebSocket-Accept"], self.subprotocol,
                                             self.resume_token))


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
              early: bytes | bytearray, limits: RelayConfig, silent_101: bool = False,
              resume_token: str | None = None) -> bool:
    """Give ``transport`` to picows with ``client_side`` (the pump's listener) and answer ``101``.

    ``early`` are the bytes the client sent after its head (frames it did not wait to send);
    they are fed after the head, through the ``ClientStream``. With ``silent_101`` the client
    already has its ``101`` (the gate wrote it) and picows' is not written; ``resume_token`` goes
    in the ``101`` as ``X-Wsrelay-Resume`` (docs/resume.md). Returns False when picows
    did not take the connection (the client is gone, or, which cannot happen for a head
    the relay built, picows refused it: the socket is then dropped, never left half-open).
    """
    response = _Client101(subprotocol, silent_101, resume_token)
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
