"""The warm-hop configurations (a)–(d), started together, each a URL wrk can load.

(a) wrk → stub; (b) wrk → nginx reference proxy → stub; (c) wrk → dcr-sidecar → stub;
(d) wrk → do-it-yourself aiohttp forwarder → stub; and (c)/(d) again on uvloop when it is
installed. The stub answers 401 unless the request carries the static client's Basic header,
so a configuration that failed to inject shows up as wrk status errors, not as speed. wrk sends
the sidecars the inbound Basic credential their configuration demands (bench/sidecar.py), the
stub the static client's own; nginx and the DIY forwarder take the request as it comes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import aiohttp

from bench import nginx
from bench.context import Context, have_uvloop
from bench.procs import Proc, free_port, python_env, spawn, wait_http
from bench.sidecar import (
    INBOUND_AUTHORIZATION,
    STATIC_CLIENT_ID,
    STATIC_CLIENT_SECRET,
    Loop,
    SidecarProcess,
    base_config,
    static_upstream,
)
from dcr_sidecar.oauth.client_auth import basic_authorization

STATIC_AUTHORIZATION = basic_authorization(STATIC_CLIENT_ID, STATIC_CLIENT_SECRET)
ROUTE = "/bench/token"


@dataclass
class Target:
    key: str
    label: str
    url: str
    pid: int | None  # the process under test (None for the stub itself)
    command: str
    # What the client must send itself: the static client's Basic (direct to the stub) or
    # the sidecar's inbound credential. Handed to wrk in its secret environment.
    authorization: str | None = None


LABELS = {
    "a": "wrk → stub (nginx return 200)",
    "b": "nginx proxy_pass (keepalive, Basic injected)",
    "c": "dcr-sidecar (static client; JSON log at info, metrics, inbound Basic)",
    "d": "aiohttp DIY forwarder (one ClientSession)",
    "c+uvloop": "dcr-sidecar on uvloop",
    "d+uvloop": "aiohttp DIY forwarder on uvloop",
}


class Stack:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.targets: dict[str, Target] = {}
        self.sidecars: dict[str, SidecarProcess] = {}
        self.stub: nginx.Nginx | None = None
        self._exit = contextlib.AsyncExitStack()

    async def start(self, keys: Sequence[str]) -> Stack:
        run_dir = self.ctx.run_dir
        self.stub = await nginx.stub(run_dir, STATIC_AUTHORIZATION)
        self._exit.push_async_callback(self.stub.stop)
        token_url = f"{self.stub.url}/token"
        for key in keys:
            if key.endswith("+uvloop") and not have_uvloop():
                continue
            loop: Loop = "uvloop" if key.endswith("+uvloop") else "asyncio"
            if key == "a":
                self.targets[key] = Target(key, LABELS[key], token_url, None, "nginx (stub)",
                                           authorization=STATIC_AUTHORIZATION)
            elif key == "b":
                proxy = await nginx.reference_proxy(run_dir, self.stub.port, STATIC_AUTHORIZATION)
                self._exit.push_async_callback(proxy.stop)
                assert proxy.proc is not None
                self.targets[key] = Target(key, LABELS[key], proxy.url + ROUTE, proxy.proc.pid,
                                           f"nginx -c {proxy.name}.conf")
            elif key.startswith("c"):
                sidecar = await self.sidecar(f"sidecar-{loop}", loop)
                self.targets[key] = Target(key, LABELS[key], sidecar.url + ROUTE, sidecar.pid,
                                           sidecar.command(), INBOUND_AUTHORIZATION)
            elif key.startswith("d"):
                proc, port, command = await self._forwarder(loop, token_url)
                self.targets[key] = Target(key, LABELS[key], f"http://127.0.0.1:{port}{ROUTE}",
                                           proc.pid, command)
        await self.preflight()
        return self

    def hold(self, sidecar: SidecarProcess) -> None:
        """Stop `sidecar` with the stack."""
        self._exit.push_async_callback(sidecar.stop)

    async def sidecar(self, name: str, loop: Loop) -> SidecarProcess:
        assert self.stub is not None
        config = base_config(self.ctx.run_dir, name, [static_upstream("bench", self.stub.url)])
        sidecar = SidecarProcess(self.ctx.run_dir, name, config, loop)
        self._exit.push_async_callback(sidecar.stop)
        await sidecar.start()
        self.sidecars[name] = sidecar
        return sidecar

    async def _forwarder(self, loop: Loop, token_url: str) -> tuple[Proc, int, str]:
        port = free_port()
        argv = [sys.executable, "-m", "bench.forwarder", "--port", str(port), "--upstream",
                token_url, "--authorization", STATIC_AUTHORIZATION, "--loop", loop]
        proc = await spawn(f"forwarder-{loop}", argv, log_dir=self.ctx.run_dir,
                           env=python_env(), cwd=self.ctx.repo)
        self._exit.push_async_callback(proc.stop)
        # GET is not routed: any answer below 500 means it is listening.
        await wait_http(f"http://127.0.0.1:{port}/", proc, timeout=20)
        command = (f"python -m bench.forwarder --port {port} --upstream {token_url} "
                   f"--authorization 'Basic …' --loop {loop}")
        return proc, port, command

    async def preflight(self) -> None:
        """Each configuration answers one token request with the stub's exact token."""
        async with aiohttp.ClientSession() as session:
            for target in self.targets.values():
                headers = {"Content-Type": "application/x-www-form-urlencoded"}
                if target.authorization:
                    headers["Authorization"] = target.authorization
                async with session.post(target.url, data="grant_type=client_credentials",
                                        headers=headers) as resp:
                    body = await resp.text()
                    if resp.status != 200 or body != nginx.TOKEN_JSON:
                        raise RuntimeError(f"preflight of ({target.key}) {target.url} failed: "
                                           f"HTTP {resp.status} {body[:200]}")

    async def close(self) -> None:
        await self._exit.aclose()


@contextlib.asynccontextmanager
async def stack(ctx: Context, keys: Sequence[str]) -> AsyncIterator[Stack]:
    running = Stack(ctx)
    try:
        yield await running.start(keys)
    finally:
        await running.close()
