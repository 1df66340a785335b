"""The `front` listener and the public CIMD documents (design.md §2.2, §2.3, §3.11), without an
AS: the document and JWKS come from the configuration and the store, the front listener
serves only front-channel routes, over TLS from a test CA whose files are re-read on change.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from dcr_sidecar.app import Sidecar
from dcr_sidecar.config import parse_settings
from dcr_sidecar.errors import ConfigError
from dcr_sidecar.oauth.cimd import strong_etag
from tests.conftest import LeakGuard, SidecarFactory
from tests.support.redis_server import free_port
from tests.support.tls_ca import LocalCa

UNREACHABLE = "https://127.0.0.1:1/realm"  # nothing listens on port 1


@pytest.fixture
def test_ca(tmp_path: Path) -> LocalCa:
    return LocalCa(tmp_path)


def cimd_upstream(**extra: Any) -> dict[str, Any]:
    return {"name": "acme", "issuer": UNREACHABLE, "registration": "cimd",
            "redirect_uris": ["http://127.0.0.1:8765/callback"], "scopes": ["openid", "profile"],
            "client_metadata": {"client_name": "Acme app", "client_uri": "https://app.test/"},
            **extra}


async def fetch(url: str, ctx: ssl.SSLContext | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(
            url, ssl=ctx if ctx is not None else True, headers=headers,
            allow_redirects=False) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def test_document_and_jwks_are_served_without_any_upstream(
        sidecar: SidecarFactory, test_ca: LocalCa) -> None:
    """The document names its exact URL as client_id, carries only public metadata, and is
    cacheable (max-age, strong ETag, 304); the JWKS holds one public EC key; neither needs
    the (unreachable) AS."""
    app = await sidecar({"front": test_ca.front(), "upstreams": [cimd_upstream()]})
    assert app.front is not None
    ctx = test_ca.client_context()
    url = f"https://127.0.0.1:{app.front.port}/acme/client-metadata.json"
    status, headers, body = await fetch(url, ctx)
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert headers["Cache-Control"] == "max-age=300"
    assert headers["ETag"] == strong_etag(body)
    assert not headers["ETag"].startswith("W/")
    doc = json.loads(body)
    jwks_url = f"https://127.0.0.1:{app.front.port}/acme/jwks.json"
    assert doc == {
        "client_id": url, "client_name": "Acme app", "client_uri": "https://app.test/",
        "redirect_uris": ["http://127.0.0.1:8765/callback"],
        "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
        "scope": "openid profile", "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": "ES256", "jwks_uri": jwks_url}
    assert (await fetch(url, ctx, {"If-None-Match": headers["ETag"]}))[0] == 304

    status, headers, body = await fetch(jwks_url, ctx)
    assert status == 200
    assert headers["Cache-Control"] == "max-age=300"
    keys = json.loads(body)["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "EC"
    assert keys[0]["alg"] == "ES256"
    assert not {"d", "p", "q"} & set(keys[0])
    assert app.resolver.snapshot("acme").credentials is None  # nothing was resolved upstream


async def test_document_url_override_is_the_client_id(sidecar: SidecarFactory) -> None:
    """`cimd.document_url` / `jwks_url`: the sidecar serves the same document (on `listen`
    without `front`) naming the operator's URLs, for the operator to publish."""
    published = "https://static.app.test/oauth/acme.json"
    keys = "https://static.app.test/oauth/acme-jwks.json"
    app = await sidecar({"upstreams": [cimd_upstream(
        cimd={"document_url": published, "jwks_url": keys, "max_age": 60})]})
    status, headers, body = await fetch(f"{app.listen.url}/acme/client-metadata.json")
    assert status == 200
    assert headers["Cache-Control"] == "max-age=60"
    doc = json.loads(body)
    assert doc["client_id"] == published
    assert doc["jwks_uri"] == keys
    status, _, _ = await fetch(f"{app.listen.url}/acme/jwks.json")
    assert status == 200


async def test_public_client_document_has_no_keys(sidecar: SidecarFactory) -> None:
    app = await sidecar({"public_base_url": "https://app.test",
                         "upstreams": [cimd_upstream(cimd={"auth_method": "none"})]})
    _, _, body = await fetch(f"{app.listen.url}/acme/client-metadata.json")
    doc = json.loads(body)
    assert doc["token_endpoint_auth_method"] == "none"
    assert "jwks_uri" not in doc
    assert (await fetch(f"{app.listen.url}/acme/jwks.json"))[0] == 404


async def test_dcr_and_static_upstreams_publish_no_document(sidecar: SidecarFactory) -> None:
    """Nor does `auto` when its document URL is not https (CIMD can never be chosen)."""
    app = await sidecar({"upstreams": [
        {"name": "plain", "issuer": UNREACHABLE, "grant_types": ["client_credentials"]},
        {"name": "dcr", "issuer": UNREACHABLE, "registration": "dcr",
         "grant_types": ["client_credentials"]},
        {"name": "fixed", "issuer": UNREACHABLE, "client_id": "abc",
         "grant_types": ["client_credentials"]}]})
    for name in ("plain", "dcr", "fixed"):
        status, _, body = await fetch(f"{app.listen.url}/{name}/client-metadata.json")
        assert status == 404
        assert json.loads(body)["error"] == "not_found"


