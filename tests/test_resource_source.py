"""`resource` sources that meet real MCP servers (design.md §3.1): the probe the resource answers
(`resource_probe: post`), a configured `resource_metadata` URL, the RFC 8707 `resource` and the
scope taken from the resource's metadata (§2.3), and the re-check that follows the resource to a
new authorization server (§3.4). Real in-process servers on loopback: a resource that answers
401 only to POST, and recording authorization servers."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from aiohttp import web

from dcr_sidecar.config import parse_settings
from dcr_sidecar.errors import ConfigError
from dcr_sidecar.oauth.resource import validate_resource_metadata, with_default_scope
from tests.conftest import FakeFactory, SidecarFactory
from tests.flows import REDIRECT_URI, follow_once, get_json
from tests.support.fake_server import FakeServer
from tests.support.recording_as import RecordingAS

PRM = "/.well-known/oauth-protected-resource"
CUSTOM = "/custom/metadata/location.json"


def mcp_server(fake: FakeServer, *, metadata_path: str = CUSTOM) -> None:
    """An MCP server as the SDKs build it: 401 with the metadata's URL to POST, 404 to GET."""
    challenge = f'Bearer error="invalid_token", resource_metadata="{fake.url}{metadata_path}"'

    async def post(_: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "invalid_token"}, status=401,
                                 headers={"WWW-Authenticate": challenge})

    fake.route("POST", "/mcp", post)


def resource_doc(fake: FakeServer, issuer: str, **extra: Any) -> dict[str, Any]:
    return {"resource": f"{fake.url}/mcp", "authorization_servers": [issuer], **extra}


def upstream(fake: FakeServer, **extra: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "mcp", "resource": f"{fake.url}/mcp",
                           "redirect_uris": [REDIRECT_URI], **extra}]}


async def authorize(base: str, **query: str) -> dict[str, list[str]]:
    """The app's authorization request; the query the sidecar sends on to the AS."""
    params = {"response_type": "code", "redirect_uri": REDIRECT_URI, "state": "s", **query}
    status, location, body = await follow_once(f"{base}/mcp/authorize?{urlencode(params)}")
    assert status == 302, body
    assert location is not None
    return parse_qs(urlsplit(location).query)


# ---------------------------------------------------------------------------- the probe


