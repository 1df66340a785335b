"""Callback-mediation records (design.md §3.6): short-lived, one-time entries keyed by the
sidecar's `state` and by the hash of an authorization code.

:class:`FlowStore` is the interface a shared backend (Redis: SET PX + GETDEL) implements; this
module holds the in-process one, with which a single process finishes its own flows.

Invariants of :class:`MemoryFlowStore`:
- an entry is returned by :meth:`take` at most once, and never after its TTL;
- memory is bounded: expired entries are dropped as new ones arrive, and beyond
  ``max_entries`` the oldest entry gives way (the browser-facing /authorize creates entries, so
  an unauthenticated flood must not grow the process without bound).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from dcr_sidecar.oauth.callback import FlowRecord

FLOW_TTL = 600.0
MAX_ENTRIES = 100_000


class FlowStore(Protocol):
    async def put(self, key: str, record: FlowRecord) -> None: ...

    async def take(self, key: str) -> FlowRecord | None:
        """The record under `key`, removed; None when unknown, already taken or expired."""
        ...


class MemoryFlowStore:
    def __init__(self, ttl: float = FLOW_TTL, *, max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        # Insertion order is expiry order (one TTL for all), so the oldest are in front.
        self._entries: OrderedDict[str, tuple[float, FlowRecord]] = OrderedDict()

    async def put(self, key: str, record: FlowRecord) -> None:
        now = self._clock()
        self._drop_expired(now)
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
        self._entries.pop(key, None)
        self._entries[key] = (now + self.ttl, record)

    async def take(self, key: str) -> FlowRecord | None:
        entry = self._entries.pop(key, None)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)

    def _drop_expired(self, now: float) -> None:
        while self._entries:
            expires, _ = next(iter(self._entries.values()))
            if expires > now:
                return
            self._entries.popitem(last=False)
