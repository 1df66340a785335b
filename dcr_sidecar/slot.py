"""A per-upstream connection slot (design.md §3.12): a counting semaphore that is cheap to wait
on. FIFO, and a released slot is handed straight to the oldest waiter.

Why not :class:`asyncio.Semaphore`: on Python 3.11 its ``locked()`` (called by every
``acquire``) walks all the waiters, a woken waiter re-checks the count and a newcomer may take
the slot first, sending the woken one back to sleep — under load (more requests in flight than
slots) that is a walk per request and extra wake-ups.

Invariants:
- at most `size` holders at a time; ``release`` either hands the slot to the oldest waiter still
  waiting (its future resolved: it holds the slot from that moment) or frees it;
- a waiter cancelled (a timeout, a client gone) before it got the slot leaves the queue; one
  cancelled after it was handed the slot but before it ran gives the slot back, so no slot is
  ever lost.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Slot:
    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def locked(self) -> bool:
        """True when :meth:`acquire` would wait."""
        return self._free <= 0

    async def acquire(self) -> None:
        if self._free > 0:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed over, but this task will not use it
            elif waiter in self._waiters:  # a release may have dropped it already
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to this waiter
                return
        self._free += 1
