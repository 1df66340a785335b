"""The flow store (design.md §3.6) in process memory: aiocache's SimpleMemoryCache behind
the budget — one-time, TTL-bound, memory-bounded. (On Redis: tests/test_store_redis.py.)"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from dataclasses import replace

import pytest
from aiocache import SimpleMemoryCache

from dcr_sidecar import errors
from dcr_sidecar.oauth.callback import FlowRecord
from dcr_sidecar.store.flows import BoundedFlowStore, FlowCache, record_cost
from tests.support.clock import Clock
from tests.support.waiting import until

RECORD = FlowRecord("https://app/cb", "s", None, 1, upstream="acme", issuer="https://as.example")


async def test_take_is_one_time() -> None:
    store = FlowCache.in_memory()
    await store.put("state:a", RECORD)
    assert await store.take("state:a") == RECORD
    assert await store.take("state:a") is None
    assert await store.take("state:unknown") is None


@pytest.mark.parametrize("command_timeout", [None, 5], ids=["no-timeout", "wait_for-per-command"])
async def test_concurrent_takes_of_one_record_have_exactly_one_winner(
        command_timeout: float | None) -> None:
    """The in-memory take is get-then-delete; only the caller whose delete removed the key
    returns the record. With aiocache's per-command timeout each command runs in its own
    task, so the takes interleave between get and delete — still one winner."""
    store = FlowCache(SimpleMemoryCache(timeout=command_timeout))
    for round_ in range(20):
        await store.put(f"state:{round_}", replace(RECORD, app_state=str(round_)))
        got = await asyncio.gather(*(store.take(f"state:{round_}") for _ in range(12)))
        assert [g for g in got if g is not None] == [replace(RECORD, app_state=str(round_))]
    assert await store.held() == 0


async def test_records_expire_after_the_ttl() -> None:
    """aiocache's timer drops each record at its TTL; a record taken before it is served."""
    store = FlowCache.in_memory(ttl=0.3)
    await store.put("state:a", RECORD)
    await store.put("state:b", RECORD)
    assert await store.take("state:a") == RECORD
    assert await store.held() == 1
    took = await until(lambda: _held(store, 0), "state:b dropped at its TTL")
    assert took < 5
    assert await store.take("state:b") is None


async def test_live_records_are_never_evicted() -> None:
    """aiocache's memory backend has no size bound (the budget is BoundedFlowStore's): every
    record put is there to take until its TTL."""
    store = FlowCache.in_memory()
    for n in range(2_000):
        await store.put(f"state:{n}", replace(RECORD, app_state=str(n)))
    assert await store.held() == 2_000
    for n in range(2_000):
        assert await store.take(f"state:{n}") == replace(RECORD, app_state=str(n))


async def test_the_state_never_reaches_a_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    """aiocache logs each command's key at debug; with `log.level: debug` that would print the
    state of every flow in progress. Its debug lines stay off."""
    caplog.set_level(logging.DEBUG)
    store = FlowCache.in_memory()
    await store.put("state:visible-state-0123", RECORD)
    assert await store.take("state:visible-state-0123") == RECORD
    assert "visible-state-0123" not in caplog.text


def test_a_sidecar_without_flows_in_progress_loads_neither_aiocache_nor_redis() -> None:
    """aiocache's package imports redis-py (~5 MB of RSS): the in-memory flow cache makes its
    backend on first use, so a memory or file store sidecar that mediates no login loads
    neither."""
    probe = ("import sys, dcr_sidecar.app\n"
             "from dcr_sidecar.store.flows import FlowCache\n"
             "FlowCache.in_memory()\n"
             "print(sorted(m for m in ('aiocache', 'redis') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


async def _held(store: FlowCache, count: int) -> bool:
    return await store.held() == count


def bounded(clock: Clock, **limits: int) -> BoundedFlowStore:
    return BoundedFlowStore(FlowCache.in_memory(600), ttl=600, clock=clock, **limits)


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
