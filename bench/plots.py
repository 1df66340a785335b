"""PNG plots of a stored run (matplotlib, Agg backend): one figure per scenario.

Each ``plot_*`` takes the stored JSON of its scenario and returns the file it wrote, or None
when the scenario has nothing to draw (skipped or not run).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend is chosen before pyplot is imported
from matplotlib.axes import Axes

PERCENTILES = ("50", "75", "90", "95", "99", "99.9")
COLORS = {"a": "#9e9e9e", "b": "#2e7d32", "c": "#1565c0", "d": "#ef6c00",
          "c+uvloop": "#64b5f6", "d+uvloop": "#ffb74d"}


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _bars(ax: Axes, labels: list[str], values: list[float], colors: list[str], *,
          fmt: str = "{:,.0f}", errors: list[tuple[float, float]] | None = None) -> None:
    yerr = None
    if errors is not None:
        yerr = [[v - lo for v, (lo, _) in zip(values, errors, strict=True)],
                [hi - v for v, (_, hi) in zip(values, errors, strict=True)]]
    bars = ax.bar(labels, values, color=colors, yerr=yerr, capsize=4)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                    textcoords="offset points")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _wrk_runs(data: dict[str, Any], key: str = "runs") -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = data["raw"].get(key, {})
    return runs


def plot_warm(data: dict[str, Any], out: Path) -> Path | None:
    runs = _wrk_runs(data)
    if not runs:
        return None
    keys = list(runs)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    values = [_median([r["rps"] for r in runs[k]]) for k in keys]
    spans = [(min(r["rps"] for r in runs[k]), max(r["rps"] for r in runs[k])) for k in keys]
    _bars(left, [f"({k})" for k in keys], values, [COLORS.get(k, "#777") for k in keys],
          errors=spans)
    left.set_yscale("log")
    left.set_ylim(bottom=100)
    left.set_ylabel("requests/s (log scale; bars: median, whiskers: min–max)")
    left.set_title("Warm token hop: throughput, wrk -t1 -c32")
    for key in keys:
        points = [_median([r["latency_us"][p] / 1000 for r in runs[key]]) for p in PERCENTILES]
        right.plot(PERCENTILES, points, marker="o", label=f"({key})",
                   color=COLORS.get(key, "#777"))
    right.set_yscale("log")
    right.set_xlabel("percentile")
    right.set_ylabel("latency ms (log scale)")
    right.set_title("Warm token hop: latency by percentile")
    right.legend(fontsize=8)
    return _save(fig, out)


def plot_paced(data: dict[str, Any], out: Path) -> Path | None:
    runs = _wrk_runs(data)
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in runs:
        points = [_median([r["latency_us"][p] / 1000 for r in runs[key]]) for p in PERCENTILES]
        ax.plot(PERCENTILES, points, marker="o", label=f"({key})", color=COLORS.get(key, "#777"))
    ax.axhline(3.0, color="#c62828", linestyle="--", linewidth=1, label="target p99 3 ms")
    ax.set_yscale("log")
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency ms (log scale)")
    ax.set_title(f"Latency at {data['raw'].get('rate', 1000):,.0f} req/s")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_real_as(data: dict[str, Any], out: Path) -> Path | None:
    raw = data["raw"]
    if "latency" not in raw:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    lat = raw["latency"]
    labels = ["direct p50", "via sidecar p50", "direct p99", "via sidecar p99"]
    values = [_median([r["latency_us"][p] / 1000 for r in lat[k]])
              for p in ("50", "99") for k in ("direct", "sidecar")]
    _bars(left, labels, values, ["#6d4c41", "#1565c0"] * 2, fmt="{:.2f}")
    left.set_ylabel("ms")
    left.set_title("oidc-provider client_credentials, one connection")
    peak = raw["peak"]
    names = {"direct": "provider direct", "c": "sidecar → stub", "sidecar": "sidecar → provider"}
    _bars(right, [names[k] for k in peak], [_median([r["rps"] for r in peak[k]]) for k in peak],
          ["#6d4c41", "#1565c0", "#64b5f6"][:len(peak)])
    right.set_ylabel("requests/s")
    right.set_title("Maximum rates, 32 connections")
    return _save(fig, out)


def plot_first_contact(data: dict[str, Any], out: Path) -> Path | None:
    raw = data["raw"]
    if "floor" not in raw:
        return None
    floor = [(f["metadata"] + f["registration"]) * 1000 for f in raw["floor"]]
    series = {"floor (GET + POST)": floor}
    for label, values in raw["running"].items():
        series[f"first contact, {label} store"] = [v * 1000 for v in values]
    series["cold start: first request"] = [c["first"] * 1000 for c in raw["cold"]]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.boxplot(list(series.values()), showfliers=True)
    ax.set_xticks(range(1, len(series) + 1), list(series), fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title("First contact (path issuer, two candidates 404 after 50 ms)")
    return _save(fig, out)


def plot_storm(data: dict[str, Any], out: Path) -> Path | None:
    raw = data["raw"]
    labels, values, colors = [], [], []
    for store in ("redis", "file"):
        if store not in raw:
            continue
        for phase in ("cold", "warm"):
            for p in ("p50", "p99"):
                labels.append(f"{store} {phase}\n{p}")
                values.append(raw[store][f"{phase}_{p}_ms"])
                colors.append("#1565c0" if phase == "cold" else "#90caf9")
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _bars(ax, labels, values, colors, fmt="{:.0f}")
    ax.axhline(raw["floor_ms"] + 50, color="#c62828", linestyle="--", linewidth=1,
               label="target: floor + 50 ms")
    ax.set_ylabel("ms per request (wrk)")
    ax.set_title("Registration storm: first contact (cold) vs the same burst registered (warm)")
    ax.legend(fontsize=8)
    return _save(fig, out)


def plot_footprint(data: dict[str, Any], out: Path) -> Path | None:
    raw = data["raw"]
    if "rss" not in raw:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rss = raw["rss"]
    _bars(left, [k.replace("after the load", "after load") for k in rss], list(rss.values()),
          ["#1565c0"] * len(rss), fmt="{:.1f}")
    left.axhline(80, color="#c62828", linestyle="--", linewidth=1, label="idle target 80 MB")
    left.set_ylabel("RSS MiB")
    left.set_title("RSS of one sidecar")
    left.legend(fontsize=8)
    startup = raw["startup"]
    counts = list(startup)
    _bars(right, [f"{int(c):,} upstream(s)" for c in counts],
          [_median([s for s, _ in startup[c]]) for c in counts], ["#1565c0", "#64b5f6"],
          fmt="{:.3f} s")
    right.axhline(1.0, color="#c62828", linestyle="--", linewidth=1, label="target 1 s")
    right.set_ylabel("spawn → /healthz, s")
    right.set_title("Start-up")
    right.legend(fontsize=8)
    return _save(fig, out)


PLOTS: dict[str, Callable[[dict[str, Any], Path], Path | None]] = {
    "warm": plot_warm, "paced": plot_paced, "real_as": plot_real_as,
    "first_contact": plot_first_contact, "storm": plot_storm, "footprint": plot_footprint,
}


def draw(key: str, data: dict[str, Any], directory: Path) -> Path | None:
    plot = PLOTS.get(key)
    if plot is None or data.get("skipped"):
        return None
    directory.mkdir(parents=True, exist_ok=True)
    return plot(data, directory / f"bench-{key.replace('_', '-')}.png")
