"""Benchmarks of dcr-sidecar against references on one machine (issue #8).

Run with ``make bench`` (never part of ``make test``). Every process listens on 127.0.0.1 only;
every load is bounded in time and in request count and stops by itself. Results land in
``bench/results/latest.json``, ``docs/benchmarks.md`` and ``docs/img/bench-*.png``.

Layout: :mod:`bench.procs` (child processes), :mod:`bench.wrk` (the load generator),
:mod:`bench.nginx` (stub and reference proxy), :mod:`bench.sidecar` (configs and launcher),
:mod:`bench.forwarder` (the do-it-yourself aiohttp baseline), :mod:`bench.fake_as` (a small AS
for first contact and storms), one module per scenario under :mod:`bench.scenarios`, and
:mod:`bench.report` / :mod:`bench.plots` for the output.
"""
