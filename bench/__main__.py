"""``python -m bench [--quick] [--only a,b] [--keep]`` — run the scenarios, write the report.

``python -m bench --report-only`` redraws docs/benchmarks.md and the plots from
bench/results/latest.json without running anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import machine
from bench.context import REPO, Context, Plan
from bench.model import ScenarioResult
from bench.scenarios import (
    first_contact,
    footprint,
    paced,
    profile,
    real_as,
    stages,
    storm,
    warm,
)

SCENARIOS: dict[str, ModuleType] = {m.KEY: m for m in (
    warm, paced, real_as, first_contact, storm, footprint, stages, profile)}
RESULTS = REPO / "bench" / "results" / "latest.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short runs, one repetition: for checking the harness only")
    parser.add_argument("--only", default="",
                        help=f"comma-separated scenarios ({', '.join(SCENARIOS)}); the others "
                             "keep their stored results")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs, logs) for inspection")
    parser.add_argument("--report-only", action="store_true",
                        help="redraw the report and plots from the stored results")
    parser.add_argument("--results", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def load_stored(path: Path) -> dict[str, Any]:
    if path.is_file():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {"scenarios": {}}


async def run_scenarios(keys: list[str], plan: Plan, keep: bool) -> dict[str, ScenarioResult]:
    run_dir = Path(tempfile.mkdtemp(prefix="dcr-bench-"))
    ctx = Context(plan, run_dir)
    done: dict[str, ScenarioResult] = {}
    try:
        for key in keys:
            module = SCENARIOS[key]
            print(f"[bench] {module.TITLE} ...", flush=True)
            meter = machine.CpuMeter()
            meter.start()
            started = time.perf_counter()
            try:
                result: ScenarioResult = await module.run(ctx)
            except Exception as exc:
                traceback.print_exc()
                result = ScenarioResult(key, module.TITLE,
                                        skipped=f"failed: {type(exc).__name__}: {exc}")
            result.seconds = round(time.perf_counter() - started, 1)
            result.load = meter.stop()
            done[key] = result
            state = result.skipped or ", ".join(f"{c.target}: {c.verdict}" for c in
                                                result.checks)
            print(f"[bench]   {result.seconds:.0f} s, foreign load "
                  f"{result.load['foreign_cores']:.2f} cores; {state}", flush=True)
    finally:
        if keep:
            print(f"[bench] kept {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return done


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from bench import report

    stored = load_stored(args.results)
    if not args.report_only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()] or list(SCENARIOS)
        unknown = [k for k in keys if k not in SCENARIOS]
        if unknown:
            print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        plan = Plan().shortened() if args.quick else Plan()
        started = datetime.now(UTC)
        results = asyncio.run(run_scenarios(keys, plan, args.keep))
        given = " ".join(sys.argv[1:])
        run = {"date": started.strftime("%Y-%m-%d %H:%M UTC"),
               "command": "make bench" + (f" BENCH_ARGS={shlex.quote(given)}" if given else ""),
               "quick": plan.quick, "plan": plan.__dict__, "scenarios": keys}
        if set(keys) == set(SCENARIOS) or "run" not in stored:
            stored["machine"] = machine.describe()
            stored["run"], stored["partial_runs"] = run, []
        else:  # the header keeps describing the last full run
            stored.setdefault("partial_runs", []).append(run)
        for key, result in results.items():
            stored["scenarios"][key] = result.as_dict() | {"date": run["date"],
                                                          "quick": plan.quick}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n")
    report.write(stored)
    print(f"[bench] wrote {report.DOC.relative_to(REPO)} and plots in "
          f"{report.IMG.relative_to(REPO)}")
    failed = [k for k, v in stored["scenarios"].items()
              if str(v.get("skipped") or "").startswith("failed")]
    if failed:
        print(f"[bench] failed scenario(s): {', '.join(failed)} (see the report)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
