"""Callback-mediation records (design.md §3.6): short-lived, one-time entries keyed by the
sidecar's `state`, by the hash of an authorization code, and by the hash of a `request_uri` the
sidecar pushed.

:class:`FlowCache` keeps them in an aiocache backend — one implementation, two backends:
aiocache's ``SimpleMemoryCache`` (:meth:`FlowCache.in_memory`: a single process finishes its
own flows; made on first use) and its ``RedisCache`` on the redis store's own client
(store/aiocache_redis.py, ``store.redis.flow_cache``: a login started on one replica finishes
on another).
:class:`BoundedFlowStore` is the budget every flow store is used behind.

Invariants:
- ``put`` stores a record for ``ttl`` seconds; the backend drops it then (memory: aiocache's
  event-loop timer for the key; Redis: ``PX``).
- :meth:`FlowStore.take` returns a record at most once. On Redis it is one ``GETDEL``
  (through aiocache's ``raw``): of replicas taking one key at once, exactly one gets it. In
  memory it is ``get`` then ``delete``, and only the caller whose ``delete`` removed the key
  (aiocache answers 1 to exactly one caller) returns the record.
- On Redis keys are stored as the sha256 of the key (:func:`hashed_key`: the state never
  appears there) and the value is the record's JSON, sealed when ``store.encryption_keys``
  is set (it may hold a PKCE verifier). Neither backend evicts a live record: the bound is
  BoundedFlowStore's.
- :class:`BoundedFlowStore` admits a record only while the live records this process admitted
  stay within ``max_entries``, ``max_bytes`` (an estimate of the memory they hold) and, per
  client address, ``per_client``; beyond that ``put`` refuses (503, or 429 for one address's
  budget). Nothing already stored gives way, so an unauthenticated flood of /authorize cannot
  grow the process without bound nor push a login in progress out (issue: /authorize flood).
  With a shared store a record another replica took stays counted here until its TTL ends.
- a backend's failures become store errors (``StoreUnreachable``, ``StoreCorrupt``), which
  leave :class:`BoundedFlowStore` as 503s (store/errors.py's map).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from dcr_sidecar import errors
from dcr_sidecar.oauth.callback import FlowRecord
from dcr_sidecar.store import errors as store_errors

# aiocache logs every command at debug with its key — a state in flight — and adds nothing to
# the sidecar's own events: its debug lines stay off whatever `log.level` says.
logging.getLogger("aiocache").setLevel(logging.INFO)

FLOW_TTL = 600.0
MAX_ENTRIES = 100_000
MAX_BYTES = 32 * 1024 * 1024
PER_CLIENT = 1_000
# Measured with tracemalloc (python -m bench.flow_record_memory): the objects, dict slots,
# aiocache's expiry timer and the budget entry of one record in memory, beside the characters
# of its strings (which record_cost adds): 788 B with aiocache (572 B with the hand-written
# TTL dict before it), rounded up like before.
RECORD_OVERHEAD = 880


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


class FlowCache:
    """The one-time flow records on an aiocache backend (the module docstring states the
    guarantees). `unreachable`: the backend's own failures, raised as StoreUnreachable."""

    def __init__(self, cache: Any = None, *, ttl: float = FLOW_TTL, getdel: bool = False,
                 unreachable: tuple[type[Exception], ...] = ()) -> None:
        """`cache`: an aiocache backend; None: aiocache's SimpleMemoryCache, made on first use
        (importing aiocache imports redis-py, ~5 MB of RSS that a sidecar without callback
        mediation never needs). `getdel`: the backend takes with one Redis GETDEL through
        aiocache's raw command (aiocache's API has no atomic get-and-delete)."""
        self._cache = cache
        self.ttl = float(ttl)
        self._getdel = getdel
        self._unreachable = unreachable

    @classmethod
    def in_memory(cls, ttl: float = FLOW_TTL) -> FlowCache:
        """In this process: records kept as objects under their own key (aiocache's
        NullSerializer, no namespace: no copy of either is made), no timeout."""
        return cls(ttl=ttl)

    @property
    def cache(self) -> Any:
        if self._cache is None:
            from aiocache import SimpleMemoryCache

            self._cache = SimpleMemoryCache(timeout=None)
        return self._cache

    async def put(self, key: str, record: FlowRecord) -> None:
        with self._errors("storing a flow record"):
            await self.cache.set(key, record, ttl=self.ttl)

    async def take(self, key: str) -> FlowRecord | None:
        with self._errors("taking a flow record"):
            if self._getdel:
                raw = await self.cache.raw("getdel", self.backend_key(key))
                record = self.cache.serializer.loads(_text(raw))
            else:
                record = await self.cache.get(key)
                if record is not None and not await self.cache.delete(key):
                    record = None  # another caller's delete won
        assert record is None or isinstance(record, FlowRecord)
        return record

    def backend_key(self, key: str) -> str:
        """The key the backend stores `key` under (aiocache's key builder and namespace)."""
        return str(self.cache.build_key(key, namespace=self.cache.namespace))

    async def held(self) -> int:
        """How many records an in-memory cache holds now (tests read it); Redis is asked
        directly instead (no KEYS scan in the product)."""
        if self._getdel:
            raise TypeError("held() counts an in-memory cache only")
        return int(await self.cache.raw("__len__"))

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except self._unreachable as exc:
            raise store_errors.StoreUnreachable(
                f"the flow store failed ({doing}): {type(exc).__name__}") from exc


def hashed_key(key: str, namespace: str | None = None) -> str:
    """aiocache key builder for a shared backend: ``{namespace}:<sha256(key)>`` (the state
    itself never reaches Redis)."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return digest if namespace is None else f"{namespace}:{digest}"


def _text(raw: bytes | str | None) -> str | None:
    if isinstance(raw, bytes):
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise store_errors.StoreCorrupt("a flow record is not UTF-8") from None
    return raw


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
