# cython: language_level=3
"""The compiled frame pump: picows callbacks in, the peer socket out, no Python per frame.

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

So a payload is read once into the source buffer and written once to the destination
socket; no Python object is created for it. Close frames, disconnects and flow control
happen once per session and are handled in Python by ``SessionPair``.
"""

from cpython.memoryview cimport PyMemoryView_GET_BUFFER
from libc.stdint cimport uint64_t
from libc.string cimport memcmp
from picows.picows cimport WSListener, WSTransport, WSFrame, WSMsgType

# The payload of the relay's own keepalive pings: their pongs are consumed, never relayed.
cdef bytes KEEPALIVE = b"wsrelay-keepalive"
cdef const char* KEEPALIVE_PTR = KEEPALIVE
cdef Py_ssize_t KEEPALIVE_LEN = len(KEEPALIVE)

# Process-wide counters, read at scrape time by ``totals()``: [0] client->bot, [1] bot->client.
cdef uint64_t _total_frames[2]
cdef uint64_t _total_bytes[2]
_total_frames[0] = 0
_total_frames[1] = 0
_total_bytes[0] = 0
_total_bytes[1] = 0

IMPLEMENTATION = "cython"


def totals():
    """Frames and payload bytes relayed by this process, per direction, since start."""
    return {
        "frames_up": _total_frames[0], "bytes_up": _total_bytes[0],
        "frames_down": _total_frames[1], "bytes_down": _total_bytes[1],
    }


cdef inline int _relay(Side src, WSFrame frame) except -1:
    """Send ``frame`` from ``src``'s read buffer to its peer (see the module docstring)."""
    cdef Side peer = src.peer
    cdef WSTransport dst = peer.transport
    src.frames += 1
    src.bytes += <uint64_t>frame.payload_size
    _total_frames[src._direction] += 1
    _total_bytes[src._direction] += <uint64_t>frame.payload_size
    if dst is None or peer.close_sent or peer.disconnected:
        src.dropped += 1
        return 0
    dst.send_reuse_external_buffer(frame.msg_type, frame.payload_ptr, frame.payload_size,
                                   frame.fin, frame.rsv1, frame.rsv2, frame.rsv3)
    return 0


cdef class Side(WSListener):
    """The listener of one socket of a session; see the module docstring for the data path."""

    def __init__(self, pair, bint is_bot):
        self.pair = pair
        self.transport = None
        self.peer = None
        self.is_bot = is_bot
        self.close_received = False
        self.close_sent = False
        self.disconnected = False
        self.frames = 0
        self.bytes = 0
        self.dropped = 0
        self._direction = 1 if is_bot else 0

    cpdef on_ws_connected(self, WSTransport transport):
        self.transport = transport
        # picows keeps the parsed handshake (header multidicts) on the transport for the
        # connection's whole life; the relay is done with it here. Dropping it is most of
        # an idle session's Python memory.
        self.pair.side_connected(self)
        transport.request = None
        transport.response = None
        # picows' per-transport scratch buffer (used only to frame close/ping/pong and
        # copied sends) starts at 1 KiB; shrink it to its minimum, it grows on demand.
        transport._write_buffer._reserve(0)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        if frame.msg_type == WSMsgType.CLOSE:
            self.pair.close_frame(self, frame.get_payload_as_bytes())
            return
        if transport.is_close_frame_sent and not self.close_sent:
            # picows closed this side itself (a protocol error such as 1009, or no pong to
            # a keepalive ping). picows parses one frame ahead: an error in the *next*
            # frame is found before this one is delivered. Such a frame is the last one
            # parsed from its read with the bad bytes right behind it (last_in_buffer,
            # tail_size > 0): it is valid and is relayed. Any other frame may be the bad
            # one itself (an oversized frame is still delivered after its 1009) and is
            # dropped. Handling the error closes the peer, so nothing later is relayed.
            if frame.last_in_buffer and frame.tail_size > 0:
                _relay(self, frame)
            else:
                self.dropped += 1
            self.pair.protocol_error(self)
            return
        _relay(self, frame)

    cpdef on_ws_disconnected(self, WSTransport transport):
        self.disconnected = True
        self.pair.side_disconnected(self)

    cpdef send_user_specific_ping(self, WSTransport transport):
        # picows' keepalive (relay.keepalive_interval) pings with our own payload ...
        transport.send_ping(KEEPALIVE)

    cpdef is_user_specific_pong(self, WSFrame frame):
        # ... and asks here, only while it waits for a pong, whether a frame is ours.
        return (frame.msg_type == WSMsgType.PONG and frame.payload_size == KEEPALIVE_LEN
                and memcmp(frame.payload_ptr, KEEPALIVE_PTR, KEEPALIVE_LEN) == 0)

    cpdef pause_writing(self):
        # This side's socket cannot take more: stop reading the peer (backpressure).
        self.pair.pause_source_of(self)

    cpdef resume_writing(self):
        self.pair.resume_source_of(self)


