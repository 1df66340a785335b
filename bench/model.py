"""What a scenario hands back: tables for the report, targets checked, raw figures for plots.

Everything here is plain data that round-trips through JSON (bench/results/latest.json), so the
report and the plots can be redrawn from a stored run without running anything.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Check:
    """One target (issue 12's list): `met` is None when it could not be measured (skipped).
    An informational check is a bound the issue does not state: shown in its scenario's section
    and in a separate table, never in the list of targets."""

    target: str
    measured: str
    met: bool | None
    margin: str
    informational: bool = False

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]


@dataclass
class ScenarioResult:
    key: str
    title: str
    summary: str = ""
    commands: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)  # CpuMeter.stop()
    skipped: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioResult:
        values = dict(data)
        values["tables"] = [Table(**t) for t in data.get("tables", [])]
        values["checks"] = [Check(**c) for c in data.get("checks", [])]
        return cls(**values)


# ---------------------------------------------------------------------------- target helpers


def at_least(target: str, measured: float, bound: float, fmt: str = "{:.2f}",
             unit: str = "") -> Check:
    """measured ≥ bound."""
    diff = measured - bound
    return Check(target, fmt.format(measured) + unit, diff >= 0,
                 f"{'+' if diff >= 0 else '−'}{fmt.format(abs(diff))}{unit} "
                 f"{'above' if diff >= 0 else 'below'} the bound")


def at_most(target: str, measured: float, bound: float, fmt: str = "{:.2f}",
            unit: str = "") -> Check:
    """measured ≤ bound."""
    diff = bound - measured
    return Check(target, fmt.format(measured) + unit, diff >= 0,
                 f"{fmt.format(abs(diff))}{unit} {'under' if diff >= 0 else 'over'} the bound")


def exactly(target: str, measured: int, wanted: int) -> Check:
    return Check(target, str(measured), measured == wanted,
                 "exact" if measured == wanted else f"off by {measured - wanted:+d}")


def not_measured(target: str, why: str) -> Check:
    return Check(target, "–", None, why)


def informational(check: Check) -> Check:
    """`check` shown for information only (not one of the issue's targets)."""
    return replace(check, informational=True)


# ---------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float], fmt: str = "{:.0f}") -> str:
    """'median (min–max)' of repeated runs."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"
