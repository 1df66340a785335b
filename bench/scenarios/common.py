"""Helpers shared by the wrk-driven scenarios: interleaved repetitions and their summaries."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bench.machine import cpu_seconds
from bench.model import median, spread
from bench.stack import Target
from bench.wrk import WrkLoad, WrkResult, run


async def interleaved(targets: Sequence[Target], load_for: Callable[[Target], WrkLoad],
                      repeats: int, cwd: Path, warmup: float = 0.0
                      ) -> tuple[dict[str, list[WrkResult]], dict[str, str]]:
    """Run A B C D, A B C D, ... `repeats` times; results and the exact command per target."""
    results: dict[str, list[WrkResult]] = {t.key: [] for t in targets}
    commands: dict[str, str] = {}
    if warmup > 0:  # connection pools, first-use caches; not recorded
        for target in targets:
            load = load_for(target)
            load.duration_s, load.max_requests = warmup, 1_000_000
            await run(load, cwd=cwd)
    for _ in range(repeats):
        for target in targets:
            load = load_for(target)
            commands[target.key] = load.command()
            before = cpu_seconds(target.pid) if target.pid is not None else 0.0
            result = await run(load, cwd=cwd)
            if target.pid is not None and result.requests:
                used = cpu_seconds(target.pid) - before
                result.cpu_us_per_request = round(used / result.requests * 1e6, 1)
            results[target.key].append(result)
    return results, commands


def secret_env(target: Target) -> dict[str, str]:
    return {"BENCH_AUTHORIZATION": target.authorization} if target.authorization else {}


def rps(results: Sequence[WrkResult]) -> float:
    return median([r.rps for r in results])


def p50(results: Sequence[WrkResult]) -> float:
    return median([r.p50_ms for r in results])


def p99(results: Sequence[WrkResult]) -> float:
    return median([r.p99_ms for r in results])


def row(key: str, label: str, results: Sequence[WrkResult]) -> list[str]:
    errors = sum(r.error_count for r in results)
    total = sum(r.requests for r in results)
    cpu = [r.cpu_us_per_request for r in results if r.cpu_us_per_request]
    return [f"({key})", label, spread([r.rps for r in results]),
            spread([r.p50_ms for r in results], "{:.2f}"),
            spread([r.p99_ms for r in results], "{:.2f}"),
            spread(cpu, "{:.0f}") if cpu else "–", f"{total:,}", str(errors)]


def cpu_per_request(results: Sequence[WrkResult]) -> float:
    return median([r.cpu_us_per_request for r in results])


COLUMNS = ["", "configuration", "req/s median (min–max)", "p50 ms", "p99 ms",
           "CPU µs/request", "requests", "errors"]
