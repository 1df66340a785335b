"""Static private_key_jwt (design.md §3.3) against the real oidc-provider: a pre-registered client
whose key the operator supplies (``client_key``, PEM or JWK, re-read on change), and a ready-made
assertion file (``client_assertion``, a projected service-account token stand-in)."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey

from dcr_sidecar.client_keys import KeyFileError, load_key_file
from dcr_sidecar.config import parse_settings
from dcr_sidecar.errors import ConfigError
from dcr_sidecar.oauth.pkce import make_verifier, s256_challenge
from dcr_sidecar.oauth.secret import Secret
from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.support.oidc import OidcProvider, login_and_consent, new_browser_session

REDIRECT_URI = "http://127.0.0.1:8765/callback"
KEY_CLIENT = "static-pkj"
WIF_CLIENT = "workload-client"
ISSUER_KID = "test-workload-issuer"


def replace(path: Path, data: bytes) -> None:
    """Replace by a rename, as a Secret or projected volume is updated."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data)
    os.replace(staged, path)


def ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def rsa_jwk(kid: str) -> bytes:
    from dcr_sidecar.client_keys import _rsa_jwk

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return json.dumps({**_rsa_jwk(key), "kid": kid}).encode()


class Keys:
    """Two key files for one client: the first a PEM (kid = thumbprint), the second a JWK."""

    def __init__(self, tmp_path: Path, leak_guard: LeakGuard) -> None:
        self.path = tmp_path / "client-key.pem"
        self.first, self.second = ec_pem(), rsa_jwk("key-two")
        self.path.write_bytes(self.first)
        staged = tmp_path / "second.json"
        staged.write_bytes(self.second)
        self.first_key = load_key_file(str(self.path), kid=None, alg=None)
        self.second_key = load_key_file(str(staged), kid=None, alg=None)
        for key in (self.first_key, self.second_key):
            leak_guard.add(key.private_jwk.reveal(), *(
                v for k, v in json.loads(key.private_jwk.reveal()).items() if k in "d p q"))

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self.first_key.public), dict(self.second_key.public)]}


class WorkloadIssuer:
    """A test issuer whose key the provider trusts for WIF_CLIENT (its jwks holds the key)."""

    def __init__(self) -> None:
        self.key = ECKey.generate_key("P-256")

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self.key.as_dict(private=False), "kid": ISSUER_KID, "alg": "ES256",
                          "use": "sig"}]}

    def token(self, audience: str, *, lifetime: int = 300, now: int | None = None) -> str:
        issued = int(time.time()) if now is None else now
        claims = {"iss": WIF_CLIENT, "sub": WIF_CLIENT, "aud": audience,
                  "jti": secrets.token_urlsafe(16), "iat": issued, "exp": issued + lifetime}
        return jwt.encode({"alg": "ES256", "kid": ISSUER_KID, "typ": "JWT"}, claims, self.key)


def static_clients(keys: Keys, issuer: WorkloadIssuer) -> list[dict[str, Any]]:
    return [
        {"client_id": KEY_CLIENT, "token_endpoint_auth_method": "private_key_jwt",
         "jwks": keys.jwks(), "grant_types": ["client_credentials", "authorization_code",
                                              "refresh_token"],
         "response_types": ["code"], "redirect_uris": [REDIRECT_URI]},
        {"client_id": WIF_CLIENT, "token_endpoint_auth_method": "private_key_jwt",
         "jwks": issuer.jwks(), "grant_types": ["client_credentials"], "response_types": [],
         "redirect_uris": []},
    ]


@pytest.fixture
async def setup(oidc: ProviderFactory, tmp_path: Path,
                leak_guard: LeakGuard) -> tuple[OidcProvider, Keys, WorkloadIssuer]:
    keys, issuer = Keys(tmp_path, leak_guard), WorkloadIssuer()
    provider = await oidc(clients=static_clients(keys, issuer))
    return provider, keys, issuer


def key_upstream(issuer: str, key_file: Path) -> dict[str, Any]:
    return {"upstreams": [{
        "name": "acme", "issuer": issuer, "client_id": KEY_CLIENT,
        "client_key": {"file": str(key_file)},
        "grant_types": ["client_credentials", "authorization_code", "refresh_token"],
        "redirect_uris": [REDIRECT_URI]}]}


def assertion_upstream(issuer: str, assertion_file: Path) -> dict[str, Any]:
    return {"upstreams": [{
        "name": "wif", "issuer": issuer, "client_id": WIF_CLIENT,
        "client_assertion": {"file": str(assertion_file)},
        "grant_types": ["client_credentials"]}]}


