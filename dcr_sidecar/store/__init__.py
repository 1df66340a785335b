"""Credential stores: one protocol, several backends.

A store keeps :class:`~dcr_sidecar.store.records.Record` objects by key and offers a lock per
key that the resolver holds across every change of a record (register, renew, delete). The
memory lock is per process; the file lock also excludes other processes sharing the file; the
redis lock is a lease shared by a fleet of replicas (design.md §3.4).

Contract the resolver relies on:
- ``open()`` runs once before use: it checks ``store.encryption_keys`` (``KeyMismatch`` — a
  startup error that changes nothing) and writes the key check on first start.
- ``put`` is called only while ``lock(record.key)`` is held; a shared store refuses it with
  ``LeaseLost`` once the lease is no longer this holder's, so a holder that lost its lease
  never overwrites the winner.
- ``shared``: other processes change records at any time (redis), so what a replica holds is
  re-read when older than the resolver's staleness bound.
- Every failure is a :class:`~dcr_sidecar.store.errors.StoreError` (the file store turns an
  ``OSError`` into ``StoreUnreachable``); callers turn them into HTTP errors only through
  ``store.errors.map_store_errors``. ``check()`` describes current trouble for ``/readyz``
  (None: fine).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from dcr_sidecar.config import Store as StoreSettings
from dcr_sidecar.store.records import Record, RecordKey, Sealer


class CredentialStore(Protocol):
    name: str
    shared: bool

    async def open(self) -> None: ...

    async def get(self, key: RecordKey) -> Record | None: ...

    async def put(self, record: Record) -> None: ...

    def lock(self, key: RecordKey) -> AbstractAsyncContextManager[None]: ...

    async def check(self) -> str | None: ...

    async def close(self) -> None: ...


def open_store(settings: StoreSettings) -> CredentialStore:
    sealer = Sealer([key for key in settings.encryption_keys if key is not None])
    if settings.backend == "memory":
        from dcr_sidecar.store.memory import MemoryStore

        return MemoryStore()
    if settings.backend == "file":
        from dcr_sidecar.store.file import FileStore

        return FileStore(settings.path, sealer)
    if settings.backend == "redis":
        from dcr_sidecar.store.redis import RedisStore

        assert settings.url is not None  # config validation requires it
        return RedisStore(settings.url, key_prefix=settings.key_prefix, sealer=sealer,
                          lease_ttl=settings.lease.ttl, lease_wait=settings.lease.wait)
    raise ValueError(f"store backend {settings.backend!r} is not available")
