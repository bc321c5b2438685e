"""nonces.py: single-use nonces with expiry, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio

import pytest

from wsrelay.admission.nonces import MemoryNonceStore, NonceStore


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def claim(store: NonceStore, nonce: str, ttl: float = 10.0) -> bool:
    return asyncio.run(store.claim(nonce, ttl))


def claim_all(store: NonceStore, nonces, ttl: float = 10.0) -> list[bool]:
    async def run():
        return [await store.claim(n, ttl) for n in nonces]
    return asyncio.run(run())


def test_a_nonce_is_claimed_once():
    store = MemoryNonceStore(clock=FakeClock())
    assert claim(store, "n1") is True
    assert claim(store, "n1") is False
    assert claim(store, "n1") is False
    assert claim(store, "n2") is True
    assert claim(store, "N1") is True          # nonces are compared exactly
    assert len(store) == 3


def test_a_nonce_can_be_claimed_again_after_its_ttl():
    clock = FakeClock(1000.0)
    store = MemoryNonceStore(clock=clock)
    assert claim(store, "n", ttl=10) is True
    clock.now = 1009.999
    assert claim(store, "n", ttl=10) is False
    clock.now = 1010.001
    assert claim(store, "n", ttl=10) is True
    # and the new claim has its own lifetime
    clock.now = 1019.0
    assert claim(store, "n", ttl=10) is False
    clock.now = 1020.5
    assert claim(store, "n", ttl=10) is True


def test_each_nonce_keeps_its_own_ttl():
    clock = FakeClock(0.0)
    store = MemoryNonceStore(clock=clock)
    assert claim_all(store, ["long"], ttl=100) == [True]
    assert claim_all(store, ["short"], ttl=1) == [True]
    clock.now = 2.0
    assert claim(store, "short") is True
    assert claim(store, "long") is False
    clock.now = 101.0
    assert claim(store, "long") is True


def test_a_replayed_claim_does_not_extend_the_lifetime():
    clock = FakeClock(0.0)
    store = MemoryNonceStore(clock=clock)
    assert claim(store, "n", ttl=10) is True
    clock.now = 9.0
    assert claim(store, "n", ttl=1000) is False
    clock.now = 10.5
    assert claim(store, "n", ttl=10) is True


def test_expired_entries_are_forgotten_so_memory_is_bounded():
    clock = FakeClock(0.0)
    store = MemoryNonceStore(clock=clock)
    assert all(claim_all(store, [f"n{i}" for i in range(500)], ttl=5))
    assert len(store) == 500
    clock.now = 6.0
    assert claim(store, "fresh", ttl=5) is True
    assert len(store) == 1
    assert len(store._heap) == 1            # the expiry heap is pruned too, not just the dict


def test_steady_traffic_keeps_the_store_at_one_lifetime_of_nonces():
    clock = FakeClock(0.0)
    store = MemoryNonceStore(clock=clock)
    sizes = []

    async def run():
        for second in range(2000):
            clock.now = float(second)
            for j in range(3):
                assert await store.claim(f"{second}-{j}", 5.0)
            sizes.append(len(store))
    asyncio.run(run())
    assert max(sizes) <= 3 * 6
    assert len(store._heap) <= 3 * 6


def test_max_entries_refuses_claims_beyond_the_bound():
    clock = FakeClock(0.0)
    store = MemoryNonceStore(max_entries=3, clock=clock)
    assert claim_all(store, ["a", "b", "c"], ttl=10) == [True, True, True]
    assert claim(store, "d", ttl=10) is False          # full: refusing is the safe side
    assert claim(store, "a", ttl=10) is False          # still a replay
    assert len(store) == 3
    clock.now = 5.0
    assert claim(store, "e", ttl=10) is False
    clock.now = 10.5                                    # a, b and c expired
    assert claim_all(store, ["d", "e", "f", "g"], ttl=10) == [True, True, True, False]
    assert len(store) == 3


def test_max_entries_zero_refuses_everything():
    store = MemoryNonceStore(max_entries=0, clock=FakeClock())
    assert claim(store, "a") is False
    assert len(store) == 0


def test_the_default_clock_works():
    store = MemoryNonceStore()
    assert claim(store, "n", ttl=60) is True
    assert claim(store, "n", ttl=60) is False


def test_nonce_store_is_an_interface_with_a_close():
    with pytest.raises(TypeError):
        NonceStore()  # type: ignore[abstract]
    assert asyncio.run(MemoryNonceStore(clock=FakeClock()).close()) is None
