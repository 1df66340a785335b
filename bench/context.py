"""What every scenario gets: the plan (durations, counts) and the run's temporary directory."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plan:
    """Durations and counts of a run. Every load is bounded by both a time and a count."""

    quick: bool = False
    repeats: int = 3  # interleaved repetitions of each configuration
    warmup_seconds: float = 2
    warm_seconds: float = 10
    connections: int = 32
    paced_rate: float = 1000
    paced_connections: int = 10
    paced_seconds: float = 10
    real_latency_seconds: float = 5
    real_max_seconds: float = 10
    first_contacts: int = 20
    cold_starts: int = 5
    storm_requests: int = 1000
    storm_replicas: int = 3
    footprint_requests: int = 100_000
    footprint_max_seconds: float = 240
    many_upstreams: int = 1000
    startup_repeats: int = 3
    profile_seconds: float = 10

    def shortened(self) -> Plan:
        """A short run that exercises every path (for building and checking the harness)."""
        return replace(self, quick=True, repeats=1, warmup_seconds=1, warm_seconds=3,
                       paced_seconds=3, real_latency_seconds=2, real_max_seconds=3,
                       first_contacts=5, cold_starts=2, storm_requests=200,
                       footprint_requests=20_000, startup_repeats=1, profile_seconds=3)


@dataclass
class Context:
    plan: Plan
    run_dir: Path

    @property
    def repo(self) -> Path:
        return REPO


def have_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None
