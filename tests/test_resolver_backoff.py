"""The resolver's backoff schedule (dcr_sidecar.resolver.backoff), as tables."""

from __future__ import annotations

import random

import pytest

from dcr_sidecar.config import Backoff
from dcr_sidecar.resolver import backoff


class Ceiling(random.Random):
    """Full jitter at its top: uniform(a, b) is b, so the table shows the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Floor(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


B = Backoff(base=1, cap=300, max_retry_after=3600)


@pytest.mark.parametrize(("failures", "retry_after", "ceiling"), [
    (1, None, 1.0),
    (2, None, 2.0),
    (3, None, 4.0),
    (9, None, 256.0),
    (10, None, 300.0),  # capped
    (1000, None, 300.0),  # no overflow
    (1, 120.0, 120.0),  # Retry-After beats the jitter
    (10, 120.0, 300.0),  # ...but never shortens it
    (1, 7200.0, 3600.0),  # Retry-After capped by max_retry_after
])
def test_after_failure_ceiling(failures: int, retry_after: float | None, ceiling: float) -> None:
    assert backoff.after_failure(failures, B, retry_after, rng=Ceiling()) == ceiling


@pytest.mark.parametrize(("failures", "retry_after", "floor"), [
    (1, None, 0.0), (5, None, 0.0), (1, 30.0, 30.0), (1, 7200.0, 3600.0)])
def test_after_failure_floor(failures: int, retry_after: float | None, floor: float) -> None:
    """Full jitter may retry at once; a Retry-After is a floor."""
    assert backoff.after_failure(failures, B, retry_after, rng=Floor()) == floor


def test_after_failure_stays_within_the_ceiling() -> None:
    rng = random.Random(7)
    delays = [backoff.after_failure(4, B, rng=rng) for _ in range(200)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    assert max(delays) > 4.0  # jittered over the whole range, not a constant


@pytest.mark.parametrize(("unserved", "window"), [
    (1, 0.2), (2, 0.4), (3, 0.8), (11, 204.8), (12, 300.0), (10_000, 300.0)])
def test_recovery_window_doubles_per_unserved_recovery(unserved: int, window: float) -> None:
    assert backoff.recovery_window(unserved, Backoff(base=0.2, cap=300)) == pytest.approx(window)


@pytest.mark.parametrize(("failures", "rng", "hold"), [
    (0, Floor(), 1.0),  # at least base
    (0, Ceiling(), 1.0),  # one more failure than none: base
    (2, Ceiling(), 4.0),  # the backoff for the third failure
    (20, Ceiling(), 300.0),
])
def test_recovery_hold_off(failures: int, rng: random.Random, hold: float) -> None:
    assert backoff.recovery_hold_off(failures, B, rng=rng) == hold
