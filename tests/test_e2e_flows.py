"""The sidecar end to end in front of the real oidc-provider (root and path issuers, open and
IAT-protected registration): unmodified client libraries complete real flows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.flows import REDIRECT_URI, authlib_login, get_json, validate_id_token

IAT = "iat-for-tests-0123456789"
VARIANTS = [
    pytest.param({}, id="root-open"),
    pytest.param({"iat": IAT}, id="root-iat"),
    pytest.param({"issuer_path": "/tenant-a"}, id="path-open"),
    pytest.param({"issuer_path": "/tenant-a", "iat": IAT}, id="path-iat"),
]


def upstream_config(issuer: str, provider_kwargs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    upstream: dict[str, Any] = {
        "name": "acme", "issuer": issuer, "redirect_uris": [REDIRECT_URI],
        "scopes": ["openid", "profile", "email", "offline_access"],
        "client_metadata": {"client_name": "e2e"},
    }
    if "iat" in provider_kwargs:
        upstream["initial_access_token"] = provider_kwargs["iat"]
    upstream.update(extra)
    return {"upstreams": [upstream]}


@pytest.mark.parametrize("provider_kwargs", VARIANTS)
async def test_oidc_app_with_real_client_id_validates_id_token(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        provider_kwargs: dict[str, Any]) -> None:
    """authlib + the client_id from /client: login, consent, code exchange, valid ID token."""
    provider = await oidc(**provider_kwargs)
    leak_guard.add(provider_kwargs.get("iat"))
    side = await sidecar(upstream_config(provider.issuer, provider_kwargs))
    client = await get_json(f"{side.listen.url}/acme/client")
    assert client["issuer"] == provider.issuer
    assert "client_secret" not in client
    metadata, token = await authlib_login(
        f"{side.listen.url}/acme/.well-known/openid-configuration", client["client_id"],
        scope="openid profile email")
    leak_guard.add_token_response(token)
    assert metadata["issuer"] == provider.issuer
    assert metadata["token_endpoint"] == f"{side.listen.url}/acme/token"
    assert "registration_endpoint" not in metadata
    claims = await validate_id_token(metadata, token["id_token"], client["client_id"],
                                     token["_nonce"])
    assert claims["sub"] == "alice"
    assert (await provider.stats())["registrations"] == 1


@pytest.mark.parametrize("provider_kwargs", VARIANTS)
async def test_oauth2_app_with_placeholder_client_id_gets_tokens(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        provider_kwargs: dict[str, Any]) -> None:
    """An OAuth 2 app may use any placeholder client_id: the sidecar replaces it both ways."""
    provider = await oidc(**provider_kwargs)
    leak_guard.add(provider_kwargs.get("iat"))
    side = await sidecar(upstream_config(provider.issuer, provider_kwargs))
    _, token = await authlib_login(
        f"{side.listen.url}/.well-known/oauth-authorization-server/acme", "placeholder",
        scope="openid offline_access")
    leak_guard.add_token_response(token)
    assert token["token_type"].lower() == "bearer"
    assert token["access_token"]
    assert token.get("refresh_token")
    assert (await provider.stats())["registrations"] == 1


async def test_registered_method_is_the_only_one_injected(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """The AS sees exactly the registered method: Basic for client_secret_basic and the form
    for client_secret_post, never both, whatever the app sent."""
    provider = await oidc()
    for preference, scheme in ((["client_secret_post"], None),
                               (["client_secret_basic"], "Basic")):
        await provider.reset()
        side = await sidecar(upstream_config(provider.issuer, {}, grant_types=[
            "client_credentials"], redirect_uris=[], scopes=[], name=f"m-{len(preference[0])}",
            token_endpoint_auth_methods=preference))
        name = f"m-{len(preference[0])}"
        form = {"grant_type": "client_credentials", "client_id": "app-placeholder",
                "client_secret": "app-sent-secret-value"}
        leak_guard.add("app-sent-secret-value")
        async with aiohttp.ClientSession() as session, session.post(
                f"{side.listen.url}/{name}/token", data=form,
                headers={"Authorization": "Basic YXBwOnNlY3JldA=="}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            leak_guard.add_token_response(body)
        token_calls = [r for r in await provider.requests() if r["path"].endswith("/token")]
        assert len(token_calls) == 1
        call = token_calls[0]
        assert call["auth_scheme"] == scheme
        if scheme is None:
            assert "client_secret" in call["body_keys"]
        else:
            assert "client_secret" not in call["body_keys"]
        assert call["client_id"] == (await get_json(f"{side.listen.url}/{name}/client"))[
            "client_id"]
        await side.stop()


async def test_thirty_concurrent_first_contacts_register_once(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    """30 concurrent first contacts: one discovery, one registration, one client_id."""
    provider = await oidc(iat=IAT)
    side = await sidecar(upstream_config(provider.issuer, {"iat": IAT}))
    async with aiohttp.ClientSession() as session:

        async def first_contact(i: int) -> str:
            route = "client" if i % 2 else ".well-known/openid-configuration"
            async with session.get(f"{side.listen.url}/acme/{route}") as resp:
                assert resp.status == 200
                body = await resp.json()
            if route == "client":
                return str(body["client_id"])
            async with session.get(f"{side.listen.url}/acme/client") as resp:
                return str((await resp.json())["client_id"])

        ids = await asyncio.gather(*(first_contact(i) for i in range(30)))
    assert len(set(ids)) == 1
    stats = await provider.stats()
    assert stats["registrations"] == 1
    assert stats["registration_attempts"] == 1
    assert side.resolver.snapshot("acme").stats["discoveries"] == 1


@pytest.mark.parametrize("provider_kwargs", VARIANTS)
async def test_restart_with_file_store_registers_nothing(
        oidc: ProviderFactory, sidecar: SidecarFactory, tmp_path: Path, leak_guard: LeakGuard,
        provider_kwargs: dict[str, Any]) -> None:
    """Credentials persist (0600, atomic) and a restarted sidecar reuses them."""
    provider = await oidc(**provider_kwargs)
    leak_guard.add(provider_kwargs.get("iat"))
    config = upstream_config(provider.issuer, provider_kwargs)
    first = await sidecar(config)
    client_id = (await get_json(f"{first.listen.url}/acme/client"))["client_id"]
    await first.stop()
    store = tmp_path / "credentials.json"
    assert store.stat().st_mode & 0o777 == 0o600
    assert client_id in json.loads(store.read_text())["records"]["acme " + provider.issuer][
        "generations"][0]["client_id"]
    second = await sidecar(config)
    assert (await get_json(f"{second.listen.url}/acme/client"))["client_id"] == client_id
    assert (await provider.stats())["registrations"] == 1
