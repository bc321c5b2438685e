# The client socket's protocol in front of picows: nothing after the client's close.

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
    """Walk frame boundaries over ``n`` new bytes; return how many belong before the cut.

    The header arithmetic is ``core.frames.header_size`` and ``payload_length`` in C (the pure
    pump's ``ClientStream`` calls those; tests/test_client_stream.py drives both alike)."""
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
