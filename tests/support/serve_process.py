"""`python -m dcr_sidecar serve` (and other commands) as real processes, for fleet tests.

Output goes to files (never a pipe that could fill and stall a busy process); every wait has
a deadline; a process that is still running at stop() gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.redis_server import free_port
from tests.support.startup import STARTUP_DEADLINE, until_ready

START_DEADLINE = STARTUP_DEADLINE
STOP_DEADLINE = 30.0


class ServeProcess:
    def __init__(self, workdir: Path, name: str, config: dict[str, Any],
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port, self.mgmt = free_port(), free_port()
        self.config = {**config, "listen": {"host": "127.0.0.1", "port": self.port},
                       "management": {"host": "127.0.0.1", "port": self.mgmt}}
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.out_path = workdir / f"{name}.out"
        self.env = {**os.environ, **(env or {})}
        self.process: asyncio.subprocess.Process | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mgmt_url(self) -> str:
        return f"http://127.0.0.1:{self.mgmt}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def spawn(self) -> None:
        self.runs += 1
        with self.out_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dcr_sidecar", "serve", "--config", str(self.config_path),
                env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL)

    async def start(self) -> ServeProcess:
        await self.spawn()
        await self.wait_healthy()
        return self

    async def wait_healthy(self) -> None:
        """Until /healthz answers 200; at once, with its output, when the process exits."""
        assert self.process is not None
        await until_ready(self._healthy(), self.process, what=self.name,
                          output=lambda: self.output()[-3000:])

    async def _healthy(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                try:
                    async with session.get(f"{self.mgmt_url}/healthz") as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.05)

    async def stop(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), STOP_DEADLINE)
            except TimeoutError:
                process.kill()
                await process.wait()
        return process.returncode

    async def wait(self) -> int:
        assert self.process is not None
        return await asyncio.wait_for(self.process.wait(), STOP_DEADLINE)

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if name is None or event.get("event") == name:
                    found.append(event)
        return found


async def run_command(*args: str, env: dict[str, str] | None = None,
                      deadline: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcr_sidecar", *args, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), deadline)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
