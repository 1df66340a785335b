"""Failure isolation and backoff against in-process fault servers (design.md §3.7): every fault
becomes one typed answer for the app, with backoff, and never a crash."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import FakeFactory, LeakGuard, SidecarFactory
from tests.support.fakes import FakeServer, as_metadata

WELL_KNOWN = "/.well-known/oauth-authorization-server"


def upstream(issuer: str, **extra: Any) -> dict[str, Any]:
    up: dict[str, Any] = {"name": "acme", "issuer": issuer,
                          "grant_types": ["client_credentials"]}
    up.update(extra)
    return {"upstreams": [up]}


async def get(url: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def registering_as(fake: FakeServer, registration: dict[str, Any] | None = None,
                         status: int = 201, **meta: Any) -> None:
    fake.json("GET", WELL_KNOWN, as_metadata(fake.url, **meta))
    fake.json("POST", "/register", registration if registration is not None else {
        "client_id": "cid-1", "client_secret": "fault-secret-0123456789",
        "client_secret_expires_at": 0, "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["client_credentials"]}, status=status)


async def test_429_with_retry_after_seconds_is_honoured(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """429 + Retry-After: 120 on registration -> 503 with Retry-After >= 120; no retry before."""
    fake = await fake_server()
    await registering_as(fake, {"error": "slow_down"}, status=429)
    fake.json("POST", "/register", {"error": "slow_down"}, status=429,
              headers={"Retry-After": "120"})
    side = await sidecar(upstream(fake.url))
    status, body, headers = await get(f"{side.listen.url}/acme/client")
    assert status == 503
    assert body["error"] == "temporarily_unavailable"
    assert int(headers["Retry-After"]) >= 120
    status, _, headers = await get(f"{side.listen.url}/acme/client")
    assert status == 503
    assert int(headers["Retry-After"]) >= 110
    assert fake.count("POST", "/register") == 1


async def test_retry_after_http_date_is_honoured(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    when = email.utils.formatdate(time.time() + 90, usegmt=True)
    fake.json("GET", WELL_KNOWN, {"error": "busy"}, status=503, headers={"Retry-After": when})
    fake.json("GET", "/.well-known/openid-configuration", {"error": "busy"}, status=503,
              headers={"Retry-After": when})
    side = await sidecar(upstream(fake.url))
    status, _, headers = await get(f"{side.listen.url}/acme/client")
    assert status == 503
    assert 80 <= int(headers["Retry-After"]) <= 91


async def test_retry_after_is_capped_by_max_retry_after(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    await registering_as(fake)
    fake.json("POST", "/register", {}, status=503, headers={"Retry-After": "999999"})
    side = await sidecar({**upstream(fake.url), "backoff": {"max_retry_after": 50}})
    status, _, headers = await get(f"{side.listen.url}/acme/client")
    assert status == 503
    assert int(headers["Retry-After"]) <= 50


async def test_server_errors_give_503_and_backoff_grows(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    await registering_as(fake)
    fake.json("POST", "/register", {"error": "boom"}, status=500)
    side = await sidecar({**upstream(fake.url), "backoff": {"base": 0.01, "cap": 0.02}})
    for attempt in range(1, 4):
        status, body, _ = await get(f"{side.listen.url}/acme/client")
        assert status == 503, body
        snap = side.resolver.snapshot("acme")
        assert snap.failures == attempt
        assert snap.last_error_step == "register"
        if snap.backoff_until is not None:
            await asyncio.sleep(max(0.0, snap.backoff_until - time.time()) + 0.01)
    assert fake.count("POST", "/register") == 3


async def test_timeout_gives_504(fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    released = asyncio.Event()

    async def hang(_: web.Request) -> web.StreamResponse:
        await released.wait()
        return web.Response(status=200)

    fake.route("GET", WELL_KNOWN, hang)
    fake.route("GET", "/.well-known/openid-configuration", hang)
    side = await sidecar({**upstream(fake.url),
                          "timeouts": {"connect": 1, "read": 0.3, "total": 0.5}})
    try:
        status, body, headers = await get(f"{side.listen.url}/acme/client")
    finally:
        released.set()
    assert status == 504
    assert body["error"] == "temporarily_unavailable"
    assert "Retry-After" in headers
    assert "did not answer in time" in body["error_description"]


async def test_malformed_json_metadata_is_502_naming_the_url(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()

    async def broken(_: web.Request) -> web.StreamResponse:
        return web.Response(text="{not json", content_type="application/json")

    fake.route("GET", WELL_KNOWN, broken)
    fake.route("GET", "/.well-known/openid-configuration", broken)
    side = await sidecar(upstream(fake.url))
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 502
    assert body["error"] == "server_error"
    assert WELL_KNOWN in body["error_description"]
    assert "not JSON" in body["error_description"]


async def test_oversized_metadata_is_cut_at_the_cap(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    big = as_metadata(fake.url, padding="x" * 50_000)
    fake.json("GET", WELL_KNOWN, big)
    fake.json("GET", "/.well-known/openid-configuration", big)
    side = await sidecar({**upstream(fake.url), "limits": {"max_response_bytes": 4096}})
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 502
    assert "4096" in body["error_description"]


async def test_registration_without_secret_is_insufficient(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    await registering_as(fake, {"client_id": "cid", "token_endpoint_auth_method":
                                "client_secret_basic", "grant_types": ["client_credentials"]})
    side = await sidecar(upstream(fake.url))
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 502
    assert "no client_secret" in body["error_description"]


async def test_echoed_auth_method_the_sidecar_cannot_perform(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    await registering_as(fake, {"client_id": "cid", "token_endpoint_auth_method":
                                "tls_client_auth", "grant_types": ["client_credentials"]})
    side = await sidecar(upstream(fake.url))
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 502
    assert "tls_client_auth" in body["error_description"]


async def test_trailing_slash_issuer_mismatch_names_both_strings(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    doc = as_metadata(fake.url + "/")
    fake.json("GET", WELL_KNOWN, doc)
    fake.json("GET", "/.well-known/openid-configuration", doc)
    side = await sidecar(upstream(fake.url))
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 502
    assert f"expected '{fake.url}'" in body["error_description"]
    assert f"'{fake.url}/'" in body["error_description"]


async def test_cdn_403_on_first_candidate_falls_through(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """A CDN answering 403 on the RFC 8414 URL: the OIDC candidate is used."""
    fake = await fake_server()
    await registering_as(fake)
    fake.json("GET", WELL_KNOWN, {"message": "Forbidden"}, status=403)
    fake.json("GET", "/.well-known/openid-configuration", as_metadata(fake.url))
    side = await sidecar(upstream(fake.url))
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 200, body
    assert body["client_id"] == "cid-1"


async def test_parser_crash_gives_every_waiter_one_typed_error_then_backoff(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """A registration answer shaped to break number parsing: 10 waiters, one attempt, the same
    typed 502 for all; during backoff the next caller gets 503 without reaching the AS."""
    fake = await fake_server()
    fake.json("GET", WELL_KNOWN, as_metadata(fake.url))

    async def weird(_: web.Request) -> web.StreamResponse:
        await asyncio.sleep(0.2)  # let all waiters join the one flight
        return web.Response(status=201, content_type="application/json", text=(
            '{"client_id": "cid", "client_secret": "weird-secret-0123456789", '
            '"client_secret_expires_at": 1e400, "grant_types": ["client_credentials"]}'))

    fake.route("POST", "/register", weird)
    side = await sidecar({**upstream(fake.url), "backoff": {"base": 60, "cap": 60}})
    results = await asyncio.gather(*(get(f"{side.listen.url}/acme/client") for _ in range(10)))
    assert {r[0] for r in results} == {502}
    assert len({r[1]["error_description"] for r in results}) == 1
    assert fake.count("POST", "/register") == 1
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 503
    assert "backing off" in body["error_description"]
    assert fake.count("POST", "/register") == 1
    assert side.resolver.snapshot("acme").last_error_step == "register"


async def test_registration_404_says_configure_a_static_client(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    await registering_as(fake)
    fake.json("POST", "/register", {"error": "nope"}, status=404)
    side = await sidecar(upstream(fake.url))
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 502
    assert "static client" in body["error_description"]


async def test_rfc7591_error_is_typed_with_the_as_error(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    await registering_as(fake)
    fake.json("POST", "/register", {"error": "invalid_client_metadata",
                                    "error_description": "bad\u0007 scope"}, status=400)
    side = await sidecar(upstream(fake.url))
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 502
    assert "invalid_client_metadata: bad scope" in body["error_description"]


async def test_one_failing_upstream_does_not_affect_another(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    bad, good = await fake_server(), await fake_server()
    await registering_as(good)
    bad.json("GET", WELL_KNOWN, {}, status=500)
    bad.json("GET", "/.well-known/openid-configuration", {}, status=500)
    side = await sidecar({"upstreams": [
        {"name": "bad", "issuer": bad.url, "grant_types": ["client_credentials"]},
        {"name": "good", "issuer": good.url, "grant_types": ["client_credentials"]}]})
    assert (await get(f"{side.listen.url}/bad/client"))[0] == 503
    assert (await get(f"{side.listen.url}/good/client"))[0] == 200


# ---------------------------------------------------------------- far-future expiry (issue 11 #7)

ADMIN_TOKEN = "faults-admin-token-0123456789"
MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z


def registration(fake: FakeServer, **changes: Any) -> dict[str, Any]:
    """A usable registration answer carrying RFC 7592 management on the fake's origin."""
    answer: dict[str, Any] = {
        "client_id": "cid-1", "client_secret": "fault-secret-0123456789",
        "client_secret_expires_at": 0, "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["client_credentials"],
        "registration_access_token": "fault-rat-0123456789",
        "registration_client_uri": f"{fake.url}/register/cid-1"}
    answer.update(changes)
    return answer


