"""File store: one JSON document (mode 0600, atomic replace), locks that span processes.

Invariants:
- The document is replaced atomically (write a temporary file in the same directory, fsync,
  ``os.replace``), so a reader never sees half a file and a crash never loses the old one.
- ``lock(key)`` takes an exclusive ``flock`` on a per-key lock file, off the event loop, and holds
  it across the whole resolution: ``serve`` and ``doctor --register`` on one file never both
  register. Keys have separate lock files so one slow upstream never delays another.
- Each ``put`` is a read-modify-write of one key under a short lock on the document itself.
- A document that cannot be parsed, and a record that will not decrypt, are never overwritten:
  reads and writes fail instead (:class:`StoreCorrupt`). Bytes that are not UTF-8 inside one
  record make that record corrupt, not the document: they are read as lone surrogates
  (``surrogateescape``) and written back as the same bytes when another record changes.
- Several processes may share the file (``serve`` replicas on one volume, ``doctor``): the store
  is ``shared``, so each re-reads the records it serves on the staleness bound.
- Lock and temporary files are opened with ``O_NOFOLLOW``: a link planted in their place is
  refused, never followed. A store directory writable by others is refused (:class:`StoreUnsafe`
  naming it) at ``open()`` and on every use: start-up fails rather than writing secrets there.
- ``open()`` checks ``store.encryption_keys`` against the document's key check before anything
  is written (a wrong key set changes nothing), writes the key check on first start, and
  reseals every record not stored under the newest key (rotation; encryption switched on).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import structlog

from dcr_sidecar.files import write_atomic
from dcr_sidecar.store.errors import StoreCorrupt, StoreUnreachable, StoreUnsafe
from dcr_sidecar.store.records import (
    PLAIN,
    PLAIN_SCHEMA,
    SCHEMA,
    Record,
    RecordKey,
    Sealer,
    record_from_json,
    record_to_json,
    resealed,
)

log = structlog.get_logger(__name__)


class FileStore:
    name = "file"
    # Processes sharing the file serialise whole resolutions on the flock, and each re-reads
    # what it serves on the resolver's staleness bound (design.md §3.4), as with Redis: a new
    # generation or renewal written by one is served by the others within 30 s.
    shared = True

    def __init__(self, path: str, sealer: Sealer = PLAIN) -> None:
        self.path = Path(path)
        self.sealer = sealer
        self._locks: dict[RecordKey, asyncio.Lock] = {}
        self._prepared = False

    # -- reading and writing (blocking parts run in a thread)

    def _read_document(self) -> dict[str, Any]:
        try:
            # Bytes that are not UTF-8 become lone surrogates: the record holding them is
            # refused as corrupt (records.record_from_json), the others stay readable, and a
            # write puts the same bytes back (see _write_document).
            text = self.path.read_bytes().decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            return {"schema": SCHEMA, "records": {}}
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise StoreCorrupt(f"{self.path} is not valid JSON; it is left untouched") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("records"), dict):
            raise StoreCorrupt(f"{self.path} is not a dcr-sidecar credential store")
        schema = doc.get("schema", PLAIN_SCHEMA)
        if not isinstance(schema, int) or schema > SCHEMA:
            raise StoreCorrupt(f"{self.path} was written by a newer store schema "
                               f"({schema!r}); this version reads up to {SCHEMA}")
        return doc

    def _write_document(self, doc: dict[str, Any]) -> None:
        text = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False)
        try:
            data = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate no byte maps to: never write it
            raise StoreCorrupt(f"{self.path} holds text that cannot be written back; "
                               "it is left untouched") from None
        write_atomic(self.path, data, mode=0o600, dir_mode=0o700)

    def _get_sync(self, key: RecordKey) -> Record | None:
        self._ready_sync()
        data = self._read_document()["records"].get(_doc_key(key))
        return record_from_json(data, self.sealer) if data is not None else None

    def _put_sync(self, record: Record) -> None:
        self._ready_sync()
        with _flock(self._lock_path("document")):
            doc = self._read_document()
            doc["records"][_doc_key(record.key)] = record_to_json(record, self.sealer)
            self._write_document(_with_schema(doc))

    def _open_sync(self) -> None:
        _check_directory(self.path.parent)
        with _flock(self._lock_path("document")):
            doc = self._read_document()
            state = self.sealer.check_keys(doc.get("key_check"))  # KeyMismatch: nothing written
            changed = False
            if self.sealer.enabled and state != "current":
                doc["key_check"] = self.sealer.key_check()
                changed = True
                log.info("store_key_check_written", store=str(self.path),
                         reason="first start" if state == "absent" else "newest key changed")
            for name, data in doc["records"].items():
                try:
                    again = resealed(data, self.sealer)
                except StoreCorrupt as exc:
                    log.warning("stored_record_unreadable", store=str(self.path),
                                detail=str(exc))
                    continue
                if again is not None:
                    doc["records"][name] = again
                    changed = True
            if changed:
                self._write_document(_with_schema(doc))
        self._prepared = True

    def _ready_sync(self) -> None:
        if not self._prepared:
            self._open_sync()

    def _lock_path(self, name: str) -> Path:
        return self.path.with_name(f".{self.path.name}.{name}.lock")

    # -- the store protocol

    async def open(self) -> None:
        try:
            await asyncio.to_thread(self._open_sync)
        except (OSError, StoreCorrupt) as exc:  # reads and writes fail typed until fixed
            log.warning("store_unusable_at_start", store=str(self.path),
                        detail=f"{type(exc).__name__}: {exc}", then="retried on first use")

    async def check(self) -> str | None:
        try:
            await asyncio.to_thread(_check_directory, self.path.parent)
            await asyncio.to_thread(self._read_document)
        except (OSError, StoreCorrupt, StoreUnsafe) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def get(self, key: RecordKey) -> Record | None:
        with self._os_errors("reading"):
            return await asyncio.to_thread(self._get_sync, key)

    async def put(self, record: Record) -> None:
        with self._os_errors("writing"):
            await asyncio.to_thread(self._put_sync, record)

    @contextlib.asynccontextmanager
    async def lock(self, key: RecordKey) -> AsyncIterator[None]:
        lock_path = self._lock_path(hashlib.sha256(str(key).encode()).hexdigest()[:16])
        async with self._locks.setdefault(key, asyncio.Lock()):
            with self._os_errors("locking"):
                fd = await asyncio.to_thread(_acquire, lock_path)
            try:
                yield
            finally:
                _release(fd)

    async def close(self) -> None:
        return None

    @contextlib.contextmanager
    def _os_errors(self, doing: str) -> Iterator[None]:
        """The store raises only store errors (store/errors.py): a file system failure is
        :class:`StoreUnreachable`, naming the file."""
        try:
            yield
        except OSError as exc:
            raise StoreUnreachable(f"{self.path} failed ({doing}): {type(exc).__name__}: "
                                   f"{exc.strerror or exc}") from exc


def _with_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """The document's schema: the newest of its parts, so an older version refuses a file
    holding anything it cannot read instead of misreading it."""
    schemas = [PLAIN_SCHEMA, *(r.get("schema", PLAIN_SCHEMA) for r in doc["records"].values())]
    if "key_check" in doc:
        schemas.append(SCHEMA)
    doc["schema"] = max(schemas)
    return doc


def _doc_key(key: RecordKey) -> str:
    return f"{key.upstream} {key.issuer}"


def _check_directory(directory: Path) -> None:
    """Refuse a directory others can write to: they could plant a file or a link where the
    store, its locks or its temporary files go (one that does not exist yet is made 0700)."""
    try:
        mode = directory.stat().st_mode
    except FileNotFoundError:
        return
    if mode & stat.S_IWOTH:
        raise StoreUnsafe(
            f"the store directory {directory} is writable by others (mode "
            f"{stat.S_IMODE(mode):04o}): another local user could plant files or links there; "
            "use a directory only the sidecar's user can write to (chmod o-w)")


def _acquire(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_directory(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _release(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(path: Path) -> Any:
    fd = _acquire(path)
    try:
        yield
    finally:
        _release(fd)
