"""A clock tests move by hand (for TTLs: no sleeping)."""

from __future__ import annotations


class Clock:
    """Callable like `time.monotonic`; advance it with ``clock.now += seconds``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
