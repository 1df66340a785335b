"""Warm path by stage: µs of CPU per request per stage of the warm token hop (parse, plan lookup,
build, send, relay, log, metrics ...), before the redesign of issue 12 and now.

"Before" is the tree at :data:`BEFORE` (extracted with ``git archive``), "after" this checkout;
both run the warm-hop sidecar configuration against the same nginx stub, beside the DIY
forwarder. The method and the rules are in :mod:`bench.stages`; this module measures.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench import stages
from bench.ab import materialize
from bench.context import REPO, Context, Plan
from bench.model import ScenarioResult, Table, median
from bench.scenarios.common import interleaved, secret_env
from bench.scenarios.profile import py_spy, record
from bench.sidecar import (
    INBOUND_AUTHORIZATION,
    Loop,
    SidecarProcess,
    base_config,
    static_upstream,
)
from bench.stack import ROUTE, Target, stack
from bench.wrk import WrkLoad

KEY = "stages"
TITLE = "Warm path by stage"
BEFORE = "6eb62b1"  # main before the redesign of issue 12
RATE_HZ = 500
TOP_UNNAMED = 8


@dataclass
class Measured:
    columns: list[stages.Column]
    diy_cpu_us: float
    diy_rps: float
    commands: list[str]


async def measure(ctx: Context, trees: dict[str, Path], *, seconds: float, repeats: int,
                  profile_seconds: float, loop: Loop = "asyncio") -> Measured:
    """CPU per request of each tree's sidecar (and the DIY forwarder's), interleaved; then a
    py-spy profile of each sidecar under the same load, split by stage."""
    async with stack(ctx, ("d" if loop == "asyncio" else "d+uvloop",)) as running:
        assert running.stub is not None
        diy_key = next(iter(running.targets))
        sidecars: list[Target] = []
        for name, tree in trees.items():
            config = base_config(ctx.run_dir, f"stages-{name}",
                                 [static_upstream("bench", running.stub.url)])
            source = None if tree == REPO else tree
            sidecar = SidecarProcess(ctx.run_dir, f"stages-{name}", config, loop, source=source)
            running.hold(sidecar)
            await sidecar.start(timeout=60)
            target = Target(name, str(tree), sidecar.url + ROUTE, sidecar.pid,
                            sidecar.command(), INBOUND_AUTHORIZATION)
            sidecars.append(target)
            running.targets[name] = target
        await running.preflight()
        targets = list(running.targets.values())

        def load_for(target: Target) -> WrkLoad:
            return WrkLoad(target.url, seconds, ctx.plan.connections,
                           max_requests=int(seconds * 200_000), secret_env=secret_env(target))

        runs, commands = await interleaved(targets, load_for, repeats, ctx.repo,
                                           warmup=min(2.0, seconds))
        tool = py_spy()
        if tool is None:
            raise RuntimeError("py-spy is not installed (pip install '.[bench]')")
        columns = []
        shown = [f"({k}) {c}" for k, c in commands.items()]
        for target in sidecars:
            stacks, command = await record(ctx, target, tool, profile_seconds, rate=RATE_HZ,
                                           tag="stages")
            shown.append(f"({target.key}) {command}")
            rs = runs[target.key]
            columns.append(stages.Column(target.key, stages.attribute(stacks),
                                         median([r.cpu_us_per_request for r in rs]),
                                         median([r.rps for r in rs])))
    diy = runs[diy_key]
    return Measured(columns, median([r.cpu_us_per_request for r in diy]),
                    median([r.rps for r in diy]), shown)


def unnamed_note(columns: Sequence[stages.Column]) -> str | None:
    parts = []
    for column in columns:
        top = list(column.split.unnamed.items())[:TOP_UNNAMED]
        if top:
            listed = ", ".join(f"{name} {count * 100 / max(1, column.split.samples):.1f} %"
                               for name, count in top)
            parts.append(f"{column.name}: {listed}")
    if not parts:
        return None
    return f"'{stages.OTHER_SIDECAR}' holds: " + "; ".join(parts) + "."


async def run(ctx: Context) -> ScenarioResult:
    plan = ctx.plan
    result = ScenarioResult(KEY, TITLE, summary=(
        f"µs of CPU per warm-hop request by stage, before the redesign (`git:{BEFORE}`) and "
        f"now (this checkout), each a sidecar with every feature on (JSON log at info, "
        f"metrics, inbound Basic) in front of the nginx stub. CPU per request: `wrk -t1 "
        f"-c{plan.connections} -d{plan.warm_seconds:g}s`, {plan.repeats}× interleaved with the "
        f"DIY forwarder, median. Split: py-spy {RATE_HZ} Hz for {plan.profile_seconds:g} s on "
        "each sidecar under the same load (running threads only); each sample goes to the "
        "stage of the innermost frame a rule names (bench/stages.py), and a stage's µs is its "
        "share of the samples × the measured CPU µs per request, so the rows add up to it."))
    scratch = Path(tempfile.mkdtemp(prefix="dcr-bench-trees-"))
    try:
        trees = {"after": REPO}
        try:
            trees = {"before": materialize(f"git:{BEFORE}", scratch / "before"), **trees}
        except (subprocess.CalledProcessError, OSError) as exc:
            result.notes.append(f"'before' not measured: git archive {BEFORE} failed ({exc}).")
        measured = await measure(ctx, trees, seconds=plan.warm_seconds, repeats=plan.repeats,
                                 profile_seconds=plan.profile_seconds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    header, rows = stages.table_rows(measured.columns)
    result.tables.append(Table("µs of CPU per request by stage (share of the samples)",
                               header, rows))
    result.tables.append(Table("What each row covers", ["stage", "covers"],
                               [[s, stages.MEANING[s]] for s in stages.STAGES]))
    result.notes.append(
        f"For scale: the DIY forwarder used {measured.diy_cpu_us:.1f} µs of CPU per request "
        f"({measured.diy_rps:.0f} req/s) in the same runs; 1.15 × that is "
        f"{measured.diy_cpu_us * 1.15:.1f} µs.")
    note = unnamed_note(measured.columns)
    if note:
        result.notes.append(note)
    result.commands = measured.commands
    result.raw = {"columns": [{"name": c.name, "cpu_us": c.cpu_us, "rps": c.rps,
                               "counts": c.split.counts, "unnamed": c.split.unnamed}
                              for c in measured.columns],
                  "diy_cpu_us": measured.diy_cpu_us, "diy_rps": measured.diy_rps}
    return result


def parse_trees(specs: Sequence[str], scratch: Path) -> dict[str, Path]:
    trees: dict[str, Path] = {}
    for spec in specs:
        name, sep, where = spec.partition("=")
        if not sep:
            name, where = spec, spec
        if not name or name in trees or name in ("d", "d+uvloop"):
            raise ValueError(f"{spec!r}: want [NAME=]TREE with a new NAME (d and d+uvloop "
                             "name the DIY baseline)")
        trees[name] = materialize(where, scratch / f"tree{len(trees)}")
    return trees


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stages", description=stages.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", metavar="[NAME=]TREE")
    parser.add_argument("--seconds", type=float, default=5, help="each CPU run (default 5)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile-seconds", type=float, default=5)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--keep", action="store_true",
                        help="keep the run directory (configs, logs, py-spy's raw stacks)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    scratch = Path(tempfile.mkdtemp(prefix="dcr-bench-trees-"))
    run_dir = Path(tempfile.mkdtemp(prefix="dcr-bench-stages-"))
    try:
        try:
            trees = parse_trees(args.trees, scratch)
        except ValueError as exc:
            parser.error(str(exc))
        except subprocess.CalledProcessError as exc:
            print(f"git archive failed: {exc.stderr!r}", file=sys.stderr)
            return 2
        ctx = Context(replace(Plan(), warm_seconds=args.seconds), run_dir)
        measured = asyncio.run(measure(ctx, trees, seconds=args.seconds, repeats=args.repeats,
                                       profile_seconds=args.profile_seconds, loop=args.loop))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.keep:
            print(f"kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    header, rows = stages.table_rows(measured.columns)
    print(stages.format_table(header, rows))
    print(f"\nDIY forwarder: {measured.diy_cpu_us:.1f} µs CPU/request, {measured.diy_rps:.0f} "
          f"req/s (×1.15 = {measured.diy_cpu_us * 1.15:.1f} µs)")
    for spec in args.trees:
        print(f"tree: {spec}")
    note = unnamed_note(measured.columns)
    if note:
        print(note)
    return 0
