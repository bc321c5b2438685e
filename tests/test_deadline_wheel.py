"""The deadline wheel (core/deadline_wheel.py) against a plain list of deadlines, and its
loop side (edge/deadlines.py) on a real event loop: every deadline fires once, never
early, at most one resolution late; removed ones never fire; one loop timer for all."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsrelay.core.deadline_wheel import DeadlineWheel
from wsrelay.edge.deadlines import Deadlines

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)

# An operation: ("add", key, seconds), ("remove", key), or ("advance", seconds).
operations = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 30), st.floats(0, 5, allow_nan=False)),
    st.tuples(st.just("remove"), st.integers(0, 30)),
    st.tuples(st.just("advance"), st.floats(0, 2, allow_nan=False)),
), max_size=80)


@PROPERTY
@given(ops=operations, resolution=st.sampled_from([0.01, 0.05, 0.25, 1.0]), start=st.floats(0, 1e6))
def test_the_wheel_fires_what_a_list_of_deadlines_would(ops, resolution, start):
    wheel = DeadlineWheel(resolution)
    now = start
    pending: dict[int, tuple[float, int]] = {}      # key -> (deadline, tick), the model
    for op in ops + [("advance", 10.0)]:
        if op[0] == "add":
            _, key, seconds = op
            if key in pending:                       # the driver's rule: remove before re-adding
                wheel.remove(pending.pop(key)[1], key)
            pending[key] = (now + seconds, wheel.add(now, seconds, key))
        elif op[0] == "remove":
            if op[1] in pending:
                wheel.remove(pending.pop(op[1])[1], op[1])
        else:
            now += op[1]
            fired = wheel.due(now)
            assert len(fired) == len(set(fired))
            for key in fired:
                deadline, _ = pending.pop(key)       # KeyError: a removed or repeated deadline fired
                assert deadline <= now + 1e-9 * max(1.0, now), "fired early"
            late = [k for k, (deadline, _) in pending.items() if deadline + resolution < now - 1e-6 * max(1.0, now)]
            assert not late, f"{late} more than one resolution late"
        assert len(wheel) == len(pending)
        nxt = wheel.next_deadline()
        if pending:
            assert nxt is not None and nxt >= min(d for d, _ in pending.values()) - 1e-6 * max(1.0, now)
        else:
            assert nxt is None


def test_a_resolution_must_be_positive():
    with pytest.raises(ValueError, match="resolution"):
        DeadlineWheel(0)


class Owner:
    def __init__(self, loop: asyncio.AbstractEventLoop, fail: bool = False) -> None:
        self.loop = loop
        self.fired: list[tuple[str, float]] = []
        self.fail = fail

    def deadline_passed(self, name: str) -> None:
        self.fired.append((name, self.loop.time()))
        if self.fail:
            raise RuntimeError("a bug in one session")


def test_deadlines_on_a_real_loop_fire_on_time_with_one_loop_timer():
    async def main():
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(resolution=0.05)
        owners = [Owner(loop) for _ in range(200)]
        t0 = loop.time()
        handles = [deadlines.add(0.1 + (i % 10) * 0.02, owner, "idle") for i, owner in enumerate(owners)]
        for i in range(0, 200, 2):                    # half of them are cancelled
            deadlines.remove(handles[i], owners[i], "idle")
        broken = Owner(loop, fail=True)
        deadlines.add(0.12, broken, "time limit")   # its error must not stop the others
        assert len(deadlines) == 101
        await asyncio.sleep(0.6)
        assert broken.fired and len(deadlines) == 0
        for i, owner in enumerate(owners):
            if i % 2 == 0:
                assert owner.fired == []
            else:
                (name, at), = owner.fired
                due = t0 + 0.1 + (i % 10) * 0.02
                assert name == "idle" and due - 0.002 <= at <= due + 0.05 + 0.1
        deadlines.close()
    asyncio.run(main())
