"""Credentials that stay right, against the real oidc-provider (design.md §3.4-3.5): renewal
before expiry (RFC 7592 PUT extending the expiry, or a new generation when it does not),
invalid_client recovery for dynamic clients only, generations with grace, and deletion."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web

from tests.conftest import FakeFactory, LeakGuard, ProviderFactory, SidecarFactory
from tests.flows import REDIRECT_URI, authlib_login, get_json
from tests.support.fakes import FakeServer, as_metadata

IAT = "lifecycle-iat-0123456789"


def cc_upstream(issuer: str, name: str = "acme", **extra: Any) -> dict[str, Any]:
    up: dict[str, Any] = {"name": name, "issuer": issuer, "grant_types": ["client_credentials"],
                          "initial_access_token": IAT}
    up.update(extra)
    return up


async def cc_token(session: aiohttp.ClientSession, base: str, name: str = "acme"
                   ) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{base}/{name}/token",
                            data={"grant_type": "client_credentials"}) as resp:
        return resp.status, await resp.json()


def audit_events(leak_guard: LeakGuard, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in leak_guard.log_text().splitlines() if line]
    return [line for line in lines if line.get("event") == event]


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


async def run_across_expiry(base: str, until: float, leak_guard: LeakGuard) -> int:
    """client_credentials requests every 0.25 s until `until` (bounded): all must succeed."""
    count = 0
    async with aiohttp.ClientSession() as session:
        while time.time() < until and count < 200:
            status, body = await cc_token(session, base)
            assert status == 200, body
            leak_guard.add_token_response(body)
            count += 1
            await asyncio.sleep(0.25)
    return count


async def test_renewal_by_rfc7592_put_keeps_the_client(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """Secrets expiring after 12 s; PUT extends the expiry: renewed before expiry, same
    client_id, zero new registrations, every token request across the boundary succeeds."""
    provider = await oidc(iat=IAT, secret_expires_in=12, put_extends_expiry=True)
    leak_guard.add(IAT)
    side = await sidecar({"upstreams": [cc_upstream(provider.issuer)]})
    first = await get_json(f"{side.listen.url}/acme/client")
    expires = first["client_secret_expires_at"]
    assert expires > time.time()
    count = await run_across_expiry(side.listen.url, expires + 3, leak_guard)
    assert count >= 20
    after = await get_json(f"{side.listen.url}/acme/client")
    assert after["client_id"] == first["client_id"]
    assert after["client_secret_expires_at"] > expires
    assert (await provider.stats())["registrations"] == 1
    renewed = audit_events(leak_guard, "client_renewed")
    assert renewed
    assert at(renewed[0]) < expires
    assert renewed[0]["via"] == "update"


async def test_renewal_without_extension_registers_a_new_generation(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        tmp_path: Path) -> None:
    """PUT leaves the expiry unchanged: a new generation before expiry, requests keep
    succeeding, the client_id switch is an audit event."""
    provider = await oidc(iat=IAT, secret_expires_in=12, put_extends_expiry=False)
    leak_guard.add(IAT)
    id_file = tmp_path / "shared" / "acme-client-id"
    side = await sidecar({"upstreams": [cc_upstream(provider.issuer,
                                                    client_id_file=str(id_file))]})
    first = await get_json(f"{side.listen.url}/acme/client")
    expires = first["client_secret_expires_at"]
    await run_across_expiry(side.listen.url, expires + 3, leak_guard)
    after = await get_json(f"{side.listen.url}/acme/client")
    assert after["client_id"] != first["client_id"]
    assert after["generation"] >= 2
    assert (await provider.stats())["registrations"] >= 2
    second = [e for e in audit_events(leak_guard, "client_registered") if e["generation"] == 2]
    assert second
    assert at(second[0]) < expires
    switches = audit_events(leak_guard, "client_id_changed")
    assert switches
    assert switches[0]["previous_client_id"] == first["client_id"]
    assert id_file.read_text() == after["client_id"] + "\n"
    assert id_file.stat().st_mode & 0o777 == 0o644


async def register_static(issuer: str) -> dict[str, Any]:
    body = {"grant_types": ["client_credentials"], "response_types": [],
            "token_endpoint_auth_method": "client_secret_basic"}
    async with aiohttp.ClientSession() as session, session.post(
            f"{issuer}/reg", json=body) as resp:
        assert resp.status == 201
        return dict(await resp.json())


async def test_invalid_client_after_provider_reset_recovers_dynamic_only(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """The provider loses every client: the dynamic upstream re-registers once and the
    client_credentials request is retried transparently; the static one is never touched."""
    provider = await oidc()
    static = await register_static(provider.issuer)
    leak_guard.add(static["client_secret"], static["registration_access_token"])
    side = await sidecar({"upstreams": [
        {"name": "dyn", "issuer": provider.issuer, "redirect_uris": [REDIRECT_URI],
         "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
         "scopes": ["openid", "profile"]},
        {"name": "stat", "issuer": provider.issuer, "client_id": static["client_id"],
         "client_secret": static["client_secret"], "grant_types": ["client_credentials"]}]})
    async with aiohttp.ClientSession() as session:
        for name in ("dyn", "stat"):
            status, body = await cc_token(session, side.listen.url, name)
            assert status == 200, body
            leak_guard.add_token_response(body)
        old_id = (await get_json(f"{side.listen.url}/dyn/client"))["client_id"]
        await provider.reset()
        status, body = await cc_token(session, side.listen.url, "stat")
        assert status == 401
        assert body["error"] == "invalid_client"
        status, body = await cc_token(session, side.listen.url, "dyn")
        assert status == 200, body
        leak_guard.add_token_response(body)
    new = await get_json(f"{side.listen.url}/dyn/client")
    assert new["client_id"] != old_id
    assert (await provider.stats())["registrations"] == 1
    assert side.resolver.snapshot("stat").stats["registrations"] == 0
    assert side.resolver.snapshot("dyn").stats["recoveries"] == 1
    _, token = await authlib_login(f"{side.listen.url}/dyn/.well-known/openid-configuration",
                                   new["client_id"], scope="openid profile")
    leak_guard.add_token_response(token)
    assert token["id_token"]
    assert audit_events(leak_guard, "client_invalidated")


async def test_config_change_new_generation_with_grace_then_deletion(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        tmp_path: Path) -> None:
    """A restart with new scopes registers a new generation; a refresh token of the old client
    still works through the sidecar during the grace; the old client is deleted after it."""
    provider = await oidc()

    def config(scopes: list[str]) -> dict[str, Any]:
        return {"upstreams": [{"name": "acme", "issuer": provider.issuer,
                               "redirect_uris": [REDIRECT_URI], "scopes": scopes,
                               "generation_grace": 4}]}

    first = await sidecar(config(["openid", "offline_access", "profile"]))
    old_id = (await get_json(f"{first.listen.url}/acme/client"))["client_id"]
    _, token = await authlib_login(f"{first.listen.url}/acme/.well-known/openid-configuration",
                                   old_id, scope="openid offline_access")
    leak_guard.add_token_response(token)
    await first.stop()

    second = await sidecar(config(["openid", "offline_access", "email"]))
    new_id = (await get_json(f"{second.listen.url}/acme/client"))["client_id"]
    assert new_id != old_id
    assert (await provider.stats())["registrations"] == 2
    async with aiohttp.ClientSession() as session, session.post(
            f"{second.listen.url}/acme/token",
            data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]}
    ) as resp:
        refreshed = await resp.json()
        assert resp.status == 200, refreshed
    leak_guard.add_token_response(refreshed)
    calls = [r for r in await provider.requests() if r["path"].endswith("/token")]
    assert [c["client_id"] for c in calls[-2:]] == [new_id, old_id]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while old_id not in (await provider.stats())["deleted"]:
        assert loop.time() < deadline, "the superseded client was not deleted after its grace"
        await asyncio.sleep(0.2)
    assert new_id not in (await provider.stats())["deleted"]

    def stored_ids() -> list[str]:
        stored = json.loads((tmp_path / "credentials.json").read_text())
        return [g["client_id"] for g in next(iter(stored["records"].values()))["generations"]]

    # The store forgets the old generation right after the AS's DELETE answers: wait for it.
    while stored_ids() != [new_id]:
        assert loop.time() < deadline, f"the store still holds {stored_ids()}"
        await asyncio.sleep(0.1)


async def test_ephemeral_store_deletes_its_clients_on_clean_shutdown(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    provider = await oidc()
    side = await sidecar({"store": {"backend": "memory"},
                          "upstreams": [cc_upstream(provider.issuer, initial_access_token=None)]})
    client_id = (await get_json(f"{side.listen.url}/acme/client"))["client_id"]
    await side.stop()
    assert client_id in (await provider.stats())["deleted"]


async def test_static_client_is_never_registered_or_deleted(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    provider = await oidc()
    static = await register_static(provider.issuer)
    leak_guard.add(static["client_secret"], static["registration_access_token"])
    side = await sidecar({"store": {"backend": "memory"}, "upstreams": [
        {"name": "stat", "issuer": provider.issuer, "client_id": static["client_id"],
         "client_secret": static["client_secret"], "grant_types": ["client_credentials"]}]})
    client = await get_json(f"{side.listen.url}/stat/client")
    assert client["client_id"] == static["client_id"]
    assert client["generation"] == 0
    await side.stop()
    stats = await provider.stats()
    assert stats["registrations"] == 1
    assert stats["deleted"] == []


class InvalidClientAS:
    """An in-process AS whose token endpoint answers invalid_client for every client it is
    told to refuse (all of them, by default): what no real AS does on demand. Registration
    gives RFC 7592 management whose GET says the client is gone (401), so recovery registers."""

    def __init__(self, fake: FakeServer) -> None:
        self.fake = fake
        self.refuse_all = True
        self.accepted: set[str] = set()
        self.registered: list[str] = []
        self.deleted: list[str] = []
        fake.json("GET", "/.well-known/oauth-authorization-server", as_metadata(fake.url))
        fake.route("POST", "/register", self.register)
        fake.route("POST", "/token", self.token)

    async def register(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        client_id = f"storm-{len(self.registered) + 1}"
        self.registered.append(client_id)
        path = f"/register/{client_id}"
        self.fake.json("GET", path, {"error": "invalid_token"}, status=401)
        self.fake.route("DELETE", path, self.delete)
        return web.json_response({
            **body, "client_id": client_id, "client_secret": f"{client_id}-secret-0123456789",
            "client_secret_expires_at": 0, "registration_access_token": f"{client_id}-rat-0123",
            "registration_client_uri": f"{self.fake.url}{path}"}, status=201)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        self.deleted.append(request.path.rsplit("/", 1)[1])
        return web.Response(status=204)

    async def token(self, request: web.Request) -> web.StreamResponse:
        basic = request.headers.get("Authorization", "").removeprefix("Basic ")
        client_id = unquote(base64.b64decode(basic).decode().partition(":")[0])
        if self.refuse_all or client_id not in self.accepted:
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response({"access_token": f"at-{client_id}-0123456789",
                                  "token_type": "Bearer"})


async def test_invalid_client_storm_registers_once_and_deletes_the_unserved_generation(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """50 concurrent requests (10 at a time), every one answered invalid_client: exactly one
    re-registration inside the backoff window, every other invalid_client relayed; the
    superseded generation, which never served a request, is deleted at the AS at once
    (RFC 7592), not kept for the 24 h grace. (Before: a registration per recovery flight —
    6 for these 50 — and every generation kept.)"""
    storm = InvalidClientAS(await fake_server())
    side = await sidecar({"backoff": {"base": 30, "cap": 300},
                          "upstreams": [cc_upstream(storm.fake.url, initial_access_token=None)]})
    slots = asyncio.Semaphore(10)  # 50 requests, 10 at a time: later ones meet new clients

    async def one(session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        async with slots:
            return await cc_token(session, side.listen.url)

    async with aiohttp.ClientSession() as session:
        answers = await asyncio.wait_for(asyncio.gather(*(one(session) for _ in range(50))),
                                         timeout=60)
    assert [status for status, _ in answers] == [401] * 50
    assert {body["error"] for _, body in answers} == {"invalid_client"}
    assert storm.registered == ["storm-1", "storm-2"]  # the first client and one recovery
    assert storm.deleted == ["storm-1"]
    assert side.resolver.snapshot("acme").stats["recoveries"] == 1
    key = side.resolver.snapshot("acme").record_key
    assert key is not None
    record = await side.store.get(key)
    assert record is not None
    assert [g.client_id for g in record.generations] == ["storm-2"]
    # Inside the window a later invalid_client is relayed too, registering nothing.
    async with aiohttp.ClientSession() as session:
        assert (await cc_token(session, side.listen.url))[0] == 401
    assert storm.registered == ["storm-1", "storm-2"]


async def test_a_superseded_generation_that_served_is_kept_for_its_grace(
        fake_server: FakeFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """A generation the AS accepted once, then invalid_client: recovery registers a new one
    and the old one, which served, stays for generation_grace (not deleted at once)."""
    storm = InvalidClientAS(await fake_server())
    storm.refuse_all = False
    storm.accepted = {"storm-1"}
    side = await sidecar({"backoff": {"base": 30, "cap": 300},
                          "upstreams": [cc_upstream(storm.fake.url, initial_access_token=None)]})
    async with aiohttp.ClientSession() as session:
        status, body = await cc_token(session, side.listen.url)
        assert status == 200, body
        leak_guard.add_token_response(body)
        storm.accepted = {"storm-2"}
        status, body = await cc_token(session, side.listen.url)
        assert status == 200, body  # recovered and retried transparently
        leak_guard.add_token_response(body)
    assert storm.registered == ["storm-1", "storm-2"]
    assert storm.deleted == []
    key = side.resolver.snapshot("acme").record_key
    assert key is not None
    record = await side.store.get(key)
    assert record is not None
    assert [(g.client_id, g.superseded_at is not None) for g in record.generations] == [
        ("storm-1", True), ("storm-2", False)]


async def test_the_recovery_window_doubles_while_new_generations_never_serve(
        fake_server: FakeFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """After the window ends, the next invalid_client may register once more; the window then
    doubles (backoff.base 0.2 -> 0.4 s) because the new client never served either, and that
    unserved client is deleted at once as well."""
    storm = InvalidClientAS(await fake_server())
    side = await sidecar({"backoff": {"base": 0.2, "cap": 300},
                          "upstreams": [cc_upstream(storm.fake.url, initial_access_token=None)]})
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as session:
        for expected in (2, 3):
            deadline = loop.time() + 10
            # the previous window, if any
            while side.resolver.snapshot("acme").recover_until is not None:
                assert loop.time() < deadline, "the recovery window never ended"
                await asyncio.sleep(0.02)
            assert (await cc_token(session, side.listen.url))[0] == 401
            assert len(storm.registered) == expected
    assert storm.registered == ["storm-1", "storm-2", "storm-3"]
    assert storm.deleted == ["storm-1", "storm-2"]
    assert side.resolver.snapshot("acme").recoveries_unserved == 2
    windows = [e["window_s"] for e in audit_events(leak_guard, "recovery_window_started")]
    assert windows == [0.2, 0.4]
