"""The per-upstream connection slot (dcr_sidecar/slot.py): at most `size` holders, FIFO
hand-over, and no slot lost to a waiter cancelled before or after it was handed one."""

from __future__ import annotations

import asyncio

import pytest

from dcr_sidecar.slot import Slot


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_at_most_size_holders_and_fifo_hand_over() -> None:
    slot = Slot(2)
    order: list[int] = []
    holding = 0
    most = 0
    gate = asyncio.Event()

    async def user(i: int) -> None:
        nonlocal holding, most
        await slot.acquire()
        order.append(i)
        holding += 1
        most = max(most, holding)
        await gate.wait()
        holding -= 1
        slot.release()

    tasks = [asyncio.create_task(user(i)) for i in range(6)]
    await settle()
    assert order == [0, 1]
    assert slot.locked()
    gate.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 5)
    assert order == list(range(6))
    assert most == 2
    assert not slot.locked()


async def test_a_waiter_cancelled_while_waiting_leaves_the_queue() -> None:
    slot = Slot(1)
    await slot.acquire()
    waiter = asyncio.create_task(slot.acquire())
    await settle()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slot.release()
    assert not slot.locked()  # the slot went back, not to the cancelled waiter
    await asyncio.wait_for(slot.acquire(), 1)


async def test_a_waiter_cancelled_after_the_hand_over_gives_the_slot_back() -> None:
    slot = Slot(1)
    await slot.acquire()
    waiter = asyncio.create_task(slot.acquire())
    await settle()
    slot.release()  # handed to the waiter, which has not run yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not slot.locked()
    await asyncio.wait_for(slot.acquire(), 1)


async def test_a_timeout_while_waiting_loses_no_slot() -> None:
    slot = Slot(1)
    await slot.acquire()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await slot.acquire()
    slot.release()
    await asyncio.wait_for(slot.acquire(), 1)
    assert slot.locked()


async def test_a_release_between_a_cancel_and_the_waiters_wake_up() -> None:
    """The cancelled waiter's future is dropped by a release before its task runs: the task
    still ends cancelled, and the slot is free for the next one."""
    slot = Slot(1)
    await slot.acquire()
    waiter = asyncio.create_task(slot.acquire())
    await settle()
    waiter.cancel()  # its future is cancelled now, its task not yet run
    slot.release()  # pops the cancelled future, frees the slot
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not slot.locked()
    await asyncio.wait_for(slot.acquire(), 1)
    assert slot.locked()
