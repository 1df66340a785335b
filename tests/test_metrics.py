"""GET /metrics (design.md §2.3): per-sidecar registry, bounded labels, request and resolver
counters, scrape-time gauges — against the real provider and real failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from dcr_sidecar.app import Sidecar
from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.test_routes_errors import closed_port


def cc_upstream(issuer: str, name: str = "acme", **extra: Any) -> dict[str, Any]:
    """A dynamic client for client_credentials only (no browser needed)."""
    return {"name": name, "issuer": issuer, "grant_types": ["client_credentials"],
            "redirect_uris": [], **extra}


async def scrape(side: Sidecar) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.management.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def token(side: Sidecar, name: str = "acme") -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{side.listen.url}/{name}/token", data={"grant_type": "client_credentials"}) as resp:
        body: dict[str, Any] = await resp.json()
        assert resp.status == 200, body
        return body


async def test_request_and_resolution_metrics_after_a_real_token_call(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """One token call: requests_total and the duration histogram by route template, one
    discovery, one registration, upstream call durations by endpoint, the expiry gauge."""
    provider = await oidc()
    side = await sidecar({"upstreams": [cc_upstream(provider.issuer)]})
    leak_guard.add_token_response(await token(side))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{side.listen.url}/nope/client") as resp:
            assert resp.status == 404
        async with session.get(f"{side.listen.url}/no/such/route/here") as resp:
            assert resp.status == 404
    samples = await scrape(side)
    assert value(samples, "dcr_sidecar_requests_total", upstream="acme",
                 route="/{name}/token", code="200") == 1
    assert value(samples, "dcr_sidecar_request_duration_seconds_count", upstream="acme",
                 route="/{name}/token") == 1
    # A client-chosen name or path never becomes a label value.
    assert value(samples, "dcr_sidecar_requests_total", upstream="unknown",
                 route="/{name}/client", code="404") == 1
    assert value(samples, "dcr_sidecar_requests_total", upstream="unknown", route="unknown",
                 code="404") == 1
    assert not any("nope" in str(labels) or "such" in str(labels) for _, labels in samples)
    assert value(samples, "dcr_sidecar_registrations_total", upstream="acme",
                 outcome="success") == 1
    assert value(samples, "dcr_sidecar_discovery_total", upstream="acme", outcome="success") == 1
    for endpoint in ("discover", "register", "token"):
        count = value(samples, "dcr_sidecar_upstream_call_duration_seconds_count",
                      upstream="acme", endpoint=endpoint)
        assert (count or 0) >= 1, endpoint
    assert value(samples, "dcr_sidecar_client_secret_expiry_timestamp_seconds",
                 upstream="acme") == 0  # the provider issues secrets that never expire
    assert value(samples, "dcr_sidecar_backoff_active", upstream="acme") == 0


async def test_two_sidecars_in_one_process_keep_separate_registries(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    provider = await oidc()
    first = await sidecar({"upstreams": [cc_upstream(provider.issuer)]})
    second = await sidecar({"upstreams": [cc_upstream(provider.issuer, name="other")],
                            "store": {"backend": "memory"}})
    for _ in range(3):
        leak_guard.add_token_response(await token(first))
    leak_guard.add_token_response(await token(second, "other"))
    one, two = await scrape(first), await scrape(second)
    assert value(one, "dcr_sidecar_requests_total", upstream="acme", route="/{name}/token",
                 code="200") == 3
    assert value(two, "dcr_sidecar_requests_total", upstream="acme", route="/{name}/token",
                 code="200") is None
    assert value(two, "dcr_sidecar_requests_total", upstream="other", route="/{name}/token",
                 code="200") == 1


async def test_failures_count_discovery_failure_and_show_backoff(
        sidecar: SidecarFactory) -> None:
    """An unreachable AS: a failed discovery is counted and backoff_active is 1."""
    side = await sidecar({"upstreams": [cc_upstream(f"http://127.0.0.1:{closed_port()}",
                                                    name="down")],
                          "backoff": {"base": 30, "cap": 60}})
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/down/client") as resp:
        assert resp.status == 503
    samples = await scrape(side)
    assert value(samples, "dcr_sidecar_discovery_total", upstream="down", outcome="failure") == 1
    assert value(samples, "dcr_sidecar_backoff_active", upstream="down") == 1
    assert value(samples, "dcr_sidecar_requests_total", upstream="down", route="/{name}/client",
                 code="503") == 1


async def test_store_failure_is_counted_by_operation(
        oidc: ProviderFactory, sidecar: SidecarFactory, tmp_path: Path) -> None:
    """A store whose directory cannot be used (a file is in the way) fails the first store
    operation, the lock-free read (serving needs no lock; only changes take it)."""
    provider = await oidc()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    side = await sidecar({"upstreams": [cc_upstream(provider.issuer)],
                          "store": {"path": str(blocker / "credentials.json")}})
    async with aiohttp.ClientSession() as session, session.post(
            f"{side.listen.url}/acme/token", data={"grant_type": "client_credentials"}) as resp:
        assert resp.status == 503
    samples = await scrape(side)
    assert value(samples, "dcr_sidecar_store_errors_total", operation="store_read") == 1
    assert (await provider.stats())["registrations"] == 0
