"""What a credential store can fail with, and the one map that turns each into a typed 503
naming its step, with Retry-After (design.md §3.7). Backends (file, Redis, flow records) raise
only these; their callers translate with :func:`map_store_errors`, in the style of httpcore's
``map_exceptions``. Messages never carry a secret (a Redis URL's password included)::

    StoreError
    ├── StoreUnreachable   the backend cannot be reached or answered an error (Redis down)
    ├── StoreCorrupt       stored data cannot be read: unparsable, a newer schema, or a record
    │                      that will not decrypt. Such data is never overwritten.
    ├── KeyMismatch        store.encryption_keys cannot open the store's key check (startup)
    ├── StoreUnsafe        the file store's directory is writable by others (startup, and
    │                      refused on every use while it is)
    ├── LeaseTimeout       another holder kept the lease past store.lease.wait
    └── LeaseLost          a write was refused: this process no longer holds the key's lease
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dcr_sidecar import errors


class StoreError(Exception):
    pass


class StoreUnreachable(StoreError):
    pass


class StoreCorrupt(StoreError):
    pass


class KeyMismatch(StoreError):
    pass


class StoreUnsafe(StoreError):
    pass


class LeaseTimeout(StoreError):
    def __init__(self, message: str, *, waited: float) -> None:
        super().__init__(message)
        self.waited = waited


class LeaseLost(StoreError):
    pass


@dataclass(frozen=True)
class StoreAnswer:
    """How one kind of store failure is answered."""

    answer: type[errors.StoreUnavailable]
    retry_after: float
    step: errors.Step | None = None  # overrides the caller's step (a lease failure)
    counted: bool = True  # a store failure (dcr_sidecar_store_errors_total), not a busy lease


# First match wins, so subclasses come before StoreError.
STORE_ERROR_MAP: tuple[tuple[type[StoreError], StoreAnswer], ...] = (
    (LeaseLost, StoreAnswer(errors.LeaseLost, 1, "lease", counted=False)),
    # The holder is busy, not failing: retry soon.
    (LeaseTimeout, StoreAnswer(errors.StoreUnavailable, 1, "lease", counted=False)),
    (StoreError, StoreAnswer(errors.StoreUnavailable, 5)),
)


def answer_for(exc: StoreError) -> StoreAnswer:
    return next(how for kind, how in STORE_ERROR_MAP if isinstance(exc, kind))


def http_error(exc: StoreError, step: errors.Step, *, upstream: str | None = None,
               about: str = "") -> errors.StoreUnavailable:
    """The HTTP error for one store failure. `about` names what was stored (" for the CIMD
    keys")."""
    how = answer_for(exc)
    if how.step is not None:  # a lease: its own message says what happened
        return how.answer(str(exc), step=how.step, upstream=upstream, retry_after=how.retry_after)
    return how.answer(f"the credential store failed ({step}){about}: {exc}", step=step,
                      upstream=upstream, retry_after=how.retry_after)


@contextlib.contextmanager
def map_store_errors(step: errors.Step, *, upstream: str | None = None, about: str = "",
                     count: Callable[[str], None] | None = None) -> Iterator[None]:
    """Store errors raised inside become HTTP errors by ``STORE_ERROR_MAP`` (``raise ... from``);
    `count` is told the step of each failure the table counts."""
    try:
        yield
    except StoreError as exc:
        if count is not None and answer_for(exc).counted:
            count(step)
        raise http_error(exc, step, upstream=upstream, about=about) from exc