async def post(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, data=form) as resp:
        body = await resp.read()
        return resp.status, json.loads(body) if body else {}


async def token_requests(provider: OidcProvider, route: str = "token") -> list[dict[str, Any]]:
    return [dict(r) for r in await provider.requests() if r["route"] == route]


async def test_static_private_key_jwt_token_refresh_and_revocation(
        setup: tuple[OidcProvider, Keys, WorkloadIssuer], sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """client_credentials, a code exchange, a refresh and a revocation: each reaches the
    provider with an assertion signed by the key file (its kid), none with a secret."""
    provider, keys, _ = setup
    side = await sidecar(key_upstream(provider.issuer, keys.path))
    base = f"{side.listen.url}/acme"
    status, body = await post(f"{base}/token", {"grant_type": "client_credentials"})
    assert status == 200, body
    leak_guard.add_token_response(body)

    verifier = make_verifier()
    query = urlencode({"client_id": KEY_CLIENT, "response_type": "code", "scope": "openid",
                       "redirect_uri": REDIRECT_URI, "state": "s-1", "prompt": "consent",
                       "code_challenge": s256_challenge(verifier),
                       "code_challenge_method": "S256"})
    async with new_browser_session() as browser:
        callback = await login_and_consent(browser, f"{provider.issuer}/auth?{query}",
                                           REDIRECT_URI)
    code = parse_qs(urlsplit(callback).query)["code"][0]
    status, tokens = await post(f"{base}/token", {
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier})
    assert status == 200, tokens
    leak_guard.add_token_response(tokens)
    status, refreshed = await post(f"{base}/token", {
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]})
    assert status == 200, refreshed
    leak_guard.add_token_response(refreshed)
    status, _ = await post(f"{base}/revoke", {"token": refreshed["refresh_token"],
                                              "token_type_hint": "refresh_token"})
    assert status == 200
    status, body = await post(f"{base}/token", {
        "grant_type": "refresh_token", "refresh_token": refreshed["refresh_token"]})
    assert (status, body["error"]) == (400, "invalid_grant")

    seen = await token_requests(provider) + await token_requests(provider, "revocation")
    assert len(seen) == 5
    for request in seen:
        assert request["client_id"] == KEY_CLIENT
        assert request["assertion_kid"] == keys.first_key.kid
        assert request["auth_scheme"] is None
        assert "client_secret" not in request["body_keys"]
        assert "client_assertion_type" in request["body_keys"]
    assert [r["status"] for r in seen] == [200, 200, 200, 400, 200]


