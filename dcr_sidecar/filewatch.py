"""Values loaded from files and loaded again when the files change: trust anchors, client keys,
ready-made client assertions, listener certificates.

A :class:`Watched` remembers the identity of every file it read — device, inode, size and
modification time, through symlinks — and loads again on the first :meth:`Watched.get` after
any of them changed. That covers a file rewritten in place, a file replaced by a rename, and the
atomic ``..data`` symlink swap with which Kubernetes updates ConfigMap, Secret and projected
volumes. A directory counts with every entry in it, so an added or removed file is a change too.

Invariants:
- ``get()`` costs one ``stat`` per watched path (and per entry of a watched directory), at most
  once per ``interval`` seconds; nothing runs in the background and nothing needs closing.
- A change whose content fails to load keeps the last good value: ``on_error`` hears about it
  once per change, and ``get()`` raises only when no value was ever loaded. The next change
  is tried again.
- Single-threaded by design (the event loop); ``load`` runs inside ``get()``, so it must be
  quick and must not block on anything but reading the files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
Identity = tuple[tuple[str, int, int, int, int] | tuple[str], ...]

__all__ = ["Watched", "identity"]


def _stat(path: str) -> tuple[str, int, int, int, int] | tuple[str]:
    try:
        st = os.stat(path)
    except OSError:
        return (path,)  # missing or unreadable: a state of its own, so its return is a change
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def identity(paths: Sequence[str]) -> Identity:
    """What :class:`Watched` compares: each path's stat, a directory's entries included."""
    seen: list[tuple[str, int, int, int, int] | tuple[str]] = []
    for path in paths:
        seen.append(_stat(path))
        if os.path.isdir(path):
            try:
                entries = sorted(os.listdir(path))
            except OSError:
                continue
            seen.extend(_stat(os.path.join(path, name)) for name in entries
                        if not name.startswith(".."))  # Kubernetes' ..data bookkeeping
    return tuple(seen)


class Watched(Generic[T]):
    """The value ``load()`` made from `paths`, made again when they change.

    `load` raises any exception for content it cannot use; `on_error(exc)` is told (the
    caller logs it) and the previous value stays in force.
    """

    def __init__(self, paths: Sequence[str], load: Callable[[], T], *,
                 on_error: Callable[[Exception], None] | None = None,
                 interval: float = 0.0) -> None:
        self.paths = tuple(str(Path(p)) for p in paths)
        self._load = load
        self._on_error = on_error
        self._interval = interval
        self._value: T | None = None
        self._loaded = False
        self._seen: Identity | None = None
        self._checked = float("-inf")
        self.reloads = 0  # successful loads after the first (for tests and metrics)

    def get(self) -> T:
        now = time.monotonic()
        if self._loaded and now - self._checked < self._interval:
            return self._value  # type: ignore[return-value]
        self._checked = now
        current = identity(self.paths)
        if current != self._seen:
            self._seen = current
            self._reload()
        if not self._loaded:
            self._seen = None  # try again on the next get()
            raise self._error
        return self._value  # type: ignore[return-value]

    def _reload(self) -> None:
        try:
            value = self._load()
        except Exception as exc:  # any failure keeps the last good value
            self._error = exc
            if self._on_error is not None:
                self._on_error(exc)
            return
        if self._loaded:
            self.reloads += 1
        self._value, self._loaded = value, True
