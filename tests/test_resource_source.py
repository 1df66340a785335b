"""`resource` sources that meet real MCP servers (design.md §3.1): the probe the resource answers
(`resource_probe: post`), a configured `resource_metadata` URL, the RFC 8707 `resource` and the
scope taken from the resource's metadata (§2.3), and the re-check that follows the resource to a
new authorization server (§3.4). Real in-process servers on loopback: a resource that answers
401 only to POST, and recording authorization servers."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from dcr_sidecar.config import parse_settings
from dcr_sidecar.errors import ConfigError
from dcr_sidecar.oauth.resource import validate_resource_metadata, with_default_scope
from dcr_sidecar.resolver import migration
from tests.conftest import FakeFactory, SidecarFactory
from tests.flows import REDIRECT_URI, follow_once, get_json
from tests.support.clock import HandClock
from tests.support.fakes import FakeServer
from tests.support.recording_as import RecordingAS
from tests.test_discovery_sources import run_doctor

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


# ---------------------------------------------------------------------------- AS migration


class MovingResource:
    """A protected resource whose metadata names one AS, then another; ETags and 304 as a
    real server sends them, every request's conditional header recorded."""

    def __init__(self, fake: FakeServer, issuer: str) -> None:
        self.fake, self.issuer, self.version = fake, issuer, 1
        self.conditional: list[str | None] = []
        self.fail = False
        fake.route("GET", PRM + "/mcp", self._document)

    def move_to(self, issuer: str) -> None:
        self.issuer, self.version = issuer, self.version + 1

    async def _document(self, request: web.Request) -> web.StreamResponse:
        self.conditional.append(request.headers.get("If-None-Match"))
        if self.fail:
            return web.Response(status=503)
        etag = f'"v{self.version}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.json_response({"resource": f"{self.fake.url}/mcp",
                                  "authorization_servers": [self.issuer]},
                                 headers={"ETag": etag})


def unpinned(fake: FakeServer, **extra: Any) -> dict[str, Any]:
    """The resource's AS is server-supplied (another port): allowed on loopback explicitly."""
    return {**upstream(fake, **extra), "admin": {"token": ADMIN_TOKEN},
            "security": {"allow_http": ["127.0.0.1"],
                         "allow_private_networks": ["127.0.0.1/32"],
                         "allow_private_networks_server_supplied": ["127.0.0.1/32"]}}


ADMIN_TOKEN = "admin-token-0123456789abcdef"


async def admin_upstream(side: Any) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.management.url}/admin/upstreams",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        body = await resp.json()
    described: dict[str, Any] = body["upstreams"][0]
    return described


def sent_to(location_query: dict[str, list[str]]) -> str:
    return location_query["client_id"][0]


