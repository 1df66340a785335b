"""Footprint: RSS idle and after 100,000 requests; start-up time to /healthz and RSS with 1,000
configured upstreams (endpoints given, no prefetch: nothing is fetched at start)."""

from __future__ import annotations

import asyncio

from bench.context import Context
from bench.model import ScenarioResult, Table, at_most, informational, median, spread
from bench.procs import rss_kib
from bench.sidecar import (
    INBOUND_ENV,
    SidecarProcess,
    base_config,
    endpoints_upstream,
    static_upstream,
)
from bench.stack import ROUTE, stack
from bench.wrk import WrkLoad
from bench.wrk import run as run_wrk

KEY = "footprint"
TITLE = "Footprint"
SETTLE_S = 2.0
UNUSED_BASE = "http://127.0.0.1:9"  # discard port: never contacted (no prefetch, no request)


def mib(pid: int) -> float:
    return rss_kib(pid) / 1024


async def run_scenario_rss(ctx: Context) -> tuple[dict[str, float], str, dict[str, float]]:
    plan = ctx.plan
    async with stack(ctx, ("c", "d")) as running:
        sidecar, diy = running.targets["c"], running.targets["d"]
        assert sidecar.pid is not None
        assert diy.pid is not None
        await asyncio.sleep(SETTLE_S)
        rss = {"idle": mib(sidecar.pid)}
        diy_idle = mib(diy.pid)
        warm = WrkLoad(sidecar.url, 30, plan.connections, max_requests=1_000,
                       secret_env=INBOUND_ENV)
        await run_wrk(warm, cwd=ctx.repo)
        rss["after 1,000"] = mib(sidecar.pid)
        load = WrkLoad(sidecar.url, plan.footprint_max_seconds, plan.connections,
                       max_requests=plan.footprint_requests, secret_env=INBOUND_ENV)
        done = await run_wrk(load, cwd=ctx.repo)
        rss["after the load"] = mib(sidecar.pid)
        await asyncio.sleep(SETTLE_S)
        rss["after the load + 2 s"] = mib(sidecar.pid)
        info = {"requests": float(done.requests + 1_000), "rps": done.rps,
                "diy_idle": diy_idle, "errors": float(done.error_count)}
    return rss, load.command(), info


async def start_once(ctx: Context, count: int, index: int, stub_url: str
                     ) -> tuple[SidecarProcess, float, float]:
    """A sidecar with `count` upstreams (the last a static client of the stub)."""
    upstreams = [endpoints_upstream(f"u{i:04d}", UNUSED_BASE) for i in range(count - 1)]
    upstreams.append(static_upstream("bench", stub_url))
    name = f"sidecar-{count}-upstreams-{index}"
    sidecar = SidecarProcess(ctx.run_dir, name, base_config(ctx.run_dir, name, upstreams))
    await sidecar.start(timeout=60)
    assert sidecar.healthz_s is not None
    at_healthz = mib(sidecar.pid)
    await asyncio.sleep(SETTLE_S)
    return sidecar, sidecar.healthz_s, max(at_healthz, mib(sidecar.pid))


async def run(ctx: Context) -> ScenarioResult:
    plan = ctx.plan
    result = ScenarioResult(KEY, TITLE, summary=(
        f"RSS is VmRSS from /proc/PID/status. Load: the warm-hop sidecar (static client, nginx "
        f"stub), 1,000 requests, then {plan.footprint_requests:,} more (`wrk -c"
        f"{plan.connections}`). Start-up: spawn → first HTTP answer of /healthz (polled every "
        f"5 ms), {plan.startup_repeats}× each; RSS the larger of at /healthz and "
        f"{SETTLE_S:g} s later."))
    rss, command, info = await run_scenario_rss(ctx)
    result.commands.append(command)
    idle = rss["idle"]
    result.tables.append(Table(
        f"RSS of one sidecar process (MiB; {int(info['requests']):,} requests at "
        f"{info['rps']:,.0f} req/s, {int(info['errors'])} errors)",
        ["moment", "RSS MiB", "vs idle"],
        [[k, f"{v:.1f}", f"{v - idle:+.1f}"] for k, v in rss.items()]
        + [["(for reference) the DIY aiohttp forwarder, idle", f"{info['diy_idle']:.1f}", ""]]))
    startup: dict[int, list[tuple[float, float]]] = {1: [], plan.many_upstreams: []}
    hop: dict[int, list[float]] = {}
    async with stack(ctx, ()) as running:
        assert running.stub is not None
        for index in range(plan.startup_repeats):
            for count, samples in startup.items():
                sidecar, seconds, mem = await start_once(ctx, count, index, running.stub.url)
                try:
                    samples.append((seconds, mem))
                    if index == 0:
                        load = WrkLoad(sidecar.url + ROUTE, plan.warm_seconds / 2,
                                       plan.connections,
                                       max_requests=int(plan.warm_seconds * 100_000),
                                       secret_env=INBOUND_ENV)
                        hop[count] = [(await run_wrk(load, cwd=ctx.repo)).rps]
                finally:
                    await sidecar.stop()
    many = plan.many_upstreams
    result.tables.append(Table(
        "Start-up (median (min–max))",
        ["upstreams", "spawn → /healthz s", "RSS MiB", "warm hop to the last upstream, req/s"],
        [[f"{count:,}", spread([s for s, _ in v], "{:.3f}"), spread([m for _, m in v], "{:.1f}"),
          f"{hop[count][0]:,.0f}" if count in hop else ""] for count, v in startup.items()]))
    added = median([m for _, m in startup[many]]) - median([m for _, m in startup[1]])
    result.raw = {"rss": rss, "info": info,
                  "startup": {str(k): v for k, v in startup.items()},
                  "hop": {str(k): v for k, v in hop.items()}}
    result.checks = [
        at_most("RSS ≤ 80 MB (idle)", idle, 80, "{:.1f}", " MiB"),
        *(informational(check) for check in (
            at_most(f"RSS growth after {plan.footprint_requests:,} requests ≤ 5 MB",
                    rss["after the load + 2 s"] - idle, 5, "{:.1f}", " MiB"),
            at_most(f"{many:,} upstreams start in ≤ 1 s",
                    median([s for s, _ in startup[many]]), 1.0, "{:.3f}", " s"),
            at_most(f"{many:,} upstreams add ≤ 30 MB", added, 30, "{:.1f}", " MiB"))),
    ]
    result.notes.append(
        "MB in the targets is read as MiB (the stricter reading); growth is measured from idle "
        "to 2 s after the load, so it includes the one-off warm-up allocations (the 'after "
        "1,000' row separates them).")
    return result
