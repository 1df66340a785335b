"""The admin API (design.md §2.3, §2.4) against the real provider: disabled without a token,
Bearer authentication, the upstream list without secrets, rotate and RFC 7592 delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dcr_sidecar.app import Sidecar
from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.test_metrics import cc_upstream, scrape, token, value

ADMIN_TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def call(side: Sidecar, method: str, path: str,
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    async with aiohttp.ClientSession() as session, session.request(
            method, f"{side.management.url}{path}", headers=headers or {}) as resp:
        return resp.status, await resp.json(), resp.headers.get("WWW-Authenticate", "")


def stored_generations(tmp_path: Path) -> list[dict[str, Any]]:
    records = json.loads((tmp_path / "credentials.json").read_text())["records"]
    return [g for record in records.values() for g in record["generations"]]


async def admin_sidecar(sidecar: SidecarFactory, issuer: str, leak_guard: LeakGuard,
                        **extra: Any) -> Sidecar:
    leak_guard.add(ADMIN_TOKEN)
    return await sidecar({"admin": {"token": ADMIN_TOKEN}, "upstreams": [
        cc_upstream(issuer),
        {"name": "fixed", "issuer": issuer, "client_id": "static-client",
         "client_secret": "static-secret-value", "grant_types": ["client_credentials"]}],
        **extra})


async def test_admin_api_is_404_without_a_token_configured(sidecar: SidecarFactory) -> None:
    side = await sidecar({})
    for method, path in (("GET", "/admin/upstreams"), ("POST", "/admin/upstreams/a/rotate"),
                         ("DELETE", "/admin/upstreams/a/registration")):
        status, body, _ = await call(side, method, path, AUTH)
        assert (status, body["error"]) == (404, "not_found"), path
        assert body["error_description"] == "the admin API is disabled: set admin.token"


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"}, {"Authorization": "Bearer"},
], ids=["missing", "wrong", "wrong-scheme", "longer", "empty"])
async def test_admin_api_needs_the_bearer_token(
        sidecar: SidecarFactory, leak_guard: LeakGuard, headers: dict[str, str]) -> None:
    leak_guard.add(ADMIN_TOKEN)
    side = await sidecar({"admin": {"token": ADMIN_TOKEN}})
    status, body, challenge = await call(side, "GET", "/admin/upstreams", headers)
    assert (status, body["error"]) == (401, "invalid_token")
    assert challenge.startswith("Bearer")


async def test_upstream_list_shows_state_and_never_a_secret(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        tmp_path: Path) -> None:
    provider = await oidc()
    side = await admin_sidecar(sidecar, provider.issuer, leak_guard)
    leak_guard.add_token_response(await token(side))
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/fixed/client") as resp:
        assert resp.status == 200  # the static client is resolved too (it exists only here)
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.management.url}/admin/upstreams", headers=AUTH) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        text = await resp.text()
    secrets = leak_guard.add_store(tmp_path / "credentials.json")
    assert secrets
    assert not any(s in text for s in [*secrets, "static-secret-value"])
    listed = {u["name"]: u for u in json.loads(text)["upstreams"]}
    acme, fixed = listed["acme"], listed["fixed"]
    assert acme["source"] == "issuer"
    assert acme["issuer"] == provider.issuer
    assert acme["registration"] == "dcr"
    assert acme["generation"] == 1
    assert acme["client_id"] == stored_generations(tmp_path)[0]["client_id"]
    assert acme["token_endpoint_auth_method"] == "client_secret_basic"
    assert acme["client_secret_expires_at"] == 0
    assert acme["backoff_until"] is None
    assert acme["last_error"] is None
    assert fixed["registration"] == "static"
    assert fixed["client_id"] == "static-client"


async def test_rotate_registers_a_new_generation_that_serves_at_once(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        tmp_path: Path) -> None:
    provider = await oidc()
    side = await admin_sidecar(sidecar, provider.issuer, leak_guard)
    leak_guard.add_token_response(await token(side))
    before = stored_generations(tmp_path)[0]["client_id"]
    status, body, _ = await call(side, "POST", "/admin/upstreams/acme/rotate", AUTH)
    assert status == 200, body
    assert body["generation"] == 2
    assert body["client_id"] != before
    leak_guard.add_store(tmp_path / "credentials.json")
    gens = stored_generations(tmp_path)
    assert [g["generation"] for g in gens] == [1, 2]
    assert gens[0]["superseded_at"] is not None
    assert gens[1]["superseded_at"] is None
    leak_guard.add_token_response(await token(side))
    calls = [r for r in await provider.requests() if r["route"] == "token"]
    assert calls[-1]["client_id"] == body["client_id"]
    assert (await provider.stats())["registrations"] == 2
    samples = await scrape(side)
    assert value(samples, "dcr_sidecar_client_id_changes_total", upstream="acme") == 1
    assert value(samples, "dcr_sidecar_registrations_total", upstream="acme",
                 outcome="success") == 2


async def test_delete_removes_the_client_at_the_as_and_the_next_request_registers(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        tmp_path: Path) -> None:
    provider = await oidc()
    side = await admin_sidecar(sidecar, provider.issuer, leak_guard)
    leak_guard.add_token_response(await token(side))
    leak_guard.add_store(tmp_path / "credentials.json")
    client_id = stored_generations(tmp_path)[0]["client_id"]
    status, body, _ = await call(side, "DELETE", "/admin/upstreams/acme/registration", AUTH)
    assert (status, body) == (200, {"name": "acme", "deleted_generation": 1})
    stats = await provider.stats()
    assert client_id in stats["deleted"]
    assert client_id not in stats["clients"]
    assert stored_generations(tmp_path) == []
    status, body, _ = await call(side, "DELETE", "/admin/upstreams/acme/registration", AUTH)
    assert (status, body["error"]) == (409, "conflict")
    leak_guard.add_token_response(await token(side))
    assert (await provider.stats())["registrations"] == 2
    leak_guard.add_store(tmp_path / "credentials.json")
    assert stored_generations(tmp_path)[0]["client_id"] != client_id


async def test_a_deleted_registration_is_followed_by_a_new_generation_number_and_the_event(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        tmp_path: Path) -> None:
    """Admin DELETE, then the next request registers: its generation number is new (2, never
    a reused 1 — the record keeps its high-water mark, across a restart too), the switch of
    client_id is a `client_id_changed` event and counts in
    dcr_sidecar_client_id_changes_total (before: generation 1 again, no event, counter 0)."""
    provider = await oidc()
    side = await admin_sidecar(sidecar, provider.issuer, leak_guard)
    leak_guard.add_token_response(await token(side))
    first = stored_generations(tmp_path)[0]["client_id"]
    status, body, _ = await call(side, "DELETE", "/admin/upstreams/acme/registration", AUTH)
    assert (status, body) == (200, {"name": "acme", "deleted_generation": 1})
    leak_guard.add_token_response(await token(side))
    leak_guard.add_store(tmp_path / "credentials.json")
    (gen,) = stored_generations(tmp_path)
    assert gen["generation"] == 2
    assert gen["client_id"] != first
    changed = [json.loads(line) for line in leak_guard.log_text().splitlines()
               if '"client_id_changed"' in line]
    assert [(e["previous_client_id"], e["client_id"], e["generation"]) for e in changed] == [
        (first, gen["client_id"], 2)]
    samples = await scrape(side)
    assert value(samples, "dcr_sidecar_client_id_changes_total", upstream="acme") == 1
    await side.stop()
    # A restart after a second delete still counts on from the stored high-water mark.
    again = await admin_sidecar(sidecar, provider.issuer, leak_guard)
    status, body, _ = await call(again, "DELETE", "/admin/upstreams/acme/registration", AUTH)
    assert (status, body) == (200, {"name": "acme", "deleted_generation": 2})
    leak_guard.add_token_response(await token(again))
    leak_guard.add_store(tmp_path / "credentials.json")
    assert [g["generation"] for g in stored_generations(tmp_path)] == [3]


async def test_static_clients_and_unknown_names_are_refused(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    provider = await oidc()
    side = await admin_sidecar(sidecar, provider.issuer, leak_guard)
    for method, action in (("POST", "rotate"), ("DELETE", "registration")):
        status, body, _ = await call(side, method, f"/admin/upstreams/fixed/{action}", AUTH)
        assert (status, body["error"]) == (409, "conflict")
        status, body, _ = await call(side, method, f"/admin/upstreams/nope/{action}", AUTH)
        assert (status, body["error"]) == (404, "not_found")
    assert (await provider.stats())["registrations"] == 0
