"""The resume buffer, sans-I/O: the bot's latest messages, counted, for a replay (docs/resume.md).

A session with resume on keeps the last ``limit`` bytes of what its bot sent to the client,
*even while the client is attached*: a client that comes back says how many messages it
received (``received``), and what the relay wrote into a socket that then died may never
have reached it. The relay replays from message ``received + 1``.

Messages, not frames, are counted, as a client counts them (a browser's ``onmessage``): a
text or binary frame starts message ``count + 1``, continuation frames belong to it, and
pings and pongs are never kept. Each frame is kept with its message's number; a frame costs
its payload and ``FRAME_OVERHEAD`` bytes (the entry itself), so a flood of tiny messages is
bounded too. When the limit is passed, the oldest frames go: while the client is attached
they had been sent; while it is detached, a frame that would have to go before the client
ever got it means the buffer is full (``keep`` returns False, and the session ends).

Who owns a payload: ``keep`` is handed a ``bytes`` copy made by the pump (picows' read
buffer is reused after ``on_ws_frame``); the buffer holds it until it is evicted or the
session ends. Only sessions with resume on have a buffer: their bot's side is the pump's
``ResumableSide``, so every other session's per-frame path is unchanged.
"""

from __future__ import annotations

from collections import deque

CONTINUATION = 0
FRAME_OVERHEAD = 64              # what one kept frame costs beyond its payload (its entry)


class ReplayConflict(Exception):
    """A ``received`` the buffer cannot replay from (409): the reason is a sentence for the client."""


Frame = tuple[int, int, bool, bytes]     # (message number, opcode, fin, payload)


class ReplayBuffer:
    """The bot's latest messages to the client, numbered from 1."""

    __slots__ = ("limit", "count", "kept_away", "_frames", "_bytes", "_reach", "_sent", "_detached")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0                   # messages the bot has begun (the last one may be incomplete)
        self.kept_away = 0               # frames kept while the client was away (the pump dropped them)
        self._frames: deque[Frame] = deque()
        self._bytes = 0
        self._reach = 1                  # the oldest message whose every frame is still kept
        self._sent = 0                   # complete messages written to the client before it detached
        self._detached = False

    @property
    def size(self) -> int:
        """Bytes charged against ``limit``."""
        return self._bytes

    @property
    def reach(self) -> int:
        """The oldest message a replay can start from."""
        return self._reach

    def keep(self, opcode: int, fin: bool, payload: bytes) -> bool:
        """Keep one data frame the bot sent. False: the client is detached and what it has not
        got no longer fits (the session ends; the buffer is left as it is)."""
        if opcode != CONTINUATION:
            self.count += 1
        if self._detached:
            self.kept_away += 1
        frames = self._frames
        frames.append((self.count, opcode, fin, payload))
        self._bytes += len(payload) + FRAME_OVERHEAD
        while self._bytes > self.limit:
            number, _, _, oldest = frames[0]
            if self._detached and number > self._sent:
                return False
            frames.popleft()
            self._bytes -= len(oldest) + FRAME_OVERHEAD
            self._reach = number + 1
        return True

    def complete(self) -> int:
        """Messages the bot has sent whole."""
        last = self._frames[-1] if self._frames else None
        return self.count - 1 if last is not None and not last[2] else self.count

    def detach(self) -> None:
        """The client is gone: what was kept until now had been written to it."""
        self._detached = True
        self._sent = self.complete()

    def since(self, received: int | None) -> list[Frame]:
        """The frames of messages ``received + 1`` onwards (None: those the client never got
        written: since its detach, or none while it is attached), to write to the client that
        came back; ReplayConflict
        when ``received`` is more than was sent, or older than the buffer reaches."""
        sent = self._sent if self._detached else self.complete()
        if received is None:
            received = sent
        if received > sent:
            raise ReplayConflict(f"received={received} is more than the {sent} messages the bot has sent")
        if received + 1 < self._reach and received < self.count:
            raise ReplayConflict(f"received={received} is older than the resume buffer reaches "
                                 f"(it starts at message {self._reach})")
        return [f for f in self._frames if f[0] > received]

    def attach(self) -> None:
        """The client is back (the replay written): frames go to it as they come."""
        self._detached = False
