"""Every token-like route against the real oidc-provider (design.md §2.3): PAR (RFC 9126),
revocation (RFC 7009), introspection (RFC 7662), device authorization (RFC 8628) and
client_credentials, with a shared-secret and a private_key_jwt (RFC 7523) client; the key of
the latter survives a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from dcr_sidecar.oauth.pkce import make_verifier, s256_challenge
from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.flows import REDIRECT_URI, browser_to_callback, get_json, validate_id_token
from tests.support.oidc import OidcProvider, RecordedRequest

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def config(issuer: str, method: str) -> dict[str, Any]:
    return {"upstreams": [{
        "name": "acme", "issuer": issuer, "redirect_uris": [REDIRECT_URI],
        "scopes": ["openid", "offline_access", "api:read"],
        "grant_types": ["authorization_code", "refresh_token", "client_credentials",
                        DEVICE_GRANT],
        "token_endpoint_auth_methods": [method]}]}


async def post(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, data=form) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if text else {}


def authenticated_with(call: RecordedRequest, method: str) -> bool:
    if method == "client_secret_basic":
        return call["auth_scheme"] == "Basic" and "client_secret" not in call["body_keys"]
    return call["auth_scheme"] is None and "client_assertion" in call["body_keys"]


@pytest.mark.parametrize("method", ["client_secret_basic", "private_key_jwt"])
async def test_every_token_like_route_works_at_the_real_provider(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        method: str) -> None:
    provider = await oidc()
    side = await sidecar(config(provider.issuer, method))
    base = f"{side.listen.url}/acme"
    client_id = (await get_json(f"{base}/client"))["client_id"]

    status, issued = await post(f"{base}/token", {"grant_type": "client_credentials",
                                                  "scope": "api:read", "client_id": "x"})
    leak_guard.add_token_response(issued)
    assert status == 200, issued
    status, active = await post(f"{base}/introspect", {"token": issued["access_token"]})
    assert (status, active["active"], active["client_id"]) == (200, True, client_id)
    assert (await post(f"{base}/revoke", {"token": issued["access_token"]}))[0] == 200
    status, gone = await post(f"{base}/introspect", {"token": issued["access_token"]})
    assert (status, gone) == (200, {"active": False})

    status, device = await post(f"{base}/device_authorization", {"scope": "openid"})
    leak_guard.add(device.get("device_code"))
    assert status == 200, device
    status, pending = await post(f"{base}/token", {"grant_type": DEVICE_GRANT,
                                                   "device_code": device["device_code"]})
    assert (status, pending["error"]) == (400, "authorization_pending")

    await par_login(side.listen.url, provider, client_id, leak_guard)
    calls = [r for r in await provider.requests() if r["route"] in (
        "token", "introspection", "revocation", "device_authorization",
        "pushed_authorization_request")]
    assert {c["route"] for c in calls} == {"token", "introspection", "revocation",
                                           "device_authorization", "pushed_authorization_request"}
    for call in calls:
        assert call["client_id"] == client_id, call
        assert authenticated_with(call, method), call


async def par_login(sidecar_url: str, provider: OidcProvider, client_id: str,
                    leak_guard: LeakGuard) -> None:
    """PAR through the sidecar, then authorize with client_id beside request_uri, login, code
    exchange and a valid ID token."""
    verifier, nonce = make_verifier(), "nonce-par-1"
    form = {"response_type": "code", "client_id": "placeholder", "redirect_uri": REDIRECT_URI,
            "scope": "openid", "state": "s-par", "nonce": nonce,
            "code_challenge": s256_challenge(verifier), "code_challenge_method": "S256"}
    status, pushed = await post(f"{sidecar_url}/acme/par", form)
    assert status == 201, pushed
    start = f"{sidecar_url}/acme/authorize?" + urlencode(
        {"client_id": "placeholder", "request_uri": pushed["request_uri"]})
    callback = await browser_to_callback(start, REDIRECT_URI)
    params = parse_qs(urlsplit(callback).query)
    assert params["state"] == ["s-par"]
    status, tokens = await post(f"{sidecar_url}/acme/token", {
        "grant_type": "authorization_code", "code": params["code"][0],
        "redirect_uri": REDIRECT_URI, "code_verifier": verifier, "client_id": "placeholder"})
    leak_guard.add_token_response(tokens)
    assert status == 200, tokens
    metadata = await get_json(f"{sidecar_url}/acme/.well-known/openid-configuration")
    assert metadata["issuer"] == provider.issuer
    await validate_id_token(metadata, tokens["id_token"], client_id, nonce)


async def test_private_key_jwt_key_survives_a_restart(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        tmp_path: Path) -> None:
    """The key pair is stored with the credentials (file store): a restarted sidecar signs
    with it for the same client, and registers nothing."""
    provider = await oidc()
    settings = config(provider.issuer, "private_key_jwt")
    first = await sidecar(settings)
    form = {"grant_type": "client_credentials", "scope": "api:read"}
    status, issued = await post(f"{first.listen.url}/acme/token", form)
    leak_guard.add_token_response(issued)
    assert status == 200, issued
    client_id = (await get_json(f"{first.listen.url}/acme/client"))["client_id"]
    await first.stop()
    store = tmp_path / "credentials.json"
    assert store.stat().st_mode & 0o777 == 0o600
    leak_guard.add_store(store)
    [record] = json.loads(store.read_text())["records"].values()
    assert json.loads(record["generations"][0]["private_key"])["kty"] == "EC"  # ES256 offered

    second = await sidecar(settings)
    status, again = await post(f"{second.listen.url}/acme/token", form)
    leak_guard.add_token_response(again)
    assert status == 200, again
    assert (await get_json(f"{second.listen.url}/acme/client"))["client_id"] == client_id
    stats = await provider.stats()
    assert stats["registrations"] == 1
    token_calls = [r for r in await provider.requests() if r["route"] == "token"]
    assert len(token_calls) == 2
    assert all(authenticated_with(c, "private_key_jwt") for c in token_calls)
