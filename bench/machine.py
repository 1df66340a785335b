"""What the benchmark ran on, and how busy the machine was with other work while it ran.

:class:`CpuMeter` reads /proc/stat (all CPU time spent on the machine) and the CPU time of this
process and its descendants (live ones from /proc/PID/stat, exited ones folded into their
parent's cutime/cstime once reaped). The difference is CPU that *other* work took from us
during a measurement: the "foreign load" each scenario reports.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench.procs import rss_kib

REPO = Path(__file__).resolve().parent.parent
_TICKS = os.sysconf("SC_CLK_TCK")


def _first_line(argv: list[str]) -> str:
    exe = shutil.which(argv[0])
    if exe is None:
        return "not installed"
    done = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, check=False)
    out = (done.stdout + done.stderr).strip().splitlines()
    return out[0].strip() if out else "?"


def _dist(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def _oidc_provider_version() -> str:
    manifest = REPO / "tests/oidc/node_modules/oidc-provider/package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "not installed"


def describe() -> dict[str, str]:
    """The machine and tool versions, for the report's header."""
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    nginx = re.sub(r"^nginx version:\s*", "", _first_line(["nginx", "-v"]))
    return {
        "nproc": _first_line(["nproc"]),
        "cpu": _cpu_model(),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "aiohttp": _dist("aiohttp"),
        "structlog": _dist("structlog"),
        "uvloop": _dist("uvloop"),
        "dcr-sidecar": _dist("dcr-sidecar"),
        "nginx": nginx,
        "wrk": _first_line(["wrk", "-v"]).split(" Copyright")[0],
        "node": _first_line(["node", "--version"]),
        "oidc-provider": _oidc_provider_version(),
        "redis-server": _first_line(["redis-server", "--version"]).split(" sha=")[0],
    }


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return platform.system()
    match = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.MULTILINE)
    return match.group(1) if match else platform.system()


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


# ---------------------------------------------------------------------------- CPU accounting


def _machine_ticks() -> tuple[int, int, int]:
    """(busy, total, interrupts) jiffies over all CPUs since boot. Interrupt time is shown
    apart but not subtracted: softirq work done in a process's context (the loopback receive
    path inside a send) is charged to that process as well."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already inside user
    return total - idle, total, fields[5] + fields[6]


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, own ticks, reaped children's ticks) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is state (field 3); utime is field 14 -> index 11.
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])


def _own_ticks(root: int | None = None) -> int:
    """CPU ticks of `root` (default: this process) and every descendant, live or reaped."""
    me = os.getpid() if root is None else root
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None:
                stats[int(entry)] = stat
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [me]
    while todo:
        pid = todo.pop()
        stat = stats.get(pid)
        if stat is None:
            continue
        total += stat[1] + stat[2]
        todo.extend(children.get(pid, []))
    return total


@dataclass
class CpuSample:
    busy: int
    total: int
    interrupts: int
    own: int


class CpuMeter:
    """Foreign CPU share between :meth:`start` and :meth:`stop` (0.0 = a quiet machine):
    machine busy time less the CPU time of this process and its descendants."""

    def __init__(self) -> None:
        self._start: CpuSample | None = None

    @staticmethod
    def sample() -> CpuSample:
        busy, total, interrupts = _machine_ticks()
        return CpuSample(busy, total, interrupts, _own_ticks())

    def start(self) -> None:
        self._start = self.sample()

    def stop(self) -> dict[str, float]:
        assert self._start is not None, "start() first"
        end = self.sample()
        total = max(1, end.total - self._start.total)
        busy = end.busy - self._start.busy
        own = end.own - self._start.own
        interrupts = end.interrupts - self._start.interrupts
        foreign = max(0, busy - own)
        cpus = os.cpu_count() or 1
        return {
            "machine_busy": round(busy / total, 3),
            "ours": round(min(own, busy) / total, 3),
            "interrupts": round(interrupts / total, 3),
            "foreign": round(foreign / total, 3),
            "foreign_cores": round(foreign / total * cpus, 2),
            "seconds": round(total / _TICKS / cpus, 1),
            "loadavg_1m": loadavg()[0],
        }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of `pid` and its descendants so far, in seconds."""
    return _own_ticks(pid) / _TICKS


def rss_mib(pid: int) -> float:
    return round(rss_kib(pid) / 1024, 1)


def versions_line(info: Mapping[str, str]) -> str:
    keys = ("python", "aiohttp", "structlog", "uvloop", "nginx", "wrk", "node", "oidc-provider",
            "redis-server")
    return ", ".join(f"{k} {info[k]}" for k in keys if k in info)
