"""dcr-sidecar under test: the YAML configurations of the scenarios and a process launcher.

Every configuration keeps the product's defaults except what a loopback benchmark needs:
plain http and private addresses allowed for 127.0.0.1 only, ports picked here, the store in the
run's temporary directory, and ``shutdown.delay: 0`` so a stop does not wait five seconds.
Logging stays JSON at info: one canonical line per request, redaction on. Every configuration
demands the inbound client credentials (``inbound.client_secret``: the app authenticates to the
sidecar with HTTP Basic, which the sidecar checks and swaps for the upstream's), so every client
of a sidecar here sends :data:`INBOUND_AUTHORIZATION` — the product with all its features on.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote_plus

import yaml

from bench.context import REPO
from bench.procs import Proc, ProcessFailed, free_port, python_env, spawn, wait_http

Loop = Literal["asyncio", "uvloop"]
STATIC_CLIENT_ID = "bench-client"
STATIC_CLIENT_SECRET = "bench-secret-0123456789"  # a fixed benchmark value, not a credential
INBOUND_CLIENT_ID = "bench-app"
INBOUND_CLIENT_SECRET = "bench-inbound-0123456789"  # a fixed benchmark value, not a credential


def basic(client_id: str, client_secret: str) -> str:
    """An HTTP Basic value as RFC 6749 §2.3.1 builds it (form-encoded id and secret)."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


# What the app sends to every sidecar here (wrk: in its secret environment, never printed).
INBOUND_AUTHORIZATION = basic(INBOUND_CLIENT_ID, INBOUND_CLIENT_SECRET)
INBOUND_ENV = {"BENCH_AUTHORIZATION": INBOUND_AUTHORIZATION}  # a WrkLoad's secret_env


def base_config(run_dir: Path, name: str, upstreams: list[dict[str, Any]], *,
                store: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "version": 1,
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "management": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json", "level": "info"},
        "inbound": {"client_id": INBOUND_CLIENT_ID, "client_secret": INBOUND_CLIENT_SECRET},
        "shutdown": {"delay": 0, "grace": 2},
        "store": store or {"backend": "file", "path": str(run_dir / f"{name}-store.json")},
        "security": {"allow_http": ["127.0.0.1"], "allow_private_networks": ["127.0.0.1/32"]},
        "upstreams": upstreams,
    }


def static_upstream(name: str, token_base: str) -> dict[str, Any]:
    """A static client whose endpoints are given: no discovery, no registration."""
    return {
        "name": name,
        "issuer": token_base,
        "endpoints": {"authorization_endpoint": f"{token_base}/authorize",
                      "token_endpoint": f"{token_base}/token"},
        "client_id": STATIC_CLIENT_ID,
        "client_secret": STATIC_CLIENT_SECRET,
        "grant_types": ["client_credentials"],
    }


def dynamic_upstream(name: str, issuer: str, **extra: Any) -> dict[str, Any]:
    """A client registered on first contact (or at start with prefetch)."""
    return {"name": name, "issuer": issuer, "registration": "dcr",
            "grant_types": ["client_credentials"], **extra}


def endpoints_upstream(name: str, base: str) -> dict[str, Any]:
    """A dynamic upstream with configured endpoints: nothing is fetched until first use."""
    return {
        "name": name,
        "issuer": f"{base}/{name}",
        "registration": "dcr",
        "grant_types": ["client_credentials"],
        "endpoints": {"authorization_endpoint": f"{base}/{name}/authorize",
                      "token_endpoint": f"{base}/{name}/token",
                      "registration_endpoint": f"{base}/{name}/register"},
    }


class SidecarProcess:
    """One ``serve`` process; ``start()`` returns once /healthz answers."""

    def __init__(self, run_dir: Path, name: str, config: dict[str, Any],
                 loop: Loop = "asyncio", source: Path | None = None) -> None:
        self.run_dir = run_dir
        self.name = name
        self.config = config
        self.loop = loop
        self.source = source  # another tree's dcr_sidecar/ (bench.ab); None: this checkout
        self.config_path = run_dir / f"{name}.yaml"
        self.proc: Proc | None = None
        self.healthz_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['listen']['port']}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.config['management']['port']}"

    @property
    def store_path(self) -> Path:
        return Path(self.config["store"]["path"])

    def argv(self) -> list[str]:
        args = ["--loop", self.loop, "serve", "--config", str(self.config_path)]
        if self.source is None:
            return [sys.executable, "-m", "bench.run_sidecar", *args]
        # The other tree's dcr_sidecar first on sys.path; bench.run_sidecar from this checkout.
        code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from bench.run_sidecar import main; raise SystemExit(main(sys.argv[1:]))")
        return [sys.executable, "-c", code, str(self.source), *args]

    def command(self) -> str:
        return (f"python -m bench.run_sidecar --loop {self.loop} serve --config "
                f"{self.config_path.name}")

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    async def start(self, *, wait: bool = True, timeout: float = 30.0) -> SidecarProcess:
        self.write_config()
        self.proc = await spawn(self.name, self.argv(), log_dir=self.run_dir, env=python_env(),
                                cwd=REPO)
        if wait:
            self.healthz_s = await wait_http(f"{self.management_url}/healthz", self.proc,
                                             timeout=timeout)
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ProcessFailed(f"{self.name} is not running")
        return self.proc.pid

    def log_lines(self) -> int:
        if self.proc is None:
            return 0
        with self.proc.log_path.open("rb") as handle:
            return sum(1 for _ in handle)

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        code = await self.proc.stop()
        self.proc = None
        return code


async def check_config(run_dir: Path, name: str, config: dict[str, Any]) -> tuple[int, str]:
    """Run ``check-config`` on `config`: (exit code, output)."""
    path = run_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcr_sidecar", "check-config", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=python_env())
    out, _ = await process.communicate()
    return int(process.returncode or 0), out.decode(errors="replace").strip()
