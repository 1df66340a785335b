"""Clocks tests move by hand (no sleeping): :class:`Clock` for TTLs, :class:`HandClock` for the
resolver (renewal timers, grace deletion, backoff)."""

from __future__ import annotations

import asyncio
import time

SETTLE_S = 10.0


class Clock:
    """Callable like `time.monotonic`; advance it with ``clock.now += seconds``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class HandClock:
    """A :class:`dcr_sidecar.clock.Clock` the test moves with :meth:`advance`: wall and
    monotonic time move together, and a sleeper wakes only when the clock has been moved past
    its deadline (or its `wake` event is set). Nothing in a test using it sleeps."""

    def __init__(self, wall: float | None = None) -> None:
        self._wall = time.time() if wall is None else wall
        self._monotonic = 1000.0
        self._moved = asyncio.Event()
        self._changed = asyncio.Condition()
        self._asleep: list[tuple[float, asyncio.Event | None]] = []  # (deadline, wake)

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._monotonic

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        deadline = self._monotonic + seconds
        sleeper = (deadline, wake)
        self._asleep.append(sleeper)
        await self._notify()
        try:
            while self._monotonic < deadline and not (wake is not None and wake.is_set()):
                waits = [asyncio.ensure_future(self._moved.wait())]
                if wake is not None:
                    waits.append(asyncio.ensure_future(wake.wait()))
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiting in waits:
                        waiting.cancel()
        finally:
            self._asleep.remove(sleeper)
            await self._notify()

    def advance(self, seconds: float) -> None:
        """Move both clocks forward; every sleeper whose deadline has come wakes."""
        self._wall += seconds
        self._monotonic += seconds
        self._moved.set()
        self._moved = asyncio.Event()

    async def settled(self, sleepers: int) -> None:
        """Wait (real time, at most SETTLE_S) until `sleepers` tasks sleep on this clock, none
        of them woken or due: everything due before the clock moves again has happened."""
        def quiet() -> bool:
            return len(self._asleep) >= sleepers and not any(
                deadline <= self._monotonic or (wake is not None and wake.is_set())
                for deadline, wake in self._asleep)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(quiet), SETTLE_S)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
