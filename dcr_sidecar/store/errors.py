"""What a credential store can fail with. The resolver turns each into a typed 503 naming its
step (design.md §3.7); messages never carry a secret (a Redis URL's password included)::

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
