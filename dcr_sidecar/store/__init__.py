"""Credential stores: one protocol, several backends.

A store keeps :class:`~dcr_sidecar.store.records.Record` objects by key and offers a lock per
key that the resolver holds across a whole resolution (discover, register, persist). The memory
lock is per process; the file lock also excludes other processes sharing the file.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol

from dcr_sidecar.config import Store as StoreSettings
from dcr_sidecar.store.records import Record, RecordKey


class CredentialStore(Protocol):
    name: str

    async def get(self, key: RecordKey) -> Record | None: ...

    async def put(self, record: Record) -> None: ...

    def lock(self, key: RecordKey) -> AbstractAsyncContextManager[None]: ...

    async def close(self) -> None: ...


def open_store(settings: StoreSettings) -> CredentialStore:
    if settings.backend == "memory":
        from dcr_sidecar.store.memory import MemoryStore

        return MemoryStore()
    if settings.backend == "file":
        from dcr_sidecar.store.file import FileStore

        return FileStore(settings.path)
    raise ValueError(f"store backend {settings.backend!r} is not available")