async def test_post_probe_finds_metadata_an_mcp_server_names_only_to_post(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """`resource_probe: post`: a JSON-RPC ping without a token; the 401's WWW-Authenticate names
    a custom location, which is used; neither GET nor the well-known locations are asked."""
    fake = await fake_server()
    mcp_server(fake)
    async with RecordingAS() as rec:
        fake.json("GET", CUSTOM, resource_doc(fake, rec.issuer))
        side = await sidecar(upstream(fake, issuer=rec.issuer, resource_probe="post"))
        client = await get_json(f"{side.listen.url}/mcp/client")
    assert client["issuer"] == rec.issuer
    assert len(rec.requests("/register")) == 1
    probe = [(body, headers) for path, body, headers in fake.bodies if path == "/mcp"]
    assert len(probe) == 1
    assert json.loads(probe[0][0]) == {"jsonrpc": "2.0", "id": 0, "method": "ping"}
    assert probe[0][1]["Content-Type"] == "application/json"
    assert "Authorization" not in probe[0][1]
    assert fake.count("GET", "/mcp") == 0
    assert fake.count("GET", PRM + "/mcp") == fake.count("GET", PRM) == 0


async def test_get_probe_stays_the_default_and_its_failure_names_the_resource(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """Without `resource_probe` the resource gets a GET (404 from an MCP server), then the
    well-known locations; the failure names the protected resource, not an "issuer"."""
    fake = await fake_server()
    mcp_server(fake)
    async with RecordingAS() as rec:
        side = await sidecar(upstream(fake, issuer=rec.issuer))
        status, _, body = await follow_once(f"{side.listen.url}/mcp/client")
    assert status == 502
    assert fake.count("GET", "/mcp") == 1
    assert fake.count("POST", "/mcp") == 0
    assert fake.count("GET", PRM + "/mcp") == fake.count("GET", PRM) == 1
    description = body["error_description"]
    assert description.startswith(f"no usable metadata for protected resource "
                                   f"'{fake.url}/mcp': ")
    assert "issuer" not in description


async def test_configured_resource_metadata_url_is_read_first_without_a_probe(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    mcp_server(fake)
    async with RecordingAS() as rec:
        fake.json("GET", "/meta.json", resource_doc(fake, rec.issuer))
        side = await sidecar(upstream(fake, issuer=rec.issuer,
                                      resource_metadata=f"{fake.url}/meta.json"))
        assert (await get_json(f"{side.listen.url}/mcp/client"))["issuer"] == rec.issuer
    assert fake.count("GET", "/meta.json") == 1
    assert fake.count("POST", "/mcp") == fake.count("GET", "/mcp") == 0


async def test_configured_resource_metadata_must_name_the_resource_exactly(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """RFC 9728 §3.3 unchanged: a named document for a parent resource is refused (and the
    search goes on: the POST probe's document is the right one)."""
    fake = await fake_server()
    mcp_server(fake)
    async with RecordingAS() as rec:
        fake.json("GET", "/meta.json", {"resource": fake.url, "authorization_servers": ["x"]})
        fake.json("GET", CUSTOM, resource_doc(fake, rec.issuer))
        side = await sidecar(upstream(fake, issuer=rec.issuer, resource_probe="post",
                                      resource_metadata=f"{fake.url}/meta.json"))
        assert (await get_json(f"{side.listen.url}/mcp/client"))["issuer"] == rec.issuer
    assert fake.count("GET", "/meta.json") == 1
    assert fake.count("POST", "/mcp") == 1


@pytest.mark.parametrize("key", ["resource_probe: post", "resource_metadata: https://r.test/m"])
def test_probe_keys_need_a_resource_source(key: str) -> None:
    text = f"""
version: 1
upstreams:
  - name: acme
    issuer: https://as.test
    grant_types: [client_credentials]
    {key}
"""
    with pytest.raises(ConfigError) as info:
        parse_settings(text, "sidecar.yaml")
    assert f"upstreams[0].{key.split(':', maxsplit=1)[0]}" in str(info.value)
    assert "needs resource beside it" in str(info.value)


# ---------------------------------------------------------------------------- scope and resource


@pytest.mark.parametrize(("pairs", "scopes", "expected"), [
    ([("a", "1")], ("s1", "s2"), [("a", "1"), ("scope", "s1 s2")]),
    ([("scope", "mine")], ("s1",), [("scope", "mine")]),
    ([("scope", " ")], ("s1",), [("scope", "s1")]),
    ([("a", "1")], None, [("a", "1")]),
    ([("a", "1")], (), [("a", "1")]),
])
def test_default_scope_follows_the_mcp_selection_order(
        pairs: list[tuple[str, str]], scopes: tuple[str, ...] | None,
        expected: list[tuple[str, str]]) -> None:
    assert with_default_scope(pairs, scopes) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (["a", "b", "a"], ("a", "b")),
    (["a b"], None),
    ("a", None),
    ([1], None),
])
def test_resource_scopes_supported_malformed_is_treated_as_absent(
        value: object, expected: tuple[str, ...] | None) -> None:
    doc = {"resource": "https://r.test/mcp", "authorization_servers": ["https://as.test"],
           "scopes_supported": value}
    meta = validate_resource_metadata(doc, "https://r.test/mcp", exact=True)
    assert meta.scopes_supported == expected


async def test_authorize_without_scope_gets_the_resource_scopes_and_served_metadata_lists_them(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    mcp_server(fake)
    async with RecordingAS() as rec:
        fake.json("GET", CUSTOM, resource_doc(fake, rec.issuer,
                                              scopes_supported=["mcp:read", "mcp:write"]))
        side = await sidecar(upstream(fake, issuer=rec.issuer, resource_probe="post"))
        served = await get_json(f"{side.listen.url}/mcp/.well-known/oauth-authorization-server")
        bare = await authorize(side.listen.url)
        chosen = await authorize(side.listen.url, scope="mcp:read")
    assert served["protected_resources"] == [f"{fake.url}/mcp"]
    assert served["protected_resource_scopes_supported"] == ["mcp:read", "mcp:write"]
    assert bare["scope"] == ["mcp:read mcp:write"]
    assert chosen["scope"] == ["mcp:read"]
    assert bare["resource"] == chosen["resource"] == [f"{fake.url}/mcp"]


async def test_no_scope_is_added_when_the_resource_lists_none(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    mcp_server(fake)
    async with RecordingAS() as rec:
        fake.json("GET", CUSTOM, resource_doc(fake, rec.issuer))
        side = await sidecar(upstream(fake, issuer=rec.issuer, resource_probe="post"))
        served = await get_json(f"{side.listen.url}/mcp/.well-known/oauth-authorization-server")
        sent = await authorize(side.listen.url)
    assert "scope" not in sent
    assert "protected_resource_scopes_supported" not in served


async def test_resource_indicator_is_the_identifier_the_root_document_publishes(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """Under the root-document relaxation the document names a parent: RFC 8707 `resource` is
    that identifier, exactly as published (RFC 9728 §3.3), on authorize and token alike."""
    fake = await fake_server()
    async with RecordingAS() as rec:
        fake.json("GET", PRM, {"resource": fake.url, "authorization_servers": [rec.issuer]})
        side = await sidecar(upstream(fake, issuer=rec.issuer))
        sent = await authorize(side.listen.url)
    assert sent["resource"] == [fake.url]
