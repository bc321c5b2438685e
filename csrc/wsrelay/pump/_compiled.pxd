# The C-level interface of the frame pump: what other Cython code may cimport.
#
# One ``Side`` is the WSListener of one socket of a relayed session (the client's
# or the bot's). Frames read on a side go straight to its peer's socket from the
# read buffer they arrived in; rare events (close frames, disconnects, flow
# control) go to the ``Session`` (src/wsrelay/edge/session.py), which drives the
# sans-I/O session machine, shared with the pure-Python twin (wsrelay/pump/pure.py).

from libc.stdint cimport int64_t, uint64_t
from picows.picows cimport WSListener, WSTransport, WSFrame


cdef class Side(WSListener):
    cdef:
        public object session           # edge.session.Session: receives the rare events
        public WSTransport transport     # this side's socket, set on_ws_connected
        public Side peer                 # the other side of the session
        public bint is_bot               # True for the bot's socket
        public bint close_sent           # a close was sent to it: relay nothing more to it
        public bint disconnected         # this side's socket is gone
        # (both written by the Session as its machine decides; read here per frame)
        readonly uint64_t frames         # data/control frames read from this side
        readonly uint64_t bytes          # their payload bytes
        readonly uint64_t dropped        # frames read after the peer was closed
        int _direction                   # index into the process-wide totals
        # Arrival timing of the data frames read from this side (one clock read per frame,
        # CLOCK_MONOTONIC nanoseconds, the clock of Python's time.monotonic_ns()):
        readonly int64_t first_frame_ns  # arrival of the first one; 0 = none yet
        readonly int64_t max_gap_ns      # the longest time between two consecutive ones
        readonly uint64_t gaps           # how many of those times exceeded gap_threshold_ns
        public int64_t gap_threshold_ns  # set by the Session from [relay] gap_threshold_ms
        int64_t _last_frame_ns           # arrival of the latest one
        int64_t _last_interval_ns        # the previous inter-arrival time; -1 until there is one
        int64_t _jitter16                # RFC 3550 A.8 jitter estimate, scaled by 16 (ns)
        # Frames of the current read already re-framed in place in this side's read buffer
        # for the peer, not yet sent (coalescing, see side.pxi's _relay): [start, end).
        # Non-NULL only inside one read's on_ws_frame calls; picows' buffer, valid until then.
        char* _pending_start
        char* _pending_end


cdef class ResumableSide(Side):
    # The bot's side of a session with resume on (docs/resume.md): its core/replay.py
    # ReplayBuffer, given a bytes copy of each data frame the bot sends. A subclass, so the
    # per-frame path of every other session is the same code as before resume existed.
    cdef public object replay
