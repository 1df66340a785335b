"""Waiting on a condition with a deadline (never sleep-and-hope)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

POLL = 0.02


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str,
                deadline_s: float = 10.0) -> float:
    """Poll `condition` (sync or async) every 20 ms until it is true; the seconds it took.
    AssertionError naming `what` when it is not within `deadline_s`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return loop.time() - started
        if loop.time() - started > deadline_s:
            raise AssertionError(f"{what}: not within {deadline_s} s")
        await asyncio.sleep(POLL)
