# cython: language_level=3
"""The compiled frame pump: picows callbacks in, the peer socket out, no Python per frame.

Split by concern (as uvloop splits its loop): ``side.pxi`` is the listener of one socket
and the per-frame path; ``client_stream.pxi`` is the client socket's protocol that stops
at the client's close frame; this file holds what both share (the counters, imports).
The pure-Python twin is ``wsrelay/pump/pure.py``; the tests run everything against both.

Ownership and lifetime of a payload: ``frame.payload_ptr`` points into the *source*
side's picows read buffer and is valid only inside ``on_ws_frame``. We hand it to
``send_reuse_external_buffer`` on the destination transport, which

* writes the outgoing frame header into the bytes just before the payload (they held
  the incoming header of this very frame, already parsed; picows only accepts the
  minimal length encoding, so the outgoing header is exactly as long as the incoming
  one: 2/4/10 bytes + 4 for the mask towards the bot, same as the client's masked frame),
* masks the payload in place when the destination is the bot (we are its client),
* and ``send()``s header+payload in one syscall; only what the kernel does not take is
  copied (into the transport's own buffer) before ``on_ws_frame`` returns.

Coalescing: when one read brings several frames, each is re-framed in place the same way
but not sent; they lie back to back in the source buffer, so the last frame of the read
(picows flags it ``last_in_buffer``) sends them all with one ``send()``. The span is sent
before anything else reaches the destination (a close, a dropped frame) and never
outlives the read: picows compacts its buffer only after the last frame's callback.

So a payload is read once into the source buffer and written once to the destination
socket; no Python object is created for it. Close frames, disconnects and flow control
happen once per session and are handled in Python by ``SessionPair``.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.memoryview cimport PyMemoryView_GET_BUFFER
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC
from picows.picows cimport WSListener, WSTransport, WSFrame, WSMsgType

# The payload of the relay's own keepalive pings: their pongs are consumed, never relayed.
cdef bytes KEEPALIVE = b"wsrelay-keepalive"
cdef const char* KEEPALIVE_PTR = KEEPALIVE
cdef Py_ssize_t KEEPALIVE_LEN = len(KEEPALIVE)

# Process-wide counters, read at scrape time by ``totals()``: [0] client->bot, [1] bot->client.
cdef uint64_t _total_frames[2]
cdef uint64_t _total_bytes[2]
cdef uint64_t _total_sends[2]        # writes to the destination socket: frames / sends = coalescing
_total_frames[0] = 0
_total_frames[1] = 0
_total_bytes[0] = 0
_total_bytes[1] = 0
_total_sends[0] = 0
_total_sends[1] = 0

IMPLEMENTATION = "cython"
# A gap between two data frames longer than this is counted (Session sets it from the config).
DEFAULT_GAP_THRESHOLD_NS = 100_000_000


def _retrieve_exception(future):
    """Fetch (and drop) the error picows keeps for a bot connection it closed itself (see
    ``Side.on_ws_disconnected``); the session has logged the outcome already."""
    if not future.cancelled():
        future.exception()


def totals():
    """Frames and payload bytes relayed by this process, per direction, since start."""
    return {
        "frames_up": _total_frames[0], "bytes_up": _total_bytes[0], "sends_up": _total_sends[0],
        "frames_down": _total_frames[1], "bytes_down": _total_bytes[1], "sends_down": _total_sends[1],
    }



include "side.pxi"
include "client_stream.pxi"
