"""What the kernel knows of a peer the relay has stopped reading for: is it gone, is it reading.

A session whose destination cannot take more pauses reading its source (backpressure). The
session machine then needs two facts asyncio does not give while reading is paused, asked
once every ``watch_seconds`` per paused session (edge/session.py ``deadline_passed``):

* ``closed_by_peer``: the paused source has shut its socket down or reset it, so reading it
  again shows its close or EOF;
* ``progress``: what the destination's TCP has acknowledged, and whether it reads nothing
  while alive: its receive window closed (it advertises no room) while it answers every
  window probe. A peer whose network drops packets leaves probes unanswered, and is left to
  ``stall_timeout``; a live peer whose application reads nothing is what makes a close
  queued behind its peer's data invisible, and is ended after ``close_timeout``.

Both are one system call on a socket, never per frame.
"""

from __future__ import annotations

import select
import socket
import struct

from ..core.session_machine import Progress

# poll() flags meaning "the peer has closed or reset this socket"; POLLRDHUP is Linux's.
_GONE = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR

# Linux's struct tcp_info (include/uapi/linux/tcp.h), the fields read here: tcpi_probes
# (window probes sent and not answered) at byte 3, tcpi_bytes_acked at 120, tcpi_snd_wnd
# (the window the peer advertises) at 228. A kernel older than 6.2 returns fewer bytes
# (no tcpi_snd_wnd): then nothing is known, and only ``stall_timeout`` applies.
_TCP_INFO_LENGTH = 232
_PROBES_AT = 3
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_AT = 120
_SND_WND = struct.Struct("=I")
_SND_WND_AT = 228


def closed_by_peer(transport) -> bool:
    """True when the peer of ``transport``'s socket has shut it down or reset it.

    Asked only of a socket whose reading is paused (so asyncio would not notice): one
    ``poll`` with a zero timeout.
    """
    if transport is None:
        return True
    sock = _socket_of(transport)
    if sock is None:
        return False
    poller = select.poll()
    poller.register(sock.fileno(), _GONE)
    return any(events & _GONE for _, events in poller.poll(0))


def progress(transport) -> Progress | None:
    """The bytes ``transport``'s peer has acknowledged, and whether it reads nothing while
    alive; None when unknown (no socket, not TCP, or a kernel without ``tcpi_snd_wnd``)."""
    sock = _socket_of(transport)
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LENGTH)
    except OSError:
        return None
    if len(info) < _TCP_INFO_LENGTH:
        return None
    acked = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0]
    window = _SND_WND.unpack_from(info, _SND_WND_AT)[0]
    return acked, window == 0 and info[_PROBES_AT] == 0


def _socket_of(transport):
    """The socket under ``transport``'s picows transport (None: no transport, or no socket)."""
    return None if transport is None else transport.underlying_transport.get_extra_info("socket")