async def test_front_serves_only_front_channel_routes(
        sidecar: SidecarFactory, test_ca: LocalCa) -> None:
    """Back-channel routes are not on `front`; the documents move off `listen`."""
    app = await sidecar({"front": test_ca.front(), "upstreams": [cimd_upstream()]})
    assert app.front is not None
    ctx = test_ca.client_context()
    front = f"https://127.0.0.1:{app.front.port}"
    for path in ("/acme/client", "/acme/.well-known/openid-configuration"):
        assert (await fetch(front + path, ctx))[0] == 404
    async with aiohttp.ClientSession() as session, session.post(
            front + "/acme/token", ssl=ctx, data={"grant_type": "client_credentials"}) as resp:
        assert resp.status in (404, 405)
    assert (await fetch(f"{app.listen.url}/acme/client-metadata.json"))[0] == 404
    # /authorize is on front (it fails here only because the AS is unreachable).
    status, _, body = await fetch(front + "/acme/authorize?response_type=code", ctx)
    assert status in (502, 503)
    assert json.loads(body)["error"] != "not_found"


async def test_front_tls_pair_is_reread_when_the_files_change(
        tmp_path: Path, test_ca: LocalCa, leak_guard: LeakGuard) -> None:
    """A cert-manager style rotation: new files under the same names are served to new
    connections without a restart."""
    text = json.dumps({"version": 1, "listen": {"host": "127.0.0.1", "port": 0},
                       "management": {"host": "127.0.0.1", "port": 0},
                       "store": {"backend": "memory"}, "front": test_ca.front(),
                       "upstreams": [cimd_upstream()]})
    app = Sidecar(parse_settings(text, "test.yaml"), redactor=leak_guard.redactor)
    await app.start()
    try:
        assert app.front is not None
        assert app.tls is not None
        url = f"https://127.0.0.1:{app.front.port}/acme/client-metadata.json"
        assert (await fetch(url, test_ca.client_context()))[0] == 200
        other = LocalCa.new_ca()
        test_ca.issue(other)
        other_file = tmp_path / "other-ca.pem"
        other.cert_pem.write_to_path(str(other_file))
        trusting_new = ssl.create_default_context(cafile=str(other_file))
        deadline = time.monotonic() + 10
        while True:
            try:
                status = (await fetch(url, trusting_new))[0]
                break
            except aiohttp.ClientConnectorError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        assert status == 200
        with pytest.raises(aiohttp.ClientConnectorError):
            await fetch(url, test_ca.client_context())
    finally:
        await app.stop()


@pytest.mark.parametrize(("extra", "message"), [
    ({"front": {"host": "0.0.0.0", "port": 8081}},  # noqa: S104 - parsed only, never bound
     "front: host is not loopback"),
    ({"upstreams": [cimd_upstream(cimd={"max_age": 10, "key_rotation": 30})]},
     "upstreams[0].cimd.key_rotation: must exceed twice key_overlap"),
    ({"upstreams": [cimd_upstream(cimd={"document_url": "http://app.test/c.json"})]},
     "upstreams[0].cimd.document_url: must be an https URL"),
    ({"front": {"port": 8081, "tls": {"cert_file": "/nonexistent/c", "key_file": "/n/k"}}},
     "front.tls.cert_file: is not a readable file"),
    ({"upstreams": [cimd_upstream()]},
     "upstreams[0].registration: cimd needs an https document URL"),
])
def test_front_and_cimd_config_errors(extra: dict[str, Any], message: str) -> None:
    text = json.dumps({"version": 1, **extra})
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, "test.yaml")
    assert message in str(caught.value)


def test_public_base_defaults_to_the_https_front(test_ca: LocalCa) -> None:
    port = free_port()
    settings = parse_settings(json.dumps({"version": 1, "front": test_ca.front(port),
                                          "upstreams": [cimd_upstream()]}), "test.yaml")
    upstream = settings.upstreams[0]
    assert settings.cimd_document_url(upstream) == \
        f"https://127.0.0.1:{port}/acme/client-metadata.json"


async def test_key_set_is_sealed_at_rest_and_made_once(
        sidecar: SidecarFactory, tmp_path: Path) -> None:
    """With store.encryption_keys the stored private key is a Fernet token, never the JWK;
    a second process on the same file serves the same key set instead of making another."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    config = {"public_base_url": "https://app.test",
              "store": {"encryption_keys": [key]}, "upstreams": [cimd_upstream()]}
    first = await sidecar(config)
    _, _, jwks = await fetch(f"{first.listen.url}/acme/jwks.json")
    stored = json.loads((tmp_path / "credentials.json").read_text())
    [record] = [r for name, r in stored["records"].items() if "cimd-keys" in name]
    [generation] = record["generations"]
    assert set(generation["private_key"]) == {"fernet"}
    public = json.loads(jwks)["keys"][0]
    assert public["x"] not in json.dumps(generation)  # nothing of the key in the clear
    second = await sidecar(config)
    assert (await fetch(f"{second.listen.url}/acme/jwks.json"))[2] == jwks


def test_check_config_names_the_front_and_the_cimd_client_id(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dcr_sidecar.cli import main

    path = tmp_path / "sidecar.yaml"
    path.write_text(json.dumps({
        "version": 1, "front": {"host": "127.0.0.1", "port": 8443},
        "public_base_url": "https://app.example.com",
        "upstreams": [{"name": "acme", "issuer": UNREACHABLE,
                       "grant_types": ["client_credentials"]}]}))
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "front 127.0.0.1:8443, public https://app.example.com" in out
    assert "CIMD client_id https://app.example.com/acme/client-metadata.json" in out
