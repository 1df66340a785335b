"""Running wrk with bench/lua/token.lua and reading its one-line JSON result."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import die_with_parent

LUA = Path(__file__).resolve().parent / "lua" / "token.lua"
MARKER = "BENCH_RESULT "
STOPPED = "BENCH_STOPPED"
DEFAULT_MAX_REQUESTS = 10_000_000
UNKNOWN_EXIT = 255  # what asyncio reports for a child it could not reap itself


@dataclass
class WrkLoad:
    """One wrk invocation: what is shown in the report is exactly what runs."""

    url: str
    duration_s: float
    connections: int = 32
    max_requests: int = DEFAULT_MAX_REQUESTS
    rate: float = 0.0  # 0 = closed loop
    one_shot: bool = False  # each connection sends one request, all at once
    body: str = "grant_type=client_credentials"
    secret_env: dict[str, str] = field(default_factory=dict)  # never shown, never stored

    def env(self) -> dict[str, str]:
        shown = {"BENCH_MAX_REQUESTS": str(self.max_requests), "BENCH_BODY": self.body}
        if self.rate:
            shown |= {"BENCH_RATE": f"{self.rate:g}"}
        if self.one_shot:
            shown |= {"BENCH_ONE_SHOT": "1"}
        if self.rate or self.one_shot:
            shown |= {"BENCH_CONNECTIONS": str(self.connections)}
        return shown

    def argv(self) -> list[str]:
        duration = max(1, round(self.duration_s))
        return ["wrk", "-t1", f"-c{self.connections}", f"-d{duration}s", "--timeout", "5s",
                "-s", str(LUA.relative_to(LUA.parent.parent.parent)), self.url]

    def command(self) -> str:
        """The exact command line (secret environment shown by name only)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env().items())
        hidden = " ".join(f"{k}=…" for k in self.secret_env)
        return " ".join(p for p in (hidden, env, shlex.join(self.argv())) if p)


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    errors: dict[str, int]
    latency_us: dict[str, float]
    capped: bool
    answers_ms: list[float]  # one-shot: when each answer came, ms after the first send
    cpu_us_per_request: float = 0.0  # of the process under test, when the caller measured it

    @property
    def p50_ms(self) -> float:
        return self.latency_us["50"] / 1000

    @property
    def p99_ms(self) -> float:
        return self.latency_us["99"] / 1000

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class WrkFailed(RuntimeError):
    pass


async def _interrupt_until_exit(process: asyncio.subprocess.Process) -> None:
    while process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        await asyncio.sleep(0.1)


async def _read(process: asyncio.subprocess.Process) -> tuple[str, str]:
    """stdout and stderr; on the script's stop marker, SIGINT ends wrk's -d sleep early."""
    assert process.stdout is not None
    assert process.stderr is not None
    errors = asyncio.create_task(process.stderr.read())
    lines: list[str] = []
    interrupter: asyncio.Task[None] | None = None
    while line := (await process.stdout.readline()).decode(errors="replace"):
        lines.append(line)
        if line.startswith(STOPPED) and interrupter is None:
            interrupter = asyncio.create_task(_interrupt_until_exit(process))
    await process.wait()
    if interrupter is not None:
        await interrupter
    return "".join(lines), (await errors).decode(errors="replace")


async def run(load: WrkLoad, *, cwd: Path) -> WrkResult:
    env = dict(os.environ, **load.env(), **load.secret_env)
    process = await asyncio.create_subprocess_exec(
        *load.argv(), cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent)  # prctl only: safe before exec
    # wrk stops itself after -d at the latest; the margin only guards against a wedged wrk.
    try:
        text, err = await asyncio.wait_for(_read(process), load.duration_s + 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise WrkFailed(f"wrk did not finish: {load.command()}") from None
    line = next((ln for ln in text.splitlines() if ln.startswith(MARKER)), None)
    # 255 with the result line printed: asyncio's child watcher found wrk already reaped
    # ("Unknown child process pid ..., will report returncode 255", seen once in a storm burst
    # on a loaded machine) — the run itself finished: done() printed its figures.
    if process.returncode not in (0, UNKNOWN_EXIT) or line is None:
        raise WrkFailed(f"wrk failed ({process.returncode}): {load.command()}\n{text}\n{err}")
    return parse(json.loads(line[len(MARKER):]))


def parse(data: dict[str, Any]) -> WrkResult:
    capped = data["capped_ms"] > 0
    seconds = data["capped_ms"] / 1000 if capped else data["duration_us"] / 1e6
    requests = int(data["requests"])
    latency = {str(k): float(v) for k, v in data["latency_us"].items()}
    return WrkResult(requests=requests, seconds=round(seconds, 3),
                     rps=round(requests / seconds, 1) if seconds else 0.0,
                     errors={k: int(v) for k, v in data["errors"].items()},
                     latency_us=latency, capped=capped,
                     answers_ms=[float(v) for v in data.get("answers_ms", [])])
