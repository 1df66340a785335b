"""The resolver's waiting schedule, pure: how long after a failure, an unneeded re-registration
or a refused recovery (design.md §3.5, §3.7). No clock, no state: the callers add the delay
to their own now.

- After the n-th failure in a row: full jitter, uniform(0, min(cap, base * 2**(n-1))); an AS's
  Retry-After raises it, itself capped by `max_retry_after`.
- Recovery (re-registration on invalid_client): at most one per window of `base`, doubling up
  to `cap` for each recovery in a row whose generation never served a request.
- A recovery refused (the client exists, management forbidden): no new attempt before at least
  `base`, or the failure backoff for one more failure when that is longer.
"""

from __future__ import annotations

import random

from dcr_sidecar.config import Backoff
from dcr_sidecar.oauth.retry import backoff_delay


def after_failure(failures: int, backoff: Backoff, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to back off after the `failures`-th failure in a row."""
    delay = backoff_delay(failures, base=backoff.base, cap=backoff.cap, rng=rng)
    if retry_after is not None:
        delay = max(delay, min(float(retry_after), backoff.max_retry_after))
    return delay


def recovery_window(unserved: int, backoff: Backoff) -> float:
    """The window after the `unserved`-th recovery in a row that never served (1 = the first)."""
    return min(backoff.cap, backoff.base * 2.0 ** min(unserved - 1, 30))


def recovery_hold_off(failures: int, backoff: Backoff,
                      rng: random.Random | None = None) -> float:
    """No recovery before this many seconds after one was found pointless."""
    return max(backoff.base, backoff_delay(max(1, failures + 1), base=backoff.base,
                                           cap=backoff.cap, rng=rng))
