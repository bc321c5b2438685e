"""Session ids: random (version 4) UUIDs, as ``str(uuid.uuid4())`` makes them, for less.

``uuid.uuid4()`` reads 16 bytes from the kernel (one ``getrandom`` system call) and builds
a ``UUID`` object for every session. Here the kernel's randomness is read 4 KiB at a time
(256 ids) and each id is formatted straight from its 16 bytes. The ids are as unguessable
as ``uuid4``'s (the same source, ``os.urandom``, and the same 122 random bits) and have the
same text form, which is what the relay sends (``X-Session-Id``) and logs.

A forked child (``--workers N``) must not hand out its parent's unused bytes: the pool is
emptied in the child at fork.
"""

from __future__ import annotations

import os

_BATCH = 256                 # ids per read from the kernel
_pool = b""
_offset = 0


def new_session_id() -> str:
    """A random UUID (version 4, RFC 4122 variant) in its 36-character text form."""
    global _pool, _offset
    if _offset >= len(_pool):
        _pool, _offset = os.urandom(16 * _BATCH), 0
    raw = _pool[_offset:_offset + 16]
    _offset += 16
    h = raw.hex()
    # As uuid.UUID(bytes=raw, version=4): the 13th hex digit becomes the version, 4; the top
    # two bits of the 17th become the variant, binary 10, and its low two bits are kept.
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[(raw[8] >> 4) & 3]}{h[17:20]}-{h[20:]}"


def _forget_pool() -> None:
    global _pool, _offset
    _pool, _offset = b"", 0


os.register_at_fork(after_in_child=_forget_pool)