async def test_a_replaced_key_file_signs_the_next_assertion(
        setup: tuple[OidcProvider, Keys, WorkloadIssuer], sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """The key file replaced (PEM -> JWK with kid key-two): the very next token request is
    signed with the new key, without a restart."""
    provider, keys, _ = setup
    side = await sidecar(key_upstream(provider.issuer, keys.path))
    url = f"{side.listen.url}/acme/token"
    status, body = await post(url, {"grant_type": "client_credentials"})
    assert status == 200, body
    leak_guard.add_token_response(body)
    replace(keys.path, keys.second)
    status, body = await post(url, {"grant_type": "client_credentials"})
    assert status == 200, body
    leak_guard.add_token_response(body)
    kids = [r["assertion_kid"] for r in await token_requests(provider)]
    assert kids == [keys.first_key.kid, "key-two"]


async def test_client_assertion_file_is_sent_and_read_again_when_it_changes(
        setup: tuple[OidcProvider, Keys, WorkloadIssuer], sidecar: SidecarFactory,
        tmp_path: Path, leak_guard: LeakGuard) -> None:
    """A JWT signed by the test issuer (whose key the provider holds for the client) is sent as
    the client assertion; a renewed file is sent next. The provider refuses a replayed jti, so
    the second success also shows the first assertion was not reused."""
    provider, _, issuer = setup
    path = tmp_path / "token"
    first = issuer.token(provider.issuer)
    path.write_text(first)
    leak_guard.add(first)
    side = await sidecar(assertion_upstream(provider.issuer, path))
    url = f"{side.listen.url}/wif/token"
    status, body = await post(url, {"grant_type": "client_credentials"})
    assert status == 200, body
    leak_guard.add_token_response(body)
    second = issuer.token(provider.issuer)
    leak_guard.add(second)
    replace(path, second.encode())
    status, body = await post(url, {"grant_type": "client_credentials"})
    assert status == 200, body
    leak_guard.add_token_response(body)
    seen = await token_requests(provider)
    assert [(r["client_id"], r["assertion_kid"], r["status"]) for r in seen] == [
        (WIF_CLIENT, ISSUER_KID, 200)] * 2


async def test_an_expired_client_assertion_is_a_clear_502_and_never_sent(
        setup: tuple[OidcProvider, Keys, WorkloadIssuer], sidecar: SidecarFactory,
        tmp_path: Path, leak_guard: LeakGuard) -> None:
    """A file whose exp has passed: 502 naming the upstream, the file, the expiry and what
    renews it; the provider sees no token request."""
    provider, _, issuer = setup
    path = tmp_path / "token"
    stale = issuer.token(provider.issuer, now=int(time.time()) - 600, lifetime=300)
    path.write_text(stale)
    leak_guard.add(stale)
    side = await sidecar(assertion_upstream(provider.issuer, path))
    status, body = await post(f"{side.listen.url}/wif/token",
                              {"grant_type": "client_credentials"})
    assert status == 502, body
    assert body["error"] == "server_error"
    description = body["error_description"]
    assert f"the client assertion of 'wif' in {str(path)!r} (client_assertion.file) expired " \
           "at " in description
    assert "an expired assertion is never sent" in description
    assert "expirationSeconds" in description
    assert await token_requests(provider) == []


async def test_doctor_shows_the_key_and_the_assertion_s_expiry_and_fails_when_expired(
        setup: tuple[OidcProvider, Keys, WorkloadIssuer], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], leak_guard: LeakGuard) -> None:
    """`doctor`: the key file's alg and kid; the assertion file's expiry; an expired assertion
    fails (exit 1) with the same sentence as the 502."""
    from dcr_sidecar.doctor import run_doctor
    from tests.conftest import sidecar_config

    provider, keys, issuer = setup
    settings = parse_settings(yaml.safe_dump(sidecar_config(
        tmp_path, key_upstream(provider.issuer, keys.path))), "t.yaml")
    assert await run_doctor(settings, "acme", register=False, as_json=False,
                            redactor=leak_guard.redactor) == 0
    assert f"client key: {keys.path} (ES256, kid {keys.first_key.kid})" in \
        capsys.readouterr().out

    path = tmp_path / "token"
    fresh = issuer.token(provider.issuer)
    path.write_text(fresh)
    leak_guard.add(fresh)
    settings = parse_settings(yaml.safe_dump(sidecar_config(
        tmp_path, assertion_upstream(provider.issuer, path))), "t.yaml")
    assert await run_doctor(settings, "wif", register=False, as_json=False,
                            redactor=leak_guard.redactor) == 0
    out = capsys.readouterr().out
    assert f"client assertion: {path}, expires " in out
    assert fresh not in out

    stale = issuer.token(provider.issuer, now=int(time.time()) - 600, lifetime=300)
    leak_guard.add(stale)
    replace(path, stale.encode())
    assert await run_doctor(settings, "wif", register=False, as_json=False,
                            redactor=leak_guard.redactor) == 1
    out = capsys.readouterr().out
    assert (f"FAILED at forward: server_error: the client assertion of 'wif' in {str(path)!r} "
            "(client_assertion.file) expired at ") in out
    assert stale not in out


