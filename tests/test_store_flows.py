"""The in-process flow store (design.md §3.6): one-time, TTL-bound, memory-bounded."""

from __future__ import annotations

from dcr_sidecar.oauth.callback import FlowRecord
from dcr_sidecar.store.flows import MemoryFlowStore
from tests.support.clock import Clock

RECORD = FlowRecord("https://app/cb", "s", None, 1, upstream="acme", issuer="https://as.example")


async def test_take_is_one_time() -> None:
    store = MemoryFlowStore()
    await store.put("state:a", RECORD)
    assert await store.take("state:a") == RECORD
    assert await store.take("state:a") is None
    assert await store.take("state:unknown") is None


async def test_records_expire_after_the_ttl() -> None:
    clock = Clock()
    store = MemoryFlowStore(600, clock=clock)
    await store.put("state:a", RECORD)
    await store.put("state:b", RECORD)
    clock.now += 599.9
    assert await store.take("state:a") == RECORD
    clock.now += 0.1
    assert await store.take("state:b") is None


async def test_expired_entries_are_dropped_and_size_is_bounded() -> None:
    clock = Clock()
    store = MemoryFlowStore(10, max_entries=3, clock=clock)
    for key in "abc":
        await store.put(key, RECORD)
    await store.put("d", RECORD)  # full: the oldest gives way
    assert len(store) == 3
    assert await store.take("a") is None
    clock.now += 11
    await store.put("e", RECORD)  # every older entry has expired by now
    assert len(store) == 1
