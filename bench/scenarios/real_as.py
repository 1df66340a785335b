"""In front of the real AS (node oidc-provider): the p50 the sidecar adds to a client_credentials
token request, and the sidecar's maximum rate (in front of the stub) against the provider's own.

The sidecar registers its client once (``prefetch``) before anything is measured; the direct
requests authenticate as that same client, with credentials read from the sidecar's file store
and handed to wrk in its environment — never printed, never stored in the results.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from bench.context import Context
from bench.model import ScenarioResult, Table, at_least, at_most, spread
from bench.scenarios.common import interleaved, p50, rps, secret_env
from bench.sidecar import INBOUND_AUTHORIZATION, SidecarProcess, base_config, dynamic_upstream
from bench.stack import Target, stack
from bench.wrk import WrkLoad, WrkResult
from dcr_sidecar.oauth.client_auth import basic_authorization
from tests.support.oidc import OidcProvider

KEY = "real_as"
TITLE = "In front of the real AS (oidc-provider)"


def stored_authorization(store: Path, upstream: str) -> str:
    """The Basic value for the current generation the sidecar stored for `upstream`."""
    doc = json.loads(store.read_text())
    record = next(r for r in doc["records"].values() if r["upstream"] == upstream)
    current = [g for g in record["generations"] if g.get("superseded_at") is None][-1]
    if current["token_endpoint_auth_method"] != "client_secret_basic":
        raise RuntimeError(f"expected client_secret_basic, the AS registered "
                           f"{current['token_endpoint_auth_method']}")
    return basic_authorization(current["client_id"], current["client_secret"])


async def wait_registered(sidecar: SidecarProcess, upstream: str, timeout: float = 20) -> None:
    url = f"{sidecar.url}/{upstream}/client"
    async with aiohttp.ClientSession() as session:
        for _ in range(int(timeout / 0.05)):
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"the sidecar did not register at {url}")


def _row(label: str, results: list[WrkResult]) -> list[str]:
    return [label, spread([r.rps for r in results]),
            spread([r.p50_ms for r in results], "{:.2f}"),
            spread([r.p99_ms for r in results], "{:.2f}"),
            str(sum(r.error_count for r in results))]


async def run(ctx: Context) -> ScenarioResult:
    plan = ctx.plan
    result = ScenarioResult(KEY, TITLE, summary=(
        "node oidc-provider (tests/oidc/server.mjs, Map storage), client_credentials. Added "
        f"latency: `wrk -c1` closed loop, {plan.real_latency_seconds:g} s each, direct vs "
        f"through the sidecar, {plan.repeats}× interleaved. Maximum rates: `wrk -c"
        f"{plan.connections}` closed loop, {plan.real_max_seconds:g} s each, the provider "
        "direct vs the sidecar in front of the nginx stub, interleaved."))
    async with OidcProvider() as provider, stack(ctx, ("c",)) as running:
        config = base_config(ctx.run_dir, "sidecar-op",
                             [dynamic_upstream("op", provider.issuer, prefetch=True)])
        sidecar = SidecarProcess(ctx.run_dir, "sidecar-op", config)
        await sidecar.start()
        try:
            await wait_registered(sidecar, "op")
            authorization = stored_authorization(sidecar.store_path, "op")
            async with aiohttp.ClientSession() as session, session.get(
                    f"{provider.issuer}/.well-known/openid-configuration") as resp:
                token_endpoint = str((await resp.json())["token_endpoint"])
            direct = Target("direct", "oidc-provider direct", token_endpoint, None,
                            "node tests/oidc/server.mjs", authorization=authorization)
            via = Target("sidecar", "dcr-sidecar → oidc-provider", f"{sidecar.url}/op/token",
                         sidecar.pid, sidecar.command(), authorization=INBOUND_AUTHORIZATION)
            stub_sidecar = running.targets["c"]

            def latency_load(target: Target) -> WrkLoad:
                return WrkLoad(target.url, plan.real_latency_seconds, 1,
                               max_requests=int(plan.real_latency_seconds * 20_000),
                               secret_env=secret_env(target))

            def max_load(target: Target) -> WrkLoad:
                return WrkLoad(target.url, plan.real_max_seconds, plan.connections,
                               max_requests=int(plan.real_max_seconds * 200_000),
                               secret_env=secret_env(target))

            lat, lat_cmds = await interleaved([direct, via], latency_load, plan.repeats,
                                              ctx.repo, plan.warmup_seconds)
            peak, peak_cmds = await interleaved([direct, stub_sidecar, via], max_load,
                                                plan.repeats, ctx.repo)
        finally:
            await sidecar.stop()
    result.commands = [f"latency, {k}: {c}" for k, c in lat_cmds.items()]
    result.commands += [f"maximum rate, {k}: {c}" for k, c in peak_cmds.items()]
    added = p50(lat["sidecar"]) - p50(lat["direct"])
    result.tables.append(Table(
        "Added latency, one connection (median over repeats; min–max)",
        ["path", "req/s", "p50 ms", "p99 ms", "errors"],
        [_row("oidc-provider direct", lat["direct"]),
         _row("dcr-sidecar → oidc-provider", lat["sidecar"]),
         ["added by the sidecar", "", f"{added:+.2f}", "", ""]]))
    ratio = rps(peak["c"]) / rps(peak["direct"])
    result.tables.append(Table(
        f"Maximum rates, {plan.connections} connections (median over repeats; min–max)",
        ["path", "req/s", "p50 ms", "p99 ms", "errors"],
        [_row("oidc-provider direct", peak["direct"]),
         _row("dcr-sidecar → nginx stub", peak["c"]),
         _row("dcr-sidecar → oidc-provider (both on the same 2 cores)", peak["sidecar"]),
         ["sidecar (stub) ÷ provider", f"{ratio:.2f}", "", "", ""]]))
    result.raw = {"latency": {k: [r.as_dict() for r in v] for k, v in lat.items()},
                  "peak": {k: [r.as_dict() for r in v] for k, v in peak.items()}}
    result.checks = [
        at_most("in front of oidc-provider: ≤ +0.5 ms p50", added, 0.5, "{:.2f}", " ms"),
        at_least("sidecar's max rate ≥ 1.0 × the provider's own", ratio, 1.0, "{:.2f}", "×"),
    ]
    return result
