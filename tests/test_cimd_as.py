"""Client ID Metadata Documents against the real node oidc-provider with
`features.clientIdMetadataDocument` (design.md §3.11).

The sidecar's `front` listener serves the documents over TLS from a CA made in the test; the
provider trusts that CA (NODE_EXTRA_CA_CERTS) and, test only, may fetch from loopback
(tests/oidc/server.mjs `cimd`). Figures (registrations counted at the AS, time to first token)
are printed for the issue report (pytest -s shows them).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from joserfc import jwt

from dcr_sidecar.app import Sidecar
from dcr_sidecar.config import Settings
from dcr_sidecar.oauth.client_auth import auth_parts
from tests import flows
from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.flows import REDIRECT_URI, get_json, validate_id_token
from tests.support.oidc import OidcProvider, login_and_consent
from tests.support.tls_ca import LocalCa

ROUNDS = 3


@pytest.fixture
def local_ca(tmp_path: Path) -> LocalCa:
    return LocalCa(tmp_path)


async def cimd_provider(oidc: ProviderFactory, ca: LocalCa, **kwargs: Any) -> OidcProvider:
    return await oidc(cimd=True, env={"NODE_EXTRA_CA_CERTS": str(ca.ca_file)}, **kwargs)


def upstream(issuer: str, **extra: Any) -> dict[str, Any]:
    return {"name": "acme", "issuer": issuer, "redirect_uris": [REDIRECT_URI],
            "scopes": ["openid", "profile", "api:read"],
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            **extra}


async def cimd_sidecar(sidecar: SidecarFactory, ca: LocalCa, issuer: str,
                       **extra: Any) -> Sidecar:
    return await sidecar({"front": ca.front(), "upstreams": [upstream(issuer, **extra)]})


def browser(ca: LocalCa) -> aiohttp.ClientSession:
    """A person's browser that trusts the test CA (the sidecar's front is https)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 connector=aiohttp.TCPConnector(ssl=ca.client_context()),
                                 timeout=aiohttp.ClientTimeout(total=30))


async def post_form(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, data=form) as resp:
        return resp.status, await resp.json()


