"""The in-process flow store (design.md §3.6): one-time, TTL-bound, memory-bounded."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dcr_sidecar import errors
from dcr_sidecar.oauth.callback import FlowRecord
from dcr_sidecar.store.flows import BoundedFlowStore, MemoryFlowStore, record_cost
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


async def test_expired_entries_are_dropped_and_live_ones_never_evicted() -> None:
    clock = Clock()
    store = MemoryFlowStore(10, clock=clock)
    for key in "abc":
        await store.put(key, RECORD)
    assert len(store) == 3
    clock.now += 11
    await store.put("e", RECORD)  # every older entry has expired by now
    assert len(store) == 1


def bounded(clock: Clock, **limits: int) -> BoundedFlowStore:
    return BoundedFlowStore(MemoryFlowStore(600, clock=clock), ttl=600, clock=clock, **limits)


def from_address(address: str, state: str = "s") -> FlowRecord:
    return replace(RECORD, client=address, app_state=state)


async def test_a_full_store_refuses_new_flows_and_keeps_those_in_progress() -> None:
    """A flood cannot push a login in progress out: beyond the budget, put refuses (503 +
    Retry-After until the oldest record expires) and the older records stay."""
    clock = Clock()
    store = bounded(clock, max_entries=3, per_client=0)
    await store.put("state:real", from_address("127.0.0.1"))
    for key in ("state:f1", "state:f2"):
        await store.put(key, from_address("127.0.0.2"))
    clock.now += 100
    with pytest.raises(errors.TooManyFlows) as refused:
        await store.put("state:f3", from_address("127.0.0.2"))
    assert refused.value.status == 503
    assert refused.value.headers() == {"Retry-After": "500"}
    assert await store.take("state:real") == from_address("127.0.0.1")
    await store.put("state:f3", from_address("127.0.0.2"))  # taking made room


async def test_the_store_is_bounded_in_bytes_too() -> None:
    clock = Clock()
    small = record_cost("state:a", from_address("127.0.0.2"))
    store = bounded(clock, max_bytes=3 * small + 100, per_client=0)
    for key in ("state:a", "state:b", "state:c"):
        await store.put(key, from_address("127.0.0.2"))
    with pytest.raises(errors.TooManyFlows):
        await store.put("state:d", from_address("127.0.0.2", state="x" * 512))
    assert store.bytes == 3 * small
    clock.now += 600  # expired records give their bytes back
    await store.put("state:d", from_address("127.0.0.2", state="x" * 512))
    assert (len(store), store.bytes) == (1, record_cost("state:d",
                                                        from_address("127.0.0.2", "x" * 512)))


async def test_one_address_spends_only_its_own_budget() -> None:
    """429 for the address over its budget; another address still starts its flow."""
    clock = Clock()
    store = bounded(clock, per_client=2)
    for key in ("state:a", "state:b"):
        await store.put(key, from_address("127.0.0.2"))
    with pytest.raises(errors.TooManyFlowsFromClient) as refused:
        await store.put("state:c", from_address("127.0.0.2"))
    assert refused.value.status == 429
    await store.put("state:real", from_address("127.0.0.1"))
    assert await store.take("state:a") is not None
    await store.put("state:c", from_address("127.0.0.2"))  # its own flow used: room again
