"""Backoff arithmetic and Retry-After parsing (RFC 9110 §10.2.3)."""

from __future__ import annotations

import random
from email.utils import parsedate_to_datetime


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait, from delay-seconds or an HTTP-date; None when absent or malformed."""
    if not value:
        return None
    value = value.strip()
    # str.isdigit() also accepts digits float() rejects (e.g. "²" from a latin-1 header byte).
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def backoff_delay(failures: int, *, base: float, cap: float,
                  rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(failures-1)))."""
    ceiling = min(cap, base * (2 ** max(0, min(failures - 1, 62))))
    return (rng or random).uniform(0, ceiling)
