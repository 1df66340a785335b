"""First contact: discovery + registration + the first injected token request, for a path
issuer whose first two well-known candidates answer 404 only after 50 ms (bench/fake_as.py).

- floor: one metadata GET (the URL that answers at once) + one registration POST, timed
  separately from a fresh client, summed; the direct token POST is shown beside it;
- with the process already running: the first token request for a not yet resolved upstream
  (one per sample), with the default file store and with the memory store;
- cold start: spawning ``serve`` until the first injected token request has its answer.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from bench.context import Context
from bench.model import ScenarioResult, Table, at_most, informational, median, percentile
from bench.procs import Proc, free_port, python_env, spawn, wait_http, wait_tcp
from bench.sidecar import INBOUND_AUTHORIZATION, SidecarProcess, base_config, dynamic_upstream
from dcr_sidecar.oauth.client_auth import basic_authorization

KEY = "first_contact"
TITLE = "First contact"
DELAY = 0.05
FORM = {"grant_type": "client_credentials"}


async def start_fake_as(ctx: Context, delay: float = DELAY) -> tuple[Proc, str]:
    port = free_port()
    proc = await spawn("fake-as", [sys.executable, "-m", "bench.fake_as", "--port", str(port),
                                   "--delay", str(delay)],
                       log_dir=ctx.run_dir, env=python_env(), cwd=ctx.repo)
    base = f"http://127.0.0.1:{port}"
    await wait_http(f"{base}/__bench/stats", proc, timeout=20)
    return proc, base


async def fake_stats(base: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/__bench/stats") as resp:
        data: dict[str, int] = await resp.json()
        return data


async def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def floor_sample(base: str, tenant: str, well_known: str) -> dict[str, float]:
    """GET metadata, POST registration, POST token: each timed, one fresh client pool."""
    async with aiohttp.ClientSession() as session:
        found: dict[str, Any] = {}

        async def get() -> None:
            async with session.get(f"{base}{well_known}") as resp:
                assert resp.status == 200, resp.status
                found["meta"] = await resp.json()

        async def register() -> None:
            body = {"grant_types": ["client_credentials"], "response_types": [],
                    "token_endpoint_auth_method": "client_secret_basic"}
            async with session.post(found["meta"]["registration_endpoint"], json=body) as resp:
                assert resp.status == 201, resp.status
                found["client"] = await resp.json()

        async def token() -> None:
            client = found["client"]
            auth = basic_authorization(client["client_id"], client["client_secret"])
            async with session.post(found["meta"]["token_endpoint"], data=FORM,
                                    headers={"Authorization": auth}) as resp:
                assert resp.status == 200, resp.status
                await resp.read()

        return {"metadata": await timed(get), "registration": await timed(register),
                "token": await timed(token)}


async def first_request(url: str) -> float:
    """One token request to a sidecar (with its inbound credential) on a fresh connection; its
    duration (fails unless HTTP 200)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        started = time.perf_counter()
        async with s.post(url, data=FORM,
                          headers={"Authorization": INBOUND_AUTHORIZATION}) as resp:
            body = await resp.read()
            elapsed = time.perf_counter() - started
            if resp.status != 200:
                raise RuntimeError(f"{url}: HTTP {resp.status} {body[:300]!r}")
    return elapsed


def _ms_row(label: str, values: list[float]) -> list[str]:
    return [label, f"{median(values) * 1000:.2f}", f"{percentile(values, 90) * 1000:.2f}",
            f"{max(values) * 1000:.2f}", str(len(values))]