@pytest.mark.parametrize("huge", [2**63 - 1, 10**400], ids=["int64-max", "1e400"])
async def test_huge_expiry_is_clamped_and_admin_keeps_answering(
        fake_server: FakeFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        huge: int) -> None:
    """client_secret_expires_at 2^63-1 or 10^400: the client is adopted with the expiry clamped
    to 9999-12-31, /admin/upstreams answers 200 (before: 500 for 2^63-1; 502 + an orphaned
    client for 10^400), nothing is deleted."""
    fake = await fake_server()
    await registering_as(fake, registration(fake, client_secret_expires_at=huge))
    leak_guard.add(ADMIN_TOKEN)
    side = await sidecar({**upstream(fake.url), "admin": {"token": ADMIN_TOKEN}})
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 200, body
    assert body["client_secret_expires_at"] == MAX_TIMESTAMP
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.management.url}/admin/upstreams",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        assert resp.status == 200, await resp.text()
        listed = (await resp.json())["upstreams"][0]
    assert listed["client_secret_expires_at"] == MAX_TIMESTAMP
    assert listed["next_renewal"] is not None
    assert fake.count("DELETE", "/register/cid-1") == 0


async def test_refused_registration_is_deleted_at_the_as(
        fake_server: FakeFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """A 201 the sidecar refuses (an auth method it cannot perform) but that carries RFC 7592
    management: the client is deleted at the AS (before: left orphaned), the app gets 502."""
    fake = await fake_server()
    await registering_as(fake, registration(fake, token_endpoint_auth_method="tls_client_auth"))
    deleted: list[str] = []

    async def delete(request: web.Request) -> web.StreamResponse:
        deleted.append(request.headers.get("Authorization", ""))
        return web.Response(status=204)

    fake.route("DELETE", "/register/cid-1", delete)
    side = await sidecar(upstream(fake.url))
    status, body, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 502
    assert "tls_client_auth" in body["error_description"]
    assert deleted == ["Bearer fault-rat-0123456789"]
    events = [json.loads(line) for line in leak_guard.log_text().splitlines() if line]
    assert [e["client_id"] for e in events if e.get("event") == "orphan_deleted"] == ["cid-1"]