async def authlib_login(ca: LocalCa, metadata_url: str, client_id: str,
                        scope: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """tests.flows.authlib_login with a browser trusting the test CA."""
    return await flows.authlib_login(metadata_url, client_id, scope=scope,
                                     browser=lambda: browser(ca))


async def test_oidc_login_with_the_url_client_id_registers_nothing(
        oidc: ProviderFactory, sidecar: SidecarFactory, local_ca: LocalCa,
        leak_guard: LeakGuard) -> None:
    """An unmodified authlib OIDC login: the client_id is the document URL, the ID token's aud
    is that URL, and the AS saw 0 registrations (it fetched the document instead)."""
    provider = await cimd_provider(oidc, local_ca)
    id_file = local_ca.directory / "acme-client-id"
    app = await cimd_sidecar(sidecar, local_ca, provider.issuer, client_id_file=str(id_file))
    client = await get_json(f"{app.listen.url}/acme/client")
    assert app.front is not None
    url = f"https://127.0.0.1:{app.front.port}/acme/client-metadata.json"
    assert client["client_id"] == url
    assert client["mechanism"] == "cimd"
    assert client["token_endpoint_auth_method"] == "private_key_jwt"
    metadata, token = await authlib_login(
        local_ca, f"{app.listen.url}/acme/.well-known/openid-configuration", client["client_id"],
        "openid profile")
    leak_guard.add_token_response(token)
    claims = await validate_id_token(metadata, token["id_token"], url, token["_nonce"])
    assert claims["aud"] == url
    stats = await provider.stats()
    print(f"\nCIMD login: registrations at the AS {stats['registrations']}, "
          f"fetches by the AS {stats['cimd_fetches']}")
    assert stats["registrations"] == 0
    assert stats["registration_attempts"] == 0
    assert stats["cimd_fetches"] >= 1
    # Everywhere the client shows, the mechanism is named.
    assert id_file.read_text() == url + "\n"
    ready = await get_json(f"{app.management.url}/readyz")
    assert ready["upstreams"]["acme"]["mechanism"] == "cimd"
    async with aiohttp.ClientSession() as session, session.get(
            f"{app.management.url}/metrics") as resp:
        metrics = await resp.text()
    assert 'dcr_sidecar_client_mechanism{mechanism="cimd",upstream="acme"} 1.0' in metrics


async def test_private_key_jwt_exchange_refresh_and_revocation(
        oidc: ProviderFactory, sidecar: SidecarFactory, local_ca: LocalCa,
        leak_guard: LeakGuard) -> None:
    """Code exchange, refresh and revocation authenticate with private_key_jwt assertions whose
    iss and sub are the document URL; the AS resolves every request to that client."""
    provider = await cimd_provider(oidc, local_ca)
    app = await cimd_sidecar(sidecar, local_ca, provider.issuer)
    url = app.settings.cimd_document_url(app.settings.upstreams[0])
    _, token = await authlib_login(
        local_ca, f"{app.listen.url}/acme/.well-known/openid-configuration", url,
        "openid profile")
    leak_guard.add_token_response(token)
    status, refreshed = await post_form(f"{app.listen.url}/acme/token", {
        "grant_type": "refresh_token", "refresh_token": token["refresh_token"]})
    leak_guard.add_token_response(refreshed)
    assert status == 200, refreshed
    async with aiohttp.ClientSession() as session, session.post(
            f"{app.listen.url}/acme/revoke", data={"token": refreshed["refresh_token"]}) as resp:
        assert resp.status == 200
    status, after = await post_form(f"{app.listen.url}/acme/token", {
        "grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]})
    assert status == 400
    assert after["error"] == "invalid_grant"
    seen = [r for r in await provider.requests() if r["route"] in ("token", "revocation")]
    assert len(seen) == 4
    for request in seen:
        assert "client_assertion" in request["body_keys"]
        assert request["client_id"] == url
    # The assertion itself: iss = sub = the URL, signed by a published key.
    creds = await app.resolver.credentials("acme")
    form = dict(auth_parts(creds.auth).form)
    claims = jwt.decode(form["client_assertion"], await _published_keys(app)).claims
    assert claims["iss"] == url
    assert claims["sub"] == url


async def _published_keys(app: Sidecar) -> Any:
    from joserfc.jwk import KeySet

    return KeySet.import_key_set(json.loads((await app.resolver.cimd_jwks("acme")).body))


async def test_provider_without_the_feature_falls_back_to_dcr(
        oidc: ProviderFactory, sidecar: SidecarFactory, local_ca: LocalCa,
        leak_guard: LeakGuard) -> None:
    """`auto` against an AS that does not advertise CIMD registers once (DCR) and says why;
    `registration: cimd` there fails with the metadata URL and the missing member named."""
    provider = await oidc()
    app = await cimd_sidecar(sidecar, local_ca, provider.issuer)
    status, issued = await post_form(f"{app.listen.url}/acme/token",
                                     {"grant_type": "client_credentials", "scope": "api:read"})
    leak_guard.add_token_response(issued)
    assert status == 200, issued
    snap = app.resolver.snapshot("acme")
    assert snap.mechanism == "dcr"
    assert snap.mechanism_reason is not None
    assert "client_id_metadata_document_supported" in snap.mechanism_reason
    assert (await provider.stats())["registrations"] == 1

    forced = await sidecar({"front": local_ca.front(), "upstreams": [
        upstream(provider.issuer, name="forced", registration="cimd")]})
    status, error = await post_form(f"{forced.listen.url}/forced/token",
                                    {"grant_type": "client_credentials"})
    assert status == 502
    assert error["error"] == "server_error"
    assert f"{provider.issuer}/.well-known/" in error["error_description"]
    assert "lacks client_id_metadata_document_supported: true" in error["error_description"]
    assert (await provider.stats())["registrations"] == 1


async def test_time_to_first_token_cimd_and_dcr(
        oidc: ProviderFactory, sidecar: SidecarFactory, local_ca: LocalCa,
        leak_guard: LeakGuard) -> None:
    """First contact, client_credentials, a fresh (warmed-up) AS and sidecar each round:
    discovery, then (CIMD) the AS fetching the document and JWKS from the sidecar's TLS front,
    or (DCR) an RFC 7591 registration, then the token. Both succeed; the medians of 3 rounds
    are printed for the report."""
    times: dict[str, list[float]] = {"cimd": [], "dcr": []}
    for _ in range(ROUNDS):
        for label, cimd in (("cimd", True), ("dcr", False)):
            provider = await (cimd_provider(oidc, local_ca) if cimd else oidc())
            app = await sidecar({"front": local_ca.front(), "upstreams": [
                upstream(provider.issuer), upstream(provider.issuer, name="warm")]})
            # A fresh node process loads its HTTP client on its first fetch (a few hundred ms
            # that a long-running AS paid long ago): a first contact of another upstream
            # warms the AS up, then the measured one.
            status, issued = await post_form(f"{app.listen.url}/warm/token", {
                "grant_type": "client_credentials", "scope": "api:read"})
            leak_guard.add_token_response(issued)
            assert status == 200, issued
            await app.resolver.cimd_jwks("acme")  # made at start-up under cimd anyway
            started = time.perf_counter()
            status, issued = await post_form(f"{app.listen.url}/acme/token", {
                "grant_type": "client_credentials", "scope": "api:read"})
            times[label].append(time.perf_counter() - started)
            leak_guard.add_token_response(issued)
            assert status == 200, issued
            assert app.resolver.snapshot("acme").mechanism == label
            assert (await provider.stats())["registrations"] == (0 if cimd else 2)
    cimd_ms, dcr_ms = (statistics.median(times[k]) * 1000 for k in ("cimd", "dcr"))
    print(f"\ntime to first token (median of {ROUNDS}): CIMD {cimd_ms:.1f} ms, DCR "
          f"{dcr_ms:.1f} ms; all: CIMD {[round(t * 1000) for t in times['cimd']]}, DCR "
          f"{[round(t * 1000) for t in times['dcr']]}")


async def test_doctor_names_the_mechanism_and_checks_the_published_copies(
        oidc: ProviderFactory, sidecar: SidecarFactory, local_ca: LocalCa,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`doctor` says CIMD was chosen and why, fetches the document and JWKS through the public
    URL and finds them equal to what the configuration and the store say; a copy published
    elsewhere that differs is reported as such."""
    from dcr_sidecar.doctor import run_doctor

    provider = await cimd_provider(oidc, local_ca)
    app = await cimd_sidecar(sidecar, local_ca, provider.issuer)
    await app.resolver.cimd_jwks("acme")
    monkeypatch.setenv("SSL_CERT_FILE", str(local_ca.ca_file))
    assert await run_doctor(app.settings, "acme", register=False, as_json=True,
                            redactor=app.redactor) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mechanism"]["mechanism"] == "cimd"
    assert "client_id_metadata_document_supported" in report["mechanism"]["why"]
    assert report["cimd"]["document"] == {"reachable": True, "matches": True}
    assert report["cimd"]["jwks"] == {"reachable": True, "matches": True}

    # An operator's copy (here: the JWKS URL standing in for it) that is not the document.
    assert app.front is not None
    elsewhere = app.settings.upstreams[0].model_copy(update={"cimd": app.settings.upstreams[
        0].cimd.model_copy(update={"document_url": app.settings.cimd_jwks_url(
            app.settings.upstreams[0])})})
    settings = Settings.model_validate({**dict(app.settings), "upstreams": [elsewhere]})
    await run_doctor(settings, "acme", register=False, as_json=True,
                     redactor=app.redactor)
    report = json.loads(capsys.readouterr().out)
    assert report["cimd"]["document"]["matches"] is False


async def test_public_cimd_client_needs_s256(
        oidc: ProviderFactory, sidecar: SidecarFactory, local_ca: LocalCa,
        leak_guard: LeakGuard) -> None:
    """`cimd.auth_method: none`: an authorization request without S256 PKCE (at /authorize or
    /par) is refused before it reaches the AS; with it, an unmodified login completes as a
    public client (no assertion, no secret)."""
    provider = await cimd_provider(oidc, local_ca)
    app = await cimd_sidecar(sidecar, local_ca, provider.issuer, cimd={"auth_method": "none"},
                             grant_types=["authorization_code", "refresh_token"])
    assert app.front is not None
    front = f"https://127.0.0.1:{app.front.port}/acme/authorize"
    async with browser(local_ca) as person, person.get(
            front, params={"response_type": "code", "redirect_uri": REDIRECT_URI,
                           "scope": "openid", "state": "s"}, allow_redirects=False) as resp:
        assert resp.status == 400
        assert "S256" in (await resp.json())["error_description"]
    status, body = await post_form(f"{app.listen.url}/acme/par", {
        "response_type": "code", "redirect_uri": REDIRECT_URI, "scope": "openid",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "plain"})
    assert status == 400
    assert "S256" in body["error_description"]
    url = app.settings.cimd_document_url(app.settings.upstreams[0])
    metadata, token = await authlib_login(
        local_ca, f"{app.listen.url}/acme/.well-known/openid-configuration", url, "openid")
    leak_guard.add_token_response(token)
    await validate_id_token(metadata, token["id_token"], url, token["_nonce"])
    [exchange] = [r for r in await provider.requests() if r["route"] == "token"]
    assert "client_assertion" not in exchange["body_keys"]
    assert exchange["client_id"] == url


async def test_sidecar_adds_pkce_for_a_public_client_under_callback_sidecar(
        oidc: ProviderFactory, sidecar: SidecarFactory, local_ca: LocalCa,
        leak_guard: LeakGuard) -> None:
    """Under `callback: sidecar` with `pkce: sidecar` the app may send no PKCE: the sidecar
    adds S256 and the login completes; the document names the sidecar's callback."""
    provider = await cimd_provider(oidc, local_ca)
    app = await cimd_sidecar(sidecar, local_ca, provider.issuer, cimd={"auth_method": "none"},
                             grant_types=["authorization_code"], callback="sidecar",
                             pkce="sidecar", scopes=["api:read"])
    assert app.front is not None
    front = f"https://127.0.0.1:{app.front.port}"
    document = await get_json_tls(local_ca, f"{front}/acme/client-metadata.json")
    assert document["redirect_uris"] == [f"{front}/acme/callback"]
    authorize = (f"{front}/acme/authorize?response_type=code&state=app-state&scope=api%3Aread"
                 f"&redirect_uri={REDIRECT_URI}")
    async with browser(local_ca) as person:
        to_sidecar = await login_and_consent(person, authorize, f"{front}/acme/callback")
        async with person.get(to_sidecar, allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            back = resp.headers["Location"]
    assert back.startswith(REDIRECT_URI)
    code = dict(x.split("=", 1) for x in back.split("?", 1)[1].split("&"))["code"]
    status, token = await post_form(f"{app.listen.url}/acme/token", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI})
    leak_guard.add_token_response(token)
    assert status == 200, token
    [request] = [r for r in await provider.requests() if r["route"] == "authorization"][:1]
    assert "code_challenge" in request["query_keys"]


async def get_json_tls(ca: LocalCa, url: str) -> Any:
    async with browser(ca) as session, session.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


async def test_invalid_client_for_a_cimd_client_is_relayed_and_reported(
        oidc: ProviderFactory, sidecar: SidecarFactory, local_ca: LocalCa,
        leak_guard: LeakGuard) -> None:
    """The published copy (cimd.document_url) is missing, so the AS cannot resolve the
    client: its invalid_client is relayed as is, nothing is registered, and /readyz, the admin
    API and a metric report it."""
    provider = await cimd_provider(oidc, local_ca)
    missing = "https://127.0.0.1:{port}/acme/no-such-copy.json"
    probe = await cimd_sidecar(sidecar, local_ca, provider.issuer)
    assert probe.front is not None
    app = await sidecar({
        "front": local_ca.front(), "admin": {"token": "admin-token-for-this-test"},
        "upstreams": [upstream(provider.issuer, registration="cimd", cimd={
            "document_url": missing.format(port=probe.front.port)})]})
    status, body = await post_form(f"{app.listen.url}/acme/token",
                                   {"grant_type": "client_credentials", "scope": "api:read"})
    assert status in (400, 401)
    assert body["error"] == "invalid_client"
    assert (await provider.stats())["registrations"] == 0
    ready = await get_json(f"{app.management.url}/readyz")
    assert ready["upstreams"]["acme"]["cimd_invalid_client"] == 1
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{app.management.url}/admin/upstreams", headers={
                "Authorization": "Bearer admin-token-for-this-test"}) as resp:
            [listed] = (await resp.json())["upstreams"]
        async with session.get(f"{app.management.url}/metrics") as resp:
            metrics = await resp.text()
    assert listed["mechanism"] == "cimd"
    assert listed["cimd"]["invalid_client"] == 1
    assert listed["cimd"]["document_url"] == missing.format(port=probe.front.port)
    assert 'dcr_sidecar_cimd_invalid_client_total{upstream="acme"} 1.0' in metrics


async def test_changed_metadata_keeps_the_client_id(
        oidc: ProviderFactory, sidecar: SidecarFactory, local_ca: LocalCa,
        leak_guard: LeakGuard) -> None:
    """A reload that changes redirect URIs and scopes changes the document (a new ETag), never
    the client_id; the AS keeps accepting the client."""
    provider = await cimd_provider(oidc, local_ca)
    app = await cimd_sidecar(sidecar, local_ca, provider.issuer)
    assert app.front is not None
    before = await get_json(f"{app.listen.url}/acme/client")
    document_url = f"https://127.0.0.1:{app.front.port}/acme/client-metadata.json"
    async with browser(local_ca) as session, session.get(document_url) as resp:
        old_etag = resp.headers["ETag"]
    changed = app.settings.upstreams[0].model_copy(update={
        "redirect_uris": [REDIRECT_URI, "http://127.0.0.1:8766/callback"],
        "scopes": ["openid", "api:read", "api:write"]})
    app.reload(Settings.model_validate({**dict(app.settings), "upstreams": [changed]}))
    after = await get_json(f"{app.listen.url}/acme/client")
    assert after["client_id"] == before["client_id"] == document_url
    async with browser(local_ca) as session, session.get(document_url) as resp:
        assert resp.headers["ETag"] != old_etag
        document = await resp.json()
    assert document["redirect_uris"] == [REDIRECT_URI, "http://127.0.0.1:8766/callback"]
    status, issued = await post_form(f"{app.listen.url}/acme/token",
                                     {"grant_type": "client_credentials", "scope": "api:read"})
    leak_guard.add_token_response(issued)
    assert status == 200, issued


async def test_key_rotation_every_key_rotation_seconds(
        oidc: ProviderFactory, sidecar: SidecarFactory, local_ca: LocalCa,
        leak_guard: LeakGuard) -> None:
    """`cimd.key_rotation`: the maintenance loop starts a rotation when the newest key is that
    old; token requests keep working with the new key."""
    provider = await cimd_provider(oidc, local_ca)
    app = await cimd_sidecar(sidecar, local_ca, provider.issuer,
                             cimd={"max_age": 1, "key_overlap": 1, "key_rotation": 3})
    status, issued = await post_form(f"{app.listen.url}/acme/token",
                                     {"grant_type": "client_credentials", "scope": "api:read"})
    leak_guard.add_token_response(issued)
    assert status == 200, issued
    held = app.resolver.cimd_keys("acme")
    assert held is not None
    [first] = [k.kid for k in held]
    deadline = time.monotonic() + 15
    while True:
        held = app.resolver.cimd_keys("acme")
        kids = [k.kid for k in held] if held else []
        if kids and first not in kids:
            break
        assert time.monotonic() < deadline, f"no rotation completed: {kids}"
        await asyncio.sleep(0.1)
    status, issued = await post_form(f"{app.listen.url}/acme/token",
                                     {"grant_type": "client_credentials", "scope": "api:read"})
    leak_guard.add_token_response(issued)
    assert status == 200, issued
