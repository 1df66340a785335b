"""Callback-mediation records (design.md §3.6): short-lived, one-time entries keyed by the
sidecar's `state`, by the hash of an authorization code, and by the hash of a `request_uri` the
sidecar pushed.

:class:`FlowStore` is the interface a shared backend (Redis: SET PX + GETDEL) implements; this
module holds the in-process one, with which a single process finishes its own flows, and
:class:`BoundedFlowStore`, the budget every store is used behind.

Invariants:
- an entry is returned by :meth:`FlowStore.take` at most once, and never after its TTL;
- :class:`MemoryFlowStore` drops expired entries as new ones arrive and never evicts a live one;
- :class:`BoundedFlowStore` admits a record only while the live records this process admitted
  stay within ``max_entries``, ``max_bytes`` (an estimate of the memory they hold) and, per
  client address, ``per_client``; beyond that ``put`` refuses (503, or 429 for one address's
  budget). Nothing already stored gives way, so an unauthenticated flood of /authorize cannot
  grow the process without bound nor push a login in progress out (issue: /authorize flood).
  With a shared store a record another replica took stays counted here until its TTL ends.
- a backend's store errors leave :class:`BoundedFlowStore` as 503s (store/errors.py's map).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Protocol

from dcr_sidecar import errors
from dcr_sidecar.oauth.callback import FlowRecord
from dcr_sidecar.store import errors as store_errors

FLOW_TTL = 600.0
MAX_ENTRIES = 100_000
MAX_BYTES = 32 * 1024 * 1024
PER_CLIENT = 1_000
# Measured with tracemalloc: the objects, dict slots and budget entry of one record, beside the
# characters of its strings (which record_cost adds).
RECORD_OVERHEAD = 640


class FlowStore(Protocol):
    async def put(self, key: str, record: FlowRecord) -> None: ...

    async def take(self, key: str) -> FlowRecord | None:
        """The record under `key`, removed; None when unknown, already taken or expired."""
        ...


def record_cost(key: str, record: FlowRecord) -> int:
    """An estimate, in bytes, of the memory one stored record holds."""
    strings = (key, record.app_redirect_uri, record.app_state or "", record.code_verifier or "",
               record.upstream, record.issuer, record.client)
    return RECORD_OVERHEAD + sum(len(s) for s in strings)


class MemoryFlowStore:
    def __init__(self, ttl: float = FLOW_TTL, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        # Insertion order is expiry order (one TTL for all), so the oldest are in front.
        self._entries: OrderedDict[str, tuple[float, FlowRecord]] = OrderedDict()

    async def put(self, key: str, record: FlowRecord) -> None:
        now = self._clock()
        self._drop_expired(now)
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


class BoundedFlowStore:
    """`inner` behind a budget of records, bytes and records per client address (the module
    docstring states the guarantee)."""

    def __init__(self, inner: FlowStore, *, ttl: float = FLOW_TTL,
                 max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 per_client: int = PER_CLIENT, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        """`per_client` 0: no per-address budget."""
        self.inner = inner
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.per_client = per_client
        self._clock = clock
        self._admitted: OrderedDict[str, tuple[float, str, int]] = OrderedDict()
        self._by_client: Counter[str] = Counter()
        self.bytes = 0

    async def put(self, key: str, record: FlowRecord) -> None:
        now = self._clock()
        self._expire(now)
        self._release(key)
        cost = record_cost(key, record)
        if len(self._admitted) >= self.max_entries or self.bytes + cost > self.max_bytes:
            raise errors.TooManyFlows("too many authorization requests are in progress; "
                                      "try again later", retry_after=self._retry_after(now))
        if self.per_client and self._by_client[record.client] >= self.per_client:
            raise errors.TooManyFlowsFromClient(
                f"more than {self.per_client} authorization requests from this address are in "
                "progress; try again later", retry_after=self._retry_after(now))
        with store_errors.map_store_errors("store_write"):
            await self.inner.put(key, record)
        self._admitted[key] = (now + self.ttl, record.client, cost)
        self._by_client[record.client] += 1
        self.bytes += cost

    async def take(self, key: str) -> FlowRecord | None:
        try:
            with store_errors.map_store_errors("store_read"):
                return await self.inner.take(key)
        finally:
            self._release(key)

    def __len__(self) -> int:
        return len(self._admitted)

    def _release(self, key: str) -> None:
        entry = self._admitted.pop(key, None)
        if entry is not None:
            self._forget(entry)

    def _forget(self, entry: tuple[float, str, int]) -> None:
        _, client, cost = entry
        self.bytes -= cost
        self._by_client[client] -= 1
        if self._by_client[client] <= 0:
            del self._by_client[client]

    def _expire(self, now: float) -> None:
        while self._admitted:
            entry = next(iter(self._admitted.values()))
            if entry[0] > now:
                return
            self._admitted.popitem(last=False)
            self._forget(entry)

    def _retry_after(self, now: float) -> float:
        """When the oldest admitted record expires (the earliest room can appear)."""
        if not self._admitted:
            return 1.0
        return max(1.0, next(iter(self._admitted.values()))[0] - now)
