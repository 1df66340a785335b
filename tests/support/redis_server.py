"""A real ``redis-server`` (and ``redis-server --sentinel``) per test, on a free loopback port.

Never the machine's own Redis: every instance is started here, on a port picked at random,
bound to 127.0.0.1, without persistence unless a test asks for a dump (restart with data).
Each process gets PR_SET_PDEATHSIG, so it dies with the test process even when the test is
killed before its teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shutil
import signal
import socket
import ssl
from pathlib import Path

from tests.support.startup import until_ready

STOP_DEADLINE = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def command(port: int, *args: str, tls: ssl.SSLContext | None = None) -> str:
    """Send one command in RESP and return the first reply line (enough for tests)."""
    timeout = 2.0
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=tls), timeout)
    try:
        parts = [f"*{len(args)}\r\n"] + [f"${len(a.encode())}\r\n{a}\r\n" for a in args]
        writer.write("".join(parts).encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        if line.startswith(b"$") and line.strip() != b"$-1":
            line = await asyncio.wait_for(reader.readline(), timeout)
        elif line.startswith(b"*"):  # an array: the first element is enough
            count = int(line[1:])
            items = []
            for _ in range(count):
                await reader.readline()
                items.append((await reader.readline()).decode().strip())
            return " ".join(items)
        return line.decode().strip()
    finally:
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()


class RedisServer:
    """One redis-server process. ``restart()`` starts it again on the same port and dir."""

    def __init__(self, workdir: Path, *, password: str | None = None,
                 sentinel_of: RedisServer | None = None, service: str = "mymaster",
                 tls: tuple[Path, Path, Path] | None = None,
                 replica_of: RedisServer | None = None, quorum: int = 1,
                 down_after_ms: int = 5000, cluster: bool = False) -> None:
        """`tls`: (certificate, key, CA) — then it listens on TLS only. `replica_of`: start as
        that server's replica. `quorum`, `down_after_ms`: a sentinel's failure detection.
        `cluster`: a Redis Cluster node (cluster-node-timeout 1 s)."""
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed: `.ci/run` installs it "
                               "(apt-get install redis-server)")
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.password = password
        self.sentinel_of = sentinel_of
        self.service = service
        self.tls = tls
        self.replica_of = replica_of
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.cluster = cluster
        self.bus_port = free_port() if cluster else 0  # not port + 10000: that may be > 65535
        self.process: asyncio.subprocess.Process | None = None
        self.log = self.dir / "server.log"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        if self.tls is not None:
            return f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _client_tls(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.tls[2])) if self.tls else None

    def _args(self) -> list[str]:
        if self.sentinel_of is not None:
            master = self.sentinel_of
            conf = self.dir / "sentinel.conf"
            lines = [f"port {self.port}", "bind 127.0.0.1", f"dir {self.dir}",
                     f"sentinel monitor {self.service} 127.0.0.1 {master.port} {self.quorum}",
                     f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
                     f"sentinel failover-timeout {self.service} 10000"]
            if master.password:
                lines.append(f"sentinel auth-pass {self.service} {master.password}")
            conf.write_text("\n".join(lines) + "\n")
            return [str(conf), "--sentinel"]
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--dbfilename", "dump.rdb",
                # A replica's full sync starts at once (Redis waits 5 s by default for more
                # replicas to share one diskless transfer: idle time, nothing a test checks).
                "--repl-diskless-sync-delay", "0"]
        if self.password:
            args += ["--requirepass", self.password, "--masterauth", self.password]
        if self.replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(self.replica_of.port)]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "1000", "--cluster-port", str(self.bus_port)]
        if self.tls is not None:
            cert, key, ca = self.tls
            args[1] = "0"  # no plaintext port
            args += ["--tls-port", str(self.port), "--tls-cert-file", str(cert),
                     "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                     "--tls-auth-clients", "no"]
        return args

    async def start(self) -> RedisServer:
        assert self.binary is not None
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                self.binary, *self._args(), stdout=out, stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL, preexec_fn=_die_with_parent)
        await self._wait_ready()
        return self

    def _auth_args(self) -> list[str]:
        return ["AUTH", self.password] if self.password and self.sentinel_of is None else []

    async def ping(self) -> bool:
        try:
            tls = self._client_tls()
            if self.password and self.sentinel_of is None:
                reply = await command(self.port, "AUTH", self.password, tls=tls)
                return reply == "+OK"
            return await command(self.port, "PING", tls=tls) == "+PONG"
        except (OSError, TimeoutError, ValueError, ssl.SSLError):
            return False

    async def _wait_ready(self) -> None:
        """Until it answers (a sentinel: until it knows its master); at once when it exits."""
        assert self.process is not None
        await until_ready(self._answers(), self.process, what=f"redis-server on {self.port}",
                          output=lambda: self.log.read_text(errors="replace")[-2000:])

    async def _answers(self) -> None:
        while True:  # until_ready bounds it
            if await self.ping() and await self._knows_master():
                return
            await asyncio.sleep(0.05)

    async def _knows_master(self) -> bool:
        return self.sentinel_of is None or "127.0.0.1" in await command(
            self.port, "SENTINEL", "get-master-addr-by-name", self.service)

    async def stop(self) -> None:
        """SIGTERM and wait (bounded); SIGKILL if it will not go."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), STOP_DEADLINE)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def kill(self) -> None:
        """SIGKILL: the process dies at once, without a word to its clients or replicas."""
        assert self.process is not None
        self.process.kill()
        await asyncio.wait_for(self.process.wait(), STOP_DEADLINE)

    async def shutdown(self, *, save: bool) -> None:
        """SHUTDOWN [NO]SAVE: an outage; with save=True the data comes back on restart()."""
        assert self.process is not None
        args = self._auth_args()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        cmds = [args] if args else []
        cmds.append(["SHUTDOWN", "SAVE" if save else "NOSAVE"])
        for cmd in cmds:
            writer.write(("".join([f"*{len(cmd)}\r\n"] + [f"${len(a)}\r\n{a}\r\n" for a in cmd])
                          ).encode())
        await writer.drain()
        with contextlib.suppress(OSError, ConnectionError):
            await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await asyncio.wait_for(self.process.wait(), STOP_DEADLINE)

    async def restart(self) -> None:
        await self.stop()
        await self.start()