cdef class ClientStream:
    """The client socket's protocol: hands picows every byte up to the client's close frame.

    picows parses one frame ahead and fails the connection (close 1002) on a second close
    frame *before* it delivers the first, so a client that sends two closes in one write
    (Autobahn case 7.1.2) would get picows' 1002 instead of its bot's reply. RFC 6455
    §5.5.1: nothing a side sends after its close counts. So this protocol tracks frame
    boundaries in the client's byte stream (headers only, a few C operations per frame)
    and passes picows the bytes up to the end of the first close frame; later bytes are
    read and dropped (reading them, rather than leaving them unread, keeps the final
    close a FIN instead of a reset).

    Buffers: ``get_buffer`` returns picows' own read buffer (or, after the close, a
    scratch buffer of ours); the bytes written there are scanned in ``buffer_updated``
    before picows is told of them, and are picows' again from then on.
    """

    cdef object _protocol               # picows' WSProtocol on the client's socket
    cdef object _get_buffer             # its bound methods, looked up once
    cdef object _buffer_updated
    cdef object _view                   # the memoryview last handed out by get_buffer
    cdef unsigned char _head[14]        # a frame header split across reads
    cdef int _head_len
    cdef uint64_t _skip                 # payload bytes of the current frame still to come
    cdef bint _in_close                 # the current frame is a close frame
    cdef bint _closed                   # the close frame was passed on: drop the rest
    cdef bytearray _scratch

    def __init__(self, protocol):
        self._protocol = protocol
        self._get_buffer = protocol.get_buffer
        self._buffer_updated = protocol.buffer_updated
        self._view = None
        self._head_len = 0
        self._skip = 0
        self._in_close = False
        self._closed = False
        self._scratch = None

    @property
    def protocol(self):
        return self._protocol

    def get_buffer(self, Py_ssize_t size_hint):
        if self._closed:
            if self._scratch is None:
                self._scratch = bytearray(4096)
            return memoryview(self._scratch)
        self._view = self._get_buffer(size_hint)
        return self._view

    def buffer_updated(self, Py_ssize_t nbytes):
        if self._closed:
            return
        cdef Py_buffer* view = PyMemoryView_GET_BUFFER(self._view)
        cdef Py_ssize_t keep = _scan(self, <const unsigned char*>view.buf, nbytes)
        self._view = None
        self._buffer_updated(keep)

    def eof_received(self):
        return self._protocol.eof_received()

    def connection_lost(self, exc):
        self._protocol.connection_lost(exc)

    def pause_writing(self):
        self._protocol.pause_writing()

    def resume_writing(self):
        self._protocol.resume_writing()

    def data_received(self, data):          # only if a transport ignores get_buffer
        cdef Py_ssize_t n = len(data)
        cdef Py_ssize_t pos = 0, take
        while pos < n and not self._closed:
            buf = self.get_buffer(n - pos)
            take = min(len(buf), n - pos)
            buf[:take] = data[pos:pos + take]
            self.buffer_updated(take)
            pos += take


cdef Py_ssize_t _scan(ClientStream s, const unsigned char* p, Py_ssize_t n) except -1:
    """Walk frame boundaries over ``n`` new bytes; return how many belong before the cut."""
    cdef Py_ssize_t pos = 0, need, take
    cdef int i
    cdef uint64_t length
    cdef unsigned char flag
    while pos < n:
        if s._skip:
            take = <Py_ssize_t>s._skip if s._skip < <uint64_t>(n - pos) else n - pos
            pos += take
            s._skip -= take
            if s._skip == 0 and s._in_close:
                s._closed = True
                return pos
            continue
        s._head[s._head_len] = p[pos]
        s._head_len += 1
        pos += 1
        if s._head_len < 2:
            continue
        flag = s._head[1] & 0x7F
        need = 2 + (2 if flag == 126 else 8 if flag == 127 else 0) + (4 if s._head[1] & 0x80 else 0)
        if s._head_len < need:
            continue
        if flag == 126:
            length = (<uint64_t>s._head[2] << 8) | s._head[3]
        elif flag == 127:
            length = 0
            for i in range(2, 10):
                length = (length << 8) | s._head[i]
        else:
            length = flag
        s._in_close = (s._head[0] & 0x0F) == 0x8
        s._head_len = 0
        s._skip = length
        if length == 0 and s._in_close:
            s._closed = True
            return pos
    return pos