def test_encoder_takes_one_signer_per_assertion_and_sends_ready_made_ones_as_they_are() -> None:
    """Pure layer: a SignerSource is asked once per assertion (header kid and signature from
    the same key, even when the source changes in between); a presigned assertion goes with
    client_id beside it and is asked for at the request's time."""
    from dcr_sidecar.oauth.client_auth import ClientCredentials, Freshness, auth_parts
    from dcr_sidecar.oauth.jose import b64url, b64url_decode

    class Fixed:
        def __init__(self, kid: str) -> None:
            self.alg, self.kid = "ES256", kid

        def compact_jws(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
            parts = (json.dumps(header).encode(), json.dumps(claims).encode(), self.kid.encode())
            return ".".join(b64url(part) for part in parts)

    class Rotating:
        def __init__(self) -> None:
            self.calls = 0

        def current(self) -> Fixed:
            self.calls += 1
            return Fixed(f"k{self.calls}")

    source = Rotating()
    creds = ClientCredentials("c-1", None, "private_key_jwt", signer=source,
                              audience="https://as.test")
    for expected in ("k1", "k2"):
        form = dict(auth_parts(creds, Freshness(1000, "j")).form)
        header, _, signature = form["client_assertion"].split(".")
        assert json.loads(b64url_decode(header))["kid"] == expected
        assert b64url_decode(signature) == expected.encode()
    assert source.calls == 2

    class Ready:
        def __init__(self) -> None:
            self.asked: list[int] = []

        def assertion(self, now: int) -> str:
            self.asked.append(now)
            return "h.p.s"

    ready = Ready()
    parts = auth_parts(ClientCredentials("c-1", None, "private_key_jwt", presigned=ready),
                       Freshness(1234, "j"))
    assert parts.form == (("client_id", "c-1"), (
        "client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", "h.p.s"))
    assert ready.asked == [1234]


def test_key_files_pem_and_jwk_get_kid_and_alg(tmp_path: Path) -> None:
    """PEM: kid is the RFC 7638 thumbprint, EC -> ES256; JWK: its own kid, RSA -> RS256; the
    config's kid and alg win; a key type that cannot sign the alg is refused."""
    pem, jwk = tmp_path / "k.pem", tmp_path / "k.json"
    pem.write_bytes(ec_pem())
    jwk.write_bytes(rsa_jwk("mine"))
    from_pem = load_key_file(str(pem), kid=None, alg=None)
    assert from_pem.alg == "ES256"
    from dcr_sidecar.client_keys import thumbprint

    assert from_pem.kid == thumbprint(dict(from_pem.public))
    assert (load_key_file(str(jwk), kid=None, alg=None).kid,
            load_key_file(str(jwk), kid=None, alg=None).alg) == ("mine", "RS256")
    chosen = load_key_file(str(jwk), kid="given", alg="PS256")
    assert (chosen.kid, chosen.alg) == ("given", "PS256")
    with pytest.raises(KeyFileError, match="holds an EC key, which cannot sign RS256"):
        load_key_file(str(pem), kid=None, alg="RS256")
    assert "d" not in from_pem.public
    assert isinstance(from_pem.private_jwk, Secret)


def _settings(upstream: dict[str, Any]) -> None:
    base = {"name": "acme", "issuer": "https://as.test", "client_id": "c-1",
            "grant_types": ["client_credentials"]}
    parse_settings(yaml.safe_dump({"version": 1, "upstreams": [{**base, **upstream}]}),
                   "sidecar.yaml")


@pytest.mark.parametrize(("given", "message"), [
    ({"token_endpoint_auth_method": "private_key_jwt"},
     "upstreams[0].token_endpoint_auth_method: private_key_jwt needs client_key"),
    ({"client_key": {"file": "{tmp}/k.pem"}, "client_assertion": {"file": "{tmp}/k.pem"}},
     "upstreams[0].client_assertion: give client_key or client_assertion, not both"),
    ({"client_key": {"file": "{tmp}/missing.pem"}},
     "upstreams[0].client_key.file: cannot read '{tmp}/missing.pem'"),
    ({"client_key": {"file": "{tmp}/enc.pem"}},
     "upstreams[0].client_key.file: '{tmp}/enc.pem' holds an encrypted key"),
    ({"client_key": {"file": "{tmp}/k.pem"}, "token_endpoint_auth_method": "none"},
     "upstreams[0].client_key: is for private_key_jwt (token_endpoint_auth_method is none)"),
    ({"client_assertion": {"file": "{tmp}/missing"}},
     "upstreams[0].client_assertion.file: client assertion file '{tmp}/missing' does not exist"),
    ({"client_key": {"file": "{tmp}/k.pem"}, "client_secret": "s3cret-s3cret"},
     "upstreams[0].client_secret: is not used with private_key_jwt"),
])
def test_static_key_settings_fail_loudly(tmp_path: Path, given: dict[str, Any],
                                         message: str) -> None:
    (tmp_path / "k.pem").write_bytes(ec_pem())
    (tmp_path / "enc.pem").write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pass")))
    filled = json.loads(json.dumps(given).replace("{tmp}", str(tmp_path)))
    with pytest.raises(ConfigError) as failed:
        _settings(filled)
    assert f"sidecar.yaml: {message.format(tmp=tmp_path)}" in str(failed.value)


def test_client_key_on_a_dcr_upstream_is_refused(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_bytes(ec_pem())
    with pytest.raises(ConfigError, match=r"upstreams\[0\]\.client_key: is for static clients"):
        parse_settings(yaml.safe_dump({"version": 1, "upstreams": [{
            "name": "acme", "issuer": "https://as.test", "grant_types": ["client_credentials"],
            "client_key": {"file": str(tmp_path / "k.pem")}}]}), "sidecar.yaml")
