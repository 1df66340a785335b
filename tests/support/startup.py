"""Waiting for a process the suite started (node, redis-server, `serve`) to be ready.

A loaded machine makes a start slow, never wrong: the wait is for the process's own readiness
signal, with one generous deadline (inside pytest-timeout's 120 s, so a start that is truly
stuck is reported here, with the process's output). A process that exits is reported at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

STARTUP_DEADLINE = 90.0
T = TypeVar("T")


async def until_ready(ready: Awaitable[T], process: asyncio.subprocess.Process, *,
                      what: str, output: Callable[[], str | Awaitable[str]],
                      error: Callable[[str], Exception] = RuntimeError,
                      deadline: float = STARTUP_DEADLINE) -> T:
    """`ready`'s result; `error(...)` naming `what` and carrying `output()` as soon as the
    process exits first, or when `deadline` passes."""
    waiting = asyncio.ensure_future(ready)
    exited = asyncio.ensure_future(process.wait())
    try:
        done, _ = await asyncio.wait({waiting, exited}, timeout=deadline,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiting in done and waiting.exception() is None:
            return waiting.result()
        if waiting in done:  # its signal's source ended (EOF): the process is on its way out
            await asyncio.wait({exited}, timeout=5)
        if exited.done():
            problem = f"{what} exited with {process.returncode} before it was ready"
        elif waiting.done():
            problem = f"{what} failed before it was ready: {waiting.exception()!r}"
        else:
            problem = f"{what} not ready within {deadline} s"
        shown = output()
        text = shown if isinstance(shown, str) else await shown
        raise error(f"{problem}; its output:\n{text}")
    finally:
        for task in (waiting, exited):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
