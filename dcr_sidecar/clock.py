"""The clock the resolver and the CIMD key sets read and wait on, injected (design.md §4):
the real one by default, a hand-moved one in tests (no sleeping)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol


class Clock(Protocol):
    """Wall clock for what is stored and shown; monotonic for deadlines in this process."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        """Return once `seconds` have passed on this clock, or as soon as `wake` is set."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> None:
        if wake is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), timeout=seconds)
