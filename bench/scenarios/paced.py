"""Latency at a fixed rate: 1,000 req/s paced by the Lua delay(), sidecar vs nginx proxy."""

from __future__ import annotations

from bench.context import Context
from bench.model import ScenarioResult, Table, at_most, informational, spread
from bench.scenarios.common import interleaved, p50, p99, secret_env
from bench.stack import Target, stack
from bench.wrk import WrkLoad

KEY = "paced"
TITLE = "Latency at a fixed rate"
KEYS = ("b", "c", "d", "c+uvloop")


async def run(ctx: Context) -> ScenarioResult:
    plan = ctx.plan
    rate, conns = plan.paced_rate, plan.paced_connections
    result = ScenarioResult(KEY, TITLE, summary=(
        f"{rate:,.0f} req/s for {plan.paced_seconds:g} s over {conns} connections "
        f"(`wrk -t1 -c{conns}`, bench/lua/token.lua `delay()` handing out send slots "
        f"1/{rate:,.0f} s apart), {plan.repeats}× interleaved. The stub as in the warm hop."))

    def load_for(target: Target) -> WrkLoad:
        return WrkLoad(target.url, plan.paced_seconds, conns, rate=rate,
                       max_requests=int(plan.paced_seconds * rate * 1.05) + conns,
                       secret_env=secret_env(target))

    async with stack(ctx, KEYS) as running:
        targets = list(running.targets.values())
        runs, commands = await interleaved(targets, load_for, plan.repeats, ctx.repo,
                                           plan.warmup_seconds)
    result.commands = [f"({k}) {cmd}" for k, cmd in commands.items()]
    rows = []
    for t in targets:
        rs = runs[t.key]
        rows.append([f"({t.key})", t.label, spread([r.rps for r in rs]),
                     spread([r.p50_ms for r in rs], "{:.2f}"),
                     spread([r.latency_us["90"] / 1000 for r in rs], "{:.2f}"),
                     spread([r.p99_ms for r in rs], "{:.2f}"),
                     spread([r.latency_us["max"] / 1000 for r in rs], "{:.1f}"),
                     str(sum(r.error_count for r in rs))])
    result.tables.append(Table(
        f"At {rate:,.0f} req/s (median over repeats; min–max)",
        ["", "configuration", "achieved req/s", "p50 ms", "p90 ms", "p99 ms", "max ms",
         "errors"], rows))
    result.raw = {"runs": {k: [r.as_dict() for r in v] for k, v in runs.items()},
                  "labels": {t.key: t.label for t in targets}, "rate": rate}
    result.checks.append(at_most(f"p99 ≤ 3 ms at {rate:,.0f} req/s", p99(runs["c"]), 3.0,
                                 "{:.2f}", " ms"))
    if "c+uvloop" in runs:
        result.checks.append(informational(at_most(
            f"on uvloop: p99 ≤ 3 ms at {rate:,.0f} req/s", p99(runs["c+uvloop"]), 3.0,
            "{:.2f}", " ms")))
    result.notes.append(
        f"nginx proxy for comparison: p50 {p50(runs['b']):.2f} ms, p99 {p99(runs['b']):.2f} ms; "
        f"sidecar p50 {p50(runs['c']):.2f} ms, p99 {p99(runs['c']):.2f} ms.")
    return result
