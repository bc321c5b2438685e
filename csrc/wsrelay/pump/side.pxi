# The listener of one socket of a session, and the per-frame path (see _compiled.pyx).

cdef inline void _trim_picows_buffers(WSTransport transport):
    """Free what picows keeps per connection but the relay no longer needs.

    C-level attributes beyond picows' public API (listed, with the rest of what the pump
    uses so, in edge/picows_internals.py, which checks them at import): the parsed
    handshake (header multidicts) that picows keeps for the connection's whole life, most
    of an idle session's Python memory, and the per-transport scratch buffer (used only
    to frame close/ping/pong and copied sends), shrunk to its minimum; it grows on demand.
    """
    transport.request = None
    transport.response = None
    transport._write_buffer._reserve(0)


cdef inline int64_t _now_ns() noexcept nogil:
    """CLOCK_MONOTONIC in nanoseconds: the clock of time.monotonic_ns() (a vDSO call, no syscall)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void _time_arrival(Side src, int64_t now) noexcept:
    """Account one data frame's arrival at ``now`` on ``src``: first arrival, longest gap,
    gaps over the threshold, and the RFC 3550 §A.8 interarrival jitter in its integer form
    (J += |D| - J/16, kept scaled by 16). RTP's D compares arrival spacing with the
    sender's timestamp spacing; a WebSocket frame carries no timestamp, so the previous
    inter-arrival time stands in for it: D is the change between two consecutive
    inter-arrival times, 0 for a steady stream whatever its rate. pump/pure.py computes
    the same integers (tests/test_frame_timing.py compares them)."""
    cdef int64_t interval, d
    if src._last_frame_ns == 0:
        src.first_frame_ns = now
    else:
        interval = now - src._last_frame_ns
        if interval > src.max_gap_ns:
            src.max_gap_ns = interval
        if interval > src.gap_threshold_ns:
            src.gaps += 1
        if src._last_interval_ns >= 0:
            d = interval - src._last_interval_ns
            if d < 0:
                d = -d
            src._jitter16 += d - ((src._jitter16 + 8) >> 4)
        src._last_interval_ns = interval
    src._last_frame_ns = now


cdef inline int _relay(Side src, WSFrame frame) except -1:
    """Send ``frame`` from ``src``'s read buffer to its peer (see the module docstring).

    A frame alone in its read goes out at once (``send_reuse_external_buffer``); frames
    that share a read are re-framed in place and sent together by the read's last one.
    """
    cdef Side peer = src.peer
    cdef WSTransport dst = peer.transport
    cdef Py_ssize_t size = frame.payload_size, header_size
    cdef char* header_ptr
    cdef uint32_t mask
    if frame.msg_type <= WSMsgType.BINARY:       # continuation, text, binary: the stream itself
        _time_arrival(src, _now_ns())
    src.frames += 1
    src.bytes += <uint64_t>size
    _total_frames[src._direction] += 1
    _total_bytes[src._direction] += <uint64_t>size
    if dst is None or peer.close_sent or peer.disconnected:
        src.dropped += 1
        _flush(src)
        return 0
    if frame.last_in_buffer and src._pending_start == NULL:
        _total_sends[src._direction] += 1
        dst.send_reuse_external_buffer(frame.msg_type, frame.payload_ptr, size,
                                       frame.fin, frame.rsv1, frame.rsv2, frame.rsv3)
        return 0
    if dst.is_close_frame_sent or dst.is_disconnected:
        _flush(src)                              # picows sends nothing more to it: neither do we
        return 0
    # What send_reuse_external_buffer does, without the send: the outgoing header over the
    # bytes before the payload (the incoming header's), the payload masked towards the bot.
    header_size = dst._get_header_size(size)
    header_ptr = frame.payload_ptr - header_size
    if src._pending_start != NULL and header_ptr != src._pending_end:
        _flush(src)                              # not back to back (a longer incoming header)
    mask = dst._prepare_header(<uint8_t*>header_ptr, frame.msg_type, size,
                               frame.fin, frame.rsv1, frame.rsv2, frame.rsv3)
    if mask != 0:
        _mask(<uint8_t*>frame.payload_ptr, size, mask)
    if src._pending_start == NULL:
        src._pending_start = header_ptr
    src._pending_end = frame.payload_ptr + size
    if frame.last_in_buffer:
        _flush(src)
    return 0


cdef inline int _flush(Side src) except -1:
    """Send the frames ``src`` has re-framed for its peer in this read, in one write."""
    cdef char* start = src._pending_start
    cdef char* end = src._pending_end
    if start == NULL:
        return 0
    src._pending_start = src._pending_end = NULL
    cdef WSTransport dst = src.peer.transport if src.peer is not None else None
    if dst is None or dst.is_close_frame_sent or dst.is_disconnected:
        return 0
    _total_sends[src._direction] += 1
    dst._fast_write(start, end - start)
    return 0


cdef inline void _mask(uint8_t* p, Py_ssize_t n, uint32_t mask) noexcept nogil:
    """XOR ``n`` bytes at ``p`` with the 4-byte ``mask`` as picows stored it in the header
    (RFC 6455 §5.3): eight bytes a step, then the tail."""
    cdef uint64_t wide = (<uint64_t>mask << 32) | mask, word
    cdef const uint8_t* key = <const uint8_t*>&mask
    cdef Py_ssize_t i = 0
    while i + 8 <= n:
        memcpy(&word, p + i, 8)
        word ^= wide
        memcpy(p + i, &word, 8)
        i += 8
    while i < n:
        p[i] ^= key[i & 3]
        i += 1


cdef class Side(WSListener):
    """The listener of one socket of a session; see the module docstring for the data path."""

    def __init__(self, session, bint is_bot):
        self.session = session
        self.transport = None
        self.peer = None
        self.is_bot = is_bot
        self.close_sent = False
        self.disconnected = False
        self.frames = 0
        self.bytes = 0
        self.dropped = 0
        self._direction = 1 if is_bot else 0
        self.first_frame_ns = 0
        self.max_gap_ns = 0
        self.gaps = 0
        self.gap_threshold_ns = DEFAULT_GAP_THRESHOLD_NS
        self._last_frame_ns = 0
        self._last_interval_ns = -1
        self._jitter16 = 0
        self._pending_start = self._pending_end = NULL

    @property
    def jitter_ns(self):
        """The interarrival jitter estimate in nanoseconds (RFC 3550 §A.8: J = J16 / 16)."""
        return self._jitter16 >> 4

    def observe_arrivals(self, times_ns):
        """Account data-frame arrivals at the given monotonic times, exactly as the per-frame
        path does: for replaying recorded arrivals, and for the tests that compare both pumps."""
        cdef int64_t t
        for t in times_ns:
            _time_arrival(self, t)

    cpdef on_ws_connected(self, WSTransport transport):
        # picows' connection_made saw the transport through edge/handover.py's PicowsView;
        # from here on picows and the session reach the transport itself, with no wrapper.
        wrapped = getattr(transport.underlying_transport, "wrapped", None)
        if wrapped is not None:
            transport.underlying_transport = wrapped
        self.transport = transport
        self.session.side_connected(self)
        _trim_picows_buffers(transport)

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        if frame.msg_type == WSMsgType.CLOSE:
            _flush(self)                         # the frames before it reach the peer first
            self.session.close_frame(self, frame.get_payload_as_bytes())
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
                _flush(self)
            self.session.protocol_error(self)
            return
        _relay(self, frame)

    cpdef on_ws_disconnected(self, WSTransport transport):
        _flush(self)
        self.disconnected = True
        if self.is_bot:
            # After a protocol error on its client side (our bot side) picows sets the error on
            # this future, once we return. Nobody awaits it, so asyncio would print "Future
            # exception was never retrieved" outside the structured log: it is fetched when set.
            # A callback on picows' own future, not a task per ended session.
            transport.disconnected_future.add_done_callback(_retrieve_exception)
        self.session.side_disconnected(self)

    cpdef send_user_specific_ping(self, WSTransport transport):
        # picows' keepalive (relay.keepalive_interval) pings with our own payload ...
        transport.send_ping(KEEPALIVE)

    cpdef is_user_specific_pong(self, WSFrame frame):
        # ... and asks here, only while it waits for a pong, whether a frame is ours. Ours is
        # consumed by picows, never delivered: frames coalesced before it go out now.
        if (frame.msg_type == WSMsgType.PONG and frame.payload_size == KEEPALIVE_LEN
                and memcmp(frame.payload_ptr, KEEPALIVE_PTR, KEEPALIVE_LEN) == 0):
            _flush(self)
            return True
        return False

    cpdef pause_writing(self):
        # This side's socket cannot take more: stop reading the peer (backpressure).
        self.session.pause_source_of(self)

    cpdef resume_writing(self):
        self.session.resume_source_of(self)


cdef class ResumableSide(Side):
    """The bot's ``Side`` of a session with resume on (docs/resume.md): before a data frame takes
    ``Side``'s path (re-framed in place and sent, or dropped while the client is away), the
    session's resume buffer gets a ``bytes`` copy of it (the payload is picows' read buffer,
    valid only in this call; the copy is the buffer's until evicted). Frames dropped while the
    client is away are counted ``dropped`` by ``Side``; the buffer counts those it kept."""

    def __init__(self, session, bint is_bot):
        Side.__init__(self, session, is_bot)
        self.replay = None

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        cdef bytes payload
        if frame.msg_type <= WSMsgType.BINARY and self.replay is not None:
            payload = PyBytes_FromStringAndSize(frame.payload_ptr, frame.payload_size)
            if not self.replay.keep(<int>frame.msg_type, frame.fin, payload):
                self.session.resume_buffer_full(self)
        Side.on_ws_frame(self, transport, frame)
