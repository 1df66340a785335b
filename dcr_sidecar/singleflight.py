"""In-process single flight: concurrent callers for one key share one piece of work.

Guarantees (design.md §3.4):
- at most one task per key runs at a time; every waiter receives its result or the very same
  exception;
- the slot is cleared when the task ends, whatever the outcome, so the next call starts afresh;
- a waiter that is cancelled never cancels the shared task (it is shielded);
- the task runs in a fresh ``contextvars.Context``: it does not inherit one request's log
  context (request id), and its own context does not leak back.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[T]] = {}

    async def run(self, key: K, work: Callable[[], Awaitable[T]]) -> T:
        task = self._tasks.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                _call(work), context=contextvars.Context())
            self._tasks[key] = task
            task.add_done_callback(lambda done, k=key: self._clear(k, done))  # type: ignore[misc]
        return await asyncio.shield(task)

    def _clear(self, key: K, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # mark retrieved: waiters may all have been cancelled

    async def cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()
