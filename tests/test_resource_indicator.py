"""RFC 8707 `resource_indicator: auto`: the configured resource is added when the app sent
none. This build rejects `resource` sources in config (RFC 9728 discovery arrives later), so the
upstream here is a validated one with `resource` set afterwards, as discovery will set it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import yaml

from dcr_sidecar.app import Sidecar
from dcr_sidecar.config import Upstream, parse_settings
from dcr_sidecar.oauth.resource_indicator import with_default_resource
from tests.conftest import LeakGuard, sidecar_config
from tests.support.recording_as import RecordingAS

API = "https://api.example/v1"
REDIRECT = "http://127.0.0.1:8765/callback"


def upstream(**extra: object) -> Upstream:
    valid = Upstream.model_validate({"name": "u", "issuer": "https://as.example",
                                     "grant_types": ["client_credentials"], **extra})
    return valid.model_copy(update={"resource": API})


def test_auto_adds_the_configured_resource_when_the_app_named_none() -> None:
    config = upstream()
    assert config.default_resource == API
    assert with_default_resource([("grant_type", "client_credentials")],
                                 config.default_resource) == [
        ("grant_type", "client_credentials"), ("resource", API)]


def test_the_apps_own_resources_stand() -> None:
    pairs = [("resource", "https://other.example/"), ("resource", "https://third.example/")]
    assert with_default_resource(pairs, upstream().default_resource) == pairs


def test_off_and_unset_add_nothing() -> None:
    assert upstream(resource_indicator="off").default_resource is None
    plain = Upstream.model_validate({"name": "u", "issuer": "https://as.example",
                                     "grant_types": ["client_credentials"]})
    assert plain.default_resource is None
    assert with_default_resource([("scope", "a")], None) == [("scope", "a")]


async def test_routes_send_the_resource_on_authorize_token_par_and_device(
        tmp_path: Path, leak_guard: LeakGuard) -> None:
    """On the wire: authorize, token, PAR and device authorization carry the configured
    resource; revocation and introspection do not; a PAR reference gets none added."""
    async with RecordingAS() as rec:
        settings = parse_settings(yaml.safe_dump(sidecar_config(tmp_path, {"upstreams": [{
            "name": "u", "issuer": rec.issuer, "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "client_credentials"]}]})), "t.yaml")
        api = f"{rec.issuer}/api"  # a loopback resource whose RFC 9728 document names rec
        configured = settings.upstreams[0].model_copy(update={"resource": api})
        side = Sidecar(settings.model_copy(update={"upstreams": [configured]}),
                       redactor=leak_guard.redactor)
        await side.start()
        try:
            base = f"{side.listen.url}/u"
            async with aiohttp.ClientSession() as session:
                for route in ("token", "par", "device_authorization", "revoke", "introspect"):
                    async with session.post(f"{base}/{route}", data={"token": "t"}) as resp:
                        assert resp.status in (200, 201)
                authorize = [(f"{base}/authorize", {"response_type": "code"}),
                             (f"{base}/authorize", {"client_id": "x", "request_uri":
                                                    "urn:ietf:params:oauth:request_uri:r"})]
                locations = []
                for url, query in authorize:
                    async with session.get(url, params=query, allow_redirects=False) as resp:
                        locations.append(parse_qs(urlsplit(resp.headers["Location"]).query))
        finally:
            await side.stop()
    for path in ("/token", "/par", "/device"):
        assert rec.requests(path)[0].form_values("resource") == [api], path
    for path in ("/revoke", "/introspect"):
        assert rec.requests(path)[0].form_values("resource") == [], path
    assert locations[0]["resource"] == [api]
    assert "resource" not in locations[1]
