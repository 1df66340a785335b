"""``python -m bench.ab NAME=TREE [NAME=TREE ...]`` — the warm hop of several source trees,
interleaved in one run, beside the DIY baseline: to measure a hot-path change before merging it.

TREE is a directory holding a ``dcr_sidecar/`` package (``.`` for this checkout) or
``git:REV`` (extracted with ``git archive`` into a temporary directory). Each tree's sidecar runs
the same static-client configuration against the same nginx stub; the figures that matter on a
shared machine are the CPU µs per request (median and min over the repeats).

    python -m bench.ab --repeats 5 main=git:main branch=.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.context import REPO, Context, Plan
from bench.model import median
from bench.scenarios.common import interleaved, secret_env
from bench.sidecar import (
    INBOUND_AUTHORIZATION,
    Loop,
    SidecarProcess,
    base_config,
    endpoints_upstream,
    static_upstream,
)
from bench.stack import ROUTE, Target, stack
from bench.wrk import WrkLoad


def materialize(spec: str, into: Path) -> Path:
    if not spec.startswith("git:"):
        return Path(spec).resolve()
    rev = spec[len("git:"):]
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev, "dcr_sidecar"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


async def compare(trees: dict[str, Path], args: argparse.Namespace) -> None:
    loop: Loop = args.loop
    run_dir = Path(tempfile.mkdtemp(prefix="dcr-bench-ab-"))
    ctx = Context(Plan(), run_dir)
    try:
        async with stack(ctx, ("d" if loop == "asyncio" else "d+uvloop",)) as running:
            assert running.stub is not None
            targets = list(running.targets.values())
            for name, tree in trees.items():
                upstreams = [endpoints_upstream(f"u{i:04d}", "http://127.0.0.1:9")
                             for i in range(args.upstreams - 1)]
                upstreams.append(static_upstream("bench", running.stub.url))
                config = base_config(run_dir, f"ab-{name}", upstreams)
                source = None if tree == REPO else tree
                sidecar = SidecarProcess(run_dir, f"ab-{name}", config, loop, source=source)
                running.hold(sidecar)
                await sidecar.start(timeout=60)
                targets.append(Target(name, str(tree), sidecar.url + ROUTE, sidecar.pid, "",
                                      INBOUND_AUTHORIZATION))
            await running.preflight()
            runs, _ = await interleaved(
                targets, lambda t: WrkLoad(t.url, args.seconds, 32, secret_env=secret_env(t)),
                args.repeats, REPO, warmup=1)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    print(f"{'':10} {'req/s':>8} {'CPU µs/req':>11} {'min':>7} {'p50 ms':>7}  source")
    for target in targets:
        rs = runs[target.key]
        print(f"{target.key:10} {median([r.rps for r in rs]):8.0f} "
              f"{median([r.cpu_us_per_request for r in rs]):11.1f} "
              f"{min(r.cpu_us_per_request for r in rs):7.1f} "
              f"{median([r.p50_ms for r in rs]):7.2f}  {target.label}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", metavar="NAME=TREE")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--upstreams", type=int, default=1,
                        help="configured upstreams (the benchmarked one is the last)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dcr-bench-trees-"))
    try:
        trees: dict[str, Path] = {}
        for spec in args.trees:
            name, sep, where = spec.partition("=")
            if not sep or not name or name in trees or name in ("d", "d+uvloop"):
                parser.error(f"{spec!r}: want NAME=TREE with a new NAME (d and d+uvloop name "
                             "the DIY baseline)")
            trees[name] = materialize(where, scratch / name)
        asyncio.run(compare(trees, args))
    except subprocess.CalledProcessError as exc:
        print(f"git archive failed: {exc.stderr!r}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
