"""Session ids (core/session_ids.py): the text of a version-4 UUID, as uuid.uuid4() gives,
from batched kernel randomness; a forked child draws its own."""

from __future__ import annotations

import os
import uuid

from hypothesis import given, strategies as st

from wsrelay.core import session_ids
from wsrelay.core.session_ids import new_session_id


def test_ids_are_version_4_uuids_in_their_text_form():
    for _ in range(1000):
        text = new_session_id()
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_ids_do_not_repeat_across_batches():
    ids = [new_session_id() for _ in range(3 * session_ids._BATCH + 7)]
    assert len(set(ids)) == len(ids)


@given(st.binary(min_size=16, max_size=16))
def test_the_formatting_is_uuid_s_own(raw):
    """The same 16 bytes give what uuid.UUID(bytes=..., version=4) gives."""
    session_ids._pool, session_ids._offset = raw, 0
    assert new_session_id() == str(uuid.UUID(bytes=raw, version=4))


def test_a_forked_child_does_not_reuse_the_parents_bytes():
    new_session_id()                                   # the parent has a pool with bytes left
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                       # the child: send its next id, exit at once
        os.write(write, new_session_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != new_session_id()
    assert uuid.UUID(child).version == 4
