"""The 60-second chaos soak (tests/chaos.py; `make chaos` runs the 5-minute one): a fleet of three
`serve` replicas under the whole fault schedule keeps every invariant. The table is printed
(pytest -s shows it)."""

from __future__ import annotations

from pathlib import Path

from tests.chaos import soak, table

DURATION = 60.0


async def test_chaos_soak_of_60_seconds_keeps_every_invariant(tmp_path: Path) -> None:
    invariants, chaos = await soak(tmp_path, DURATION)
    print("\n" + table(invariants, chaos.seen.faults, chaos.duration))
    assert len(chaos.seen.faults) == len(chaos.schedule())
    assert chaos.seen.statuses["200"] > 100
    failed = [i for i in invariants if not i.holds]
    assert not failed, (failed, chaos.seen.violations[:20])
