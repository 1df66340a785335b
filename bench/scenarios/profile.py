"""Profile of the token hot path: py-spy samples the warm-hop sidecar (and, for comparison, the
DIY forwarder) while wrk loads it; the top of each profile goes into the report."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from bench.context import Context
from bench.model import ScenarioResult, Table
from bench.procs import die_with_parent
from bench.pyspy import Frame, Profile, parse, summarize
from bench.scenarios.common import secret_env
from bench.stack import Target, stack
from bench.wrk import WrkLoad
from bench.wrk import run as run_wrk

KEY = "profile"
TITLE = "Profile of the token hot path"
RATE_HZ = 250
SHOWN_INCLUSIVE = ("dcr_sidecar/", "structlog/")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.is_file() else shutil.which("py-spy")


async def record(ctx: Context, target: Target, tool: str, seconds: float, *, rate: int = RATE_HZ,
                 tag: str = "profile") -> tuple[list[tuple[list[Frame], int]], str]:
    """py-spy on `target`'s process for `seconds` while wrk loads it (closed loop): the raw
    stacks of the samples where a thread was running (no ``--idle``: a thread waiting in epoll
    or on a queue is not sampled), and the command as the report shows it."""
    assert target.pid is not None
    out = ctx.run_dir / f"{tag}-{target.key}.txt"
    argv = [tool, "record", "--pid", str(target.pid), "--duration", str(max(1, round(seconds))),
            "--rate", str(rate), "--format", "raw", "--nolineno", "--output", str(out)]
    load = WrkLoad(target.url, seconds + 3, ctx.plan.connections,
                   max_requests=int(seconds * 100_000), secret_env=secret_env(target))
    wrk_task = asyncio.create_task(run_wrk(load, cwd=ctx.repo))
    try:
        await asyncio.sleep(1)
        spy = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT,
                                                   preexec_fn=die_with_parent)
        said, _ = await asyncio.wait_for(spy.communicate(), seconds + 30)
    finally:
        await wrk_task
    if spy.returncode != 0 or not out.is_file():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {said.decode(errors='replace')}")
    with out.open() as handle:
        stacks = parse(handle)
    # "py-spy", not the path it was run from: the report names no file outside the repository.
    command = " ".join(["py-spy", argv[1], "--pid", "PID", *argv[4:-2], "--output", out.name])
    return stacks, command


async def sample(ctx: Context, target: Target, tool: str) -> tuple[Profile, str]:
    stacks, command = await record(ctx, target, tool, ctx.plan.profile_seconds)
    return summarize(stacks), command


def pct(profile: Profile, count: int) -> str:
    return f"{profile.share(count) * 100:.1f}"


async def run(ctx: Context) -> ScenarioResult:
    result = ScenarioResult(KEY, TITLE, summary=(
        f"py-spy {RATE_HZ} Hz for {ctx.plan.profile_seconds:g} s on the asyncio sidecar of the "
        f"warm hop under `wrk -c{ctx.plan.connections}`, then on the DIY forwarder. Only running "
        "threads are sampled (no `--idle`: a thread waiting in epoll or on a queue is not), so "
        "shares are of busy time."))
    tool = py_spy()
    if tool is None:
        result.skipped = "py-spy is not installed (pip install '.[bench]')"
        return result
    profiles: dict[str, Profile] = {}
    async with stack(ctx, ("c", "d")) as running:
        for key in ("c", "d"):
            profiles[key], command = await sample(ctx, running.targets[key], tool)
            result.commands.append(f"({key}) {command}")
    side, diy = profiles["c"], profiles["d"]
    busy = {k: p.total - p.idle for k, p in profiles.items()}
    result.tables.append(Table(
        "Where the busy time goes, by layer of the innermost frame (% of busy samples)",
        ["layer", "(c) dcr-sidecar", "(d) DIY forwarder"],
        [[name, pct(side, n), pct(diy, dict(diy.layers).get(name, 0))]
         for name, n in side.layers]
        + [["busy samples", str(busy["c"]), str(busy["d"])]]))
    result.tables.append(Table(
        "(c) top functions by self time (% of busy samples)",
        ["function (file)", "self %"], [[name, pct(side, n)] for name, n in side.self_time]))
    result.tables.append(Table(
        "(d) top functions by self time, for comparison (% of busy samples)",
        ["function (file)", "self %"], [[name, pct(diy, n)] for name, n in diy.self_time[:15]]))
    result.tables.append(Table(
        "(c) dcr-sidecar and structlog functions by inclusive time (% of busy samples)",
        ["function (file)", "inclusive %"],
        [[name, pct(side, n)] for name, n in side.inclusive
         if any(marker in name for marker in SHOWN_INCLUSIVE)][:25]))
    result.raw = {k: {"total": p.total, "idle": p.idle, "self": p.self_time,
                      "inclusive": p.inclusive[:80], "layers": p.layers}
                  for k, p in profiles.items()}
    return result