async def run(ctx: Context) -> ScenarioResult:
    plan = ctx.plan
    n = plan.first_contacts
    result = ScenarioResult(KEY, TITLE, summary=(
        f"Path issuer `/p` on bench/fake_as.py: the RFC 8414 and OIDC insertion URLs answer 404 "
        f"after {DELAY * 1000:.0f} ms, `/p/.well-known/openid-configuration` at once; "
        f"registration and token endpoints at once. {n} samples each (one new upstream per "
        f"sample), {plan.cold_starts} cold starts."))
    fake, base = await start_fake_as(ctx)
    try:
        floors = [await floor_sample(base, "p", "/p/.well-known/openid-configuration")
                  for _ in range(n)]
        stores = {"file": None, "memory": {"backend": "memory"}}
        sidecars: dict[str, SidecarProcess] = {}
        for label, store in stores.items():
            upstreams = [dynamic_upstream(f"fc{i}", f"{base}/p") for i in range(n)]
            config = base_config(ctx.run_dir, f"sidecar-fc-{label}", upstreams, store=store)
            sidecars[label] = await SidecarProcess(ctx.run_dir, f"sidecar-fc-{label}",
                                                   config).start()
        try:
            running: dict[str, list[float]] = {label: [] for label in stores}
            for i in range(n):
                for label, sidecar in sidecars.items():
                    running[label].append(await first_request(f"{sidecar.url}/fc{i}/token"))
        finally:
            for sidecar in sidecars.values():
                await sidecar.stop()
        cold = [await cold_start(ctx, base, i) for i in range(plan.cold_starts)]
        stats = await fake_stats(base)
    finally:
        await fake.stop()
    floor = [f["metadata"] + f["registration"] for f in floors]
    result.tables.append(Table("Floor (fresh client pool per sample; ms)",
                               ["step", "median", "p90", "max", "samples"], [
        _ms_row("metadata GET (the URL that answers at once)", [f["metadata"] for f in floors]),
        _ms_row("registration POST", [f["registration"] for f in floors]),
        _ms_row("floor = GET + POST", floor),
        _ms_row("(for reference) direct token POST", [f["token"] for f in floors]),
    ]))
    result.tables.append(Table("First contact with the process already running (ms)",
                               ["store", "median", "p90", "max", "samples"],
                               [_ms_row(f"{label} store", v) for label, v in running.items()]))
    result.tables.append(Table("Cold start to the first injected token answer (ms)",
                               ["part", "median", "p90", "max", "samples"], [
        _ms_row("spawn → listening", [c["listening"] for c in cold]),
        _ms_row("first token request (discovery + registration + token)",
                [c["first"] for c in cold]),
        _ms_row("spawn → first token answer", [c["total"] for c in cold]),
    ]))
    expected = n * (1 + len(stores)) + plan.cold_starts
    result.notes.append(
        f"The fake AS counted {stats.get('registrations_p', 0)} registrations (expected "
        f"{expected}), {stats.get('slow_404', 0)} delayed 404s started and "
        f"{stats.get('token_refused_p', 0)} refused token requests.")
    result.raw = {"floor": floors, "running": running, "cold": cold, "stats": stats}
    floor_ms = median(floor) * 1000
    result.checks.append(at_most("first contact ≤ floor + 10 ms (file store, the default)",
                                 median(running["file"]) * 1000, floor_ms + 10, "{:.2f}", " ms"))
    result.checks.append(informational(at_most(
        "first contact ≤ floor + 10 ms (memory store)", median(running["memory"]) * 1000,
        floor_ms + 10, "{:.2f}", " ms")))
    return result


async def cold_start(ctx: Context, base: str, index: int) -> dict[str, float]:
    name = f"sidecar-cold-{index}"
    config = base_config(ctx.run_dir, name, [dynamic_upstream("fc", f"{base}/p")])
    sidecar = SidecarProcess(ctx.run_dir, name, config)
    await sidecar.start(wait=False)
    assert sidecar.proc is not None
    try:
        listening = await wait_tcp(config["listen"]["port"], sidecar.proc)
        first = await first_request(f"{sidecar.url}/fc/token")
        total = time.perf_counter() - sidecar.proc.started
    finally:
        await sidecar.stop()
    return {"listening": listening, "first": first, "total": total}
