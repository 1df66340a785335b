"""In-process store: credentials die with the process (implies `ephemeral`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from dcr_sidecar.store.records import Record, RecordKey


class MemoryStore:
    name = "memory"
    shared = False

    def __init__(self) -> None:
        self._records: dict[RecordKey, Record] = {}
        self._locks: dict[RecordKey, asyncio.Lock] = {}

    async def open(self) -> None:
        return None

    async def check(self) -> str | None:
        return None

    async def get(self, key: RecordKey) -> Record | None:
        return self._records.get(key)

    async def put(self, record: Record) -> None:
        self._records[record.key] = record

    @contextlib.asynccontextmanager
    async def lock(self, key: RecordKey) -> AsyncIterator[None]:
        async with self._locks.setdefault(key, asyncio.Lock()):
            yield

    async def close(self) -> None:
        self._records.clear()
