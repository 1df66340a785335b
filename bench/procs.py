"""Child processes of a benchmark run: started on loopback, tied to our lifetime, stopped by PID.

Invariants:
- Every child gets ``PR_SET_PDEATHSIG`` (SIGTERM), so nothing outlives a killed benchmark.
- Children are stopped by their own PID (SIGTERM, then SIGKILL after a timeout), never by name.
- Output goes to a file in the run's temporary directory, never to a pipe that could fill up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the benchmark process dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` (VmRSS in /proc/PID/status), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Proc:
    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    started: float  # time.perf_counter() just before the spawn

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_mib(self) -> float:
        return rss_kib(self.pid) / 1024

    def alive(self) -> bool:
        return self.process.returncode is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal our child by PID and wait; SIGKILL if it has not exited within `timeout`."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        code = self.process.returncode
        assert code is not None
        return code


async def spawn(name: str, argv: Sequence[str], *, log_dir: Path,
                env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Proc:
    log_path = log_dir / f"{name}.log"
    handle = log_path.open("ab")
    try:
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=handle,
            stderr=asyncio.subprocess.STDOUT, env=dict(env) if env is not None else None,
            cwd=cwd, preexec_fn=die_with_parent)  # prctl only: safe before exec
    finally:
        handle.close()
    return Proc(name, process, log_path, started)


class ProcessFailed(RuntimeError):
    pass


async def wait_http(url: str, proc: Proc | None = None, *, timeout: float = 30.0,
                    interval: float = 0.005) -> float:
    """Poll `url` until it answers below 500; seconds since `proc` was spawned (or since now)."""
    start = proc.started if proc is not None else time.perf_counter()
    deadline = time.perf_counter() + timeout
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=2)) as session:
        while True:
            if proc is not None and not proc.alive():
                raise ProcessFailed(f"{proc.name} exited with {proc.process.returncode}:\n"
                                    f"{proc.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return time.perf_counter() - start
            if time.perf_counter() > deadline:
                tail = proc.log_tail() if proc is not None else ""
                raise ProcessFailed(f"{url} did not answer within {timeout} s\n{tail}")
            await asyncio.sleep(interval)


async def wait_tcp(port: int, proc: Proc, *, timeout: float = 30.0,
                   interval: float = 0.002) -> float:
    """Poll until 127.0.0.1:`port` accepts; seconds since `proc` was spawned."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if not proc.alive():
                raise ProcessFailed(f"{proc.name} exited with {proc.process.returncode}:\n"
                                    f"{proc.log_tail()}") from None
            if time.perf_counter() > deadline:
                raise ProcessFailed(f"port {port} not open within {timeout} s") from None
            await asyncio.sleep(interval)
            continue
        elapsed = time.perf_counter() - proc.started
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return elapsed


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Python children: ours, unbuffered, plus `extra`."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env
