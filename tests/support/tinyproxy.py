"""A real HTTP CONNECT proxy for tests: Debian's ``tinyproxy`` on a free loopback port.

``.ci/run`` installs the package when the command is missing. The process runs in the
foreground (``-d``) with a configuration and a log file of its own, and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
from pathlib import Path

STARTUP_TIMEOUT = 10.0
REQUEST_RE = re.compile(r"Request \(file descriptor \d+\): (\S+) (\S+) HTTP/")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TinyProxy:
    """One tinyproxy on 127.0.0.1; `basic_auth` = (user, password) makes it demand
    Proxy-Authorization."""

    def __init__(self, directory: Path, *, basic_auth: tuple[str, str] | None = None) -> None:
        self.directory = directory
        self.basic_auth = basic_auth
        self.port = 0
        self.log = directory / "tinyproxy.log"
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _config(self) -> str:
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 30",
                 f'LogFile "{self.log}"', "LogLevel Info", "MaxClients 20",
                 "Allow 127.0.0.1", f'PidFile "{self.directory / "tinyproxy.pid"}"']
        if self.basic_auth is not None:
            lines.append(f"BasicAuth {self.basic_auth[0]} {self.basic_auth[1]}")
        return "\n".join(lines) + "\n"

    async def start(self) -> TinyProxy:
        binary = shutil.which("tinyproxy")
        if binary is None:
            raise RuntimeError("tinyproxy is not installed (.ci/run installs it: "
                               "apt-get install tinyproxy)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.directory / "tinyproxy.conf"
        config.write_text(self._config())
        self._process = await asyncio.create_subprocess_exec(
            binary, "-d", "-c", str(config), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        await self._wait_listening()
        return self

    async def _wait_listening(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STARTUP_TIMEOUT
        while True:
            assert self._process is not None
            if self._process.returncode is not None:
                raise RuntimeError(f"tinyproxy exited with {self._process.returncode}: "
                                   f"{self.log_text()[-2000:]}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if loop.time() > deadline:
                    raise RuntimeError(f"tinyproxy did not listen within {STARTUP_TIMEOUT} s: "
                                       f"{self.log_text()[-2000:]}") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=5)
        except TimeoutError:
            process.kill()
            await process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def requests(self) -> list[tuple[str, str]]:
        """(method, target) of every request line the proxy received, oldest first; the
        probe connection of start() sends none."""
        return REQUEST_RE.findall(self.log_text())
