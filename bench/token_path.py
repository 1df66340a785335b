"""Token-path throughput: client_credentials straight to the real oidc-provider, and through a
`dcr-sidecar serve` process with client_secret_basic and with private_key_jwt.

    .venv/bin/python -m bench.token_path [--seconds 5] [--concurrency 16]

Everything runs on 127.0.0.1 (provider, sidecar, load generator) and stops by itself: each run
is bounded by --seconds. Prints one line per setup: requests/s, p50 and p99 latency, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import yaml

from dcr_sidecar.oauth.client_auth import basic_authorization
from tests.support.oidc import OidcProvider

FORM = {"grant_type": "client_credentials", "scope": "api:read"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def sidecar(issuer: str, method: str, workdir: Path) -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    config = {
        "version": 1, "listen": {"host": "127.0.0.1", "port": port},
        "management": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json", "level": "warning"},
        "store": {"backend": "file", "path": str(workdir / f"{method}.json")},
        "security": {"allow_http": ["127.0.0.1"], "allow_private_networks": ["127.0.0.1/32"]},
        "upstreams": [{"name": "acme", "issuer": issuer, "grant_types": ["client_credentials"],
                       "scopes": ["api:read"], "token_endpoint_auth_methods": [method],
                       "prefetch": True}]}
    path = workdir / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcr_sidecar", "serve", "--config", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ})
    base = f"http://127.0.0.1:{port}/acme"
    try:
        await wait_ready(f"{base}/client")
        yield base, process.pid
    finally:
        process.terminate()
        await process.wait()


async def wait_ready(url: str, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < end:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} not ready within {deadline} s")


async def load(url: str, headers: dict[str, str], seconds: float,
               concurrency: int) -> tuple[int, int, list[float]]:
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < end:
                started = time.perf_counter()
                async with session.post(url, data=FORM, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), errors, latencies


def report(name: str, seconds: float, result: tuple[int, int, list[float]],
           cpu: float | None = None) -> None:
    count, errors, latencies = result
    cuts = statistics.quantiles(latencies, n=100)
    own = f"  sidecar CPU {cpu / count * 1e6:5.0f} us/req" if cpu is not None else ""
    print(f"{name:<36} {count / seconds:6.0f} req/s  p50 {cuts[49] * 1000:6.2f} ms  "
          f"p99 {cuts[98] * 1000:6.2f} ms  errors {errors}{own}", flush=True)


async def through(name: str, base: str, pid: int, seconds: float, concurrency: int) -> None:
    before = cpu_seconds(pid)
    result = await load(f"{base}/token", {}, seconds, concurrency)
    report(name, seconds, result, cpu_seconds(pid) - before)


async def main(seconds: float, concurrency: int) -> None:
    async with OidcProvider() as provider:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            async with sidecar(provider.issuer, "client_secret_basic", workdir) as (base, pid):
                store = json.loads((workdir / "client_secret_basic.json").read_text())
                [record] = store["records"].values()
                gen = record["generations"][-1]
                direct = {"Authorization": basic_authorization(gen["client_id"],
                                                               gen["client_secret"])}
                report("direct to oidc-provider (basic)", seconds,
                       await load(f"{provider.issuer}/token", direct, seconds, concurrency))
                await through("via sidecar, client_secret_basic", base, pid, seconds,
                              concurrency)
            async with sidecar(provider.issuer, "private_key_jwt", workdir) as (base, pid):
                await through("via sidecar, private_key_jwt (ES256)", base, pid, seconds,
                              concurrency)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.concurrency))