async def test_authorization_start_follows_the_resource_to_a_new_authorization_server(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """The resource's metadata names AS2 instead of AS1: the next authorization start goes to
    AS2 with a client registered there; AS2 never sees AS1's client_id; the admin API and an
    audit event say so."""
    fake = await fake_server()
    async with RecordingAS() as as1, RecordingAS() as as2:
        resource = MovingResource(fake, as1.issuer)
        side = await sidecar(unpinned(fake))
        first = await authorize_at(side.listen.url)
        resource.move_to(as2.issuer)
        with capture_logs() as logs:
            second = await authorize_at(side.listen.url)
        described = await admin_upstream(side)
    assert first.startswith(as1.issuer + "/authorize?")
    assert second.startswith(as2.issuer + "/authorize?")
    old_id = sent_to(parse_qs(urlsplit(first).query))
    new_id = sent_to(parse_qs(urlsplit(second).query))
    assert old_id == as1.clients[0]["client_id"]
    assert new_id == as2.clients[0]["client_id"] != old_id
    assert len(as1.clients) == len(as2.clients) == 1
    assert all(old_id not in repr(r) for r in as2.recorded)
    changes = [e for e in logs if e["event"] == "authorization_server_changed"]
    assert [(e["previous_issuer"], e["issuer"], e["via"]) for e in changes] == [
        (as1.issuer, as2.issuer, "recheck")]
    assert described["issuer"] == as2.issuer
    assert described["client_id"] == new_id
    assert described["generation"] == 2  # the upstream's next generation, at the new AS
    assert described["resource"]["authorization_servers"] == [as2.issuer]
    assert [(c["previous_issuer"], c["issuer"], c["via"])
            for c in described["resource"]["authorization_server_changes"]] == [
        (as1.issuer, as2.issuer, "recheck")]


async def authorize_at(base: str) -> str:
    params = {"response_type": "code", "redirect_uri": REDIRECT_URI, "state": "s"}
    status, location, body = await follow_once(f"{base}/mcp/authorize?{urlencode(params)}")
    assert status == 302, body
    assert location is not None
    return location


async def test_recheck_is_conditional_and_at_most_once_per_interval(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """The first start uses what discovery just read; the next asks with If-None-Match (304);
    starts within the interval ask nothing; after it (on the resolver's clock), one more
    conditional request."""
    clock = HandClock()
    fake = await fake_server()
    async with RecordingAS() as rec:
        resource = MovingResource(fake, rec.issuer)
        side = await sidecar(unpinned(fake), clock=clock)
        for _ in range(4):
            await authorize_at(side.listen.url)
        assert resource.conditional == [None, '"v1"']
        clock.advance(migration.RECHECK_INTERVAL - 0.01)
        await authorize_at(side.listen.url)
        assert resource.conditional == [None, '"v1"']
        clock.advance(0.01)
        await authorize_at(side.listen.url)
    assert resource.conditional == [None, '"v1"', '"v1"']
    assert len(rec.clients) == 1


async def test_failed_recheck_keeps_the_authorization_server_in_use(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    async with RecordingAS() as rec:
        resource = MovingResource(fake, rec.issuer)
        side = await sidecar(unpinned(fake))
        await authorize_at(side.listen.url)
        resource.fail = True
        with capture_logs() as logs:
            location = await authorize_at(side.listen.url)
        described = await admin_upstream(side)
    assert location.startswith(rec.issuer + "/authorize?")
    assert len(resource.conditional) == 2
    assert [e["event"] for e in logs if e["event"].startswith("resource_recheck")] == [
        "resource_recheck_failed"]
    assert described["backoff_until"] is None
    assert described["resource"]["authorization_server_changes"] == []


async def test_pinned_issuer_does_not_follow_the_resource(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    fake = await fake_server()
    async with RecordingAS() as as1, RecordingAS() as as2:
        resource = MovingResource(fake, as1.issuer)
        side = await sidecar(unpinned(fake, issuer=as1.issuer))
        await authorize_at(side.listen.url)
        resource.move_to(as2.issuer)
        with capture_logs() as logs:
            location = await authorize_at(side.listen.url)
    assert location.startswith(as1.issuer + "/authorize?")
    assert as2.recorded == []
    ignored = [e for e in logs if e["event"] == "authorization_server_change_ignored"]
    assert [e["why"] for e in ignored] == ["issuer pinned"]


async def test_doctor_shows_what_the_resource_names_and_that_serve_follows_it(
        fake_server: FakeFactory, tmp_path: Path) -> None:
    fake = await fake_server()
    async with RecordingAS() as rec:
        fake.json("GET", CUSTOM, resource_doc(fake, rec.issuer, scopes_supported=["mcp:a"]))
        mcp_server(fake)
        config = unpinned(fake, resource_probe="post")
        code, out, _ = await run_doctor(tmp_path, config, "mcp", "--json")
        _, text, _ = await run_doctor(tmp_path, config, "mcp")
    assert code == 0
    report = json.loads(out)["resource"]
    assert report["metadata_url"] == f"{fake.url}{CUSTOM}"
    assert report["authorization_servers"] == [rec.issuer]
    assert report["uses"] == rec.issuer
    assert report["scopes_supported"] == ["mcp:a"]
    assert "moves to a new AS, with a new client" in report["migration"]
    assert f"authorization servers {rec.issuer}; uses {rec.issuer}; scopes mcp:a" in text


async def test_pushed_authorization_request_follows_the_resource_too(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """POST /{name}/par starts a login as well: after the move it goes to AS2's PAR endpoint
    with AS2's client."""
    fake = await fake_server()
    form = {"response_type": "code", "redirect_uri": REDIRECT_URI, "state": "s"}
    async with RecordingAS() as as1, RecordingAS() as as2:
        resource = MovingResource(fake, as1.issuer)
        side = await sidecar(unpinned(fake))
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{side.listen.url}/mcp/par", data=form) as resp:
                assert resp.status == 201
            resource.move_to(as2.issuer)
            async with session.post(f"{side.listen.url}/mcp/par", data=form) as resp:
                assert resp.status == 201
    assert len(as1.requests("/par")) == len(as2.requests("/par")) == 1
    assert len(as2.clients) == 1
    old_id = as1.clients[0]["client_id"]
    assert all(old_id not in repr(r) for r in as2.recorded)


async def test_background_refresh_that_finds_another_authorization_server_is_a_change(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """The metadata refresh (before the cache expires) reads the moved resource: the change is
    recorded (via refresh) and the next login uses a client registered at AS2."""
    fake = await fake_server()
    async with RecordingAS() as as1, RecordingAS() as as2:
        resource = MovingResource(fake, as1.issuer)
        side = await sidecar({**unpinned(fake, prefetch=True),
                              "discovery": {"cache_ttl": 1, "min_ttl": 1}})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while side.resolver.snapshot("mcp").credentials is None:
            assert loop.time() < deadline, "no prefetch"
            await asyncio.sleep(0.05)
        resource.move_to(as2.issuer)
        while not side.resolver.snapshot("mcp").authorization_server_changes:
            assert loop.time() < deadline, "no background refresh saw the move"
            await asyncio.sleep(0.05)
        location = await authorize_at(side.listen.url)
    snap = side.resolver.snapshot("mcp")
    assert [(c.previous_issuer, c.issuer, c.via) for c in snap.authorization_server_changes] == [
        (as1.issuer, as2.issuer, "refresh")]
    assert location.startswith(as2.issuer + "/authorize?")
    assert sent_to(parse_qs(urlsplit(location).query)) == as2.clients[0]["client_id"]
    assert snap.credentials is not None
    assert snap.credentials.generation == 2


async def test_static_client_stays_with_its_authorization_server_after_a_refresh(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """A static client's credentials belong to one AS: the re-discovery after the metadata
    expired reads the moved resource, keeps the AS in use (logged), and sends nothing to the
    new one."""
    fake = await fake_server()
    async with RecordingAS() as as1, RecordingAS() as as2:
        resource = MovingResource(fake, as1.issuer)
        side = await sidecar({**unpinned(fake, client_id="static-app",
                                         client_secret="static-secret-0123456789"),
                              "discovery": {"cache_ttl": 1, "min_ttl": 1}})
        await authorize_at(side.listen.url)
        resource.move_to(as2.issuer)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        # the cached metadata expires
        while side.resolver.snapshot("mcp").metadata_expires_at is not None:
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        with capture_logs() as logs:
            location = await authorize_at(side.listen.url)
    assert len(resource.conditional) == 2  # the re-discovery read the moved document
    assert location.startswith(as1.issuer + "/authorize?")
    assert sent_to(parse_qs(urlsplit(location).query)) == "static-app"
    assert as2.recorded == []
    assert side.resolver.snapshot("mcp").authorization_server_changes == ()
    assert [e["why"] for e in logs if e["event"] == "authorization_server_change_ignored"] == [
        "static client"]
