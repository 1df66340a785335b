"""Discovery's redirect rules (design.md §3.1): same origin only, at most 5, never https->http."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dcr_sidecar.discovery import _same_origin
from tests.conftest import SidecarFactory
from tests.support.fakes import FakeServers, Handler, fake_as_routes

WELL_KNOWN = "/.well-known/oauth-authorization-server"


def redirect_to(location: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(location)

    return handle


def chain(count: int, final: str) -> list[tuple[str, str, Handler]]:
    """/hop0 -> /hop1 -> ... -> final: `count` redirects in all."""
    return [("GET", f"/hop{i}", redirect_to(f"/hop{i + 1}" if i + 1 < count else final))
            for i in range(count)]


async def metadata_via(sidecar: SidecarFactory, discovery_url: str,
                       issuer: str) -> tuple[int, dict[str, Any]]:
    side = await sidecar({"upstreams": [{
        "name": "acme", "discovery_url": discovery_url, "issuer": issuer, "client_id": "c",
        "token_endpoint_auth_method": "none", "grant_types": ["client_credentials"]}]})
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/acme{WELL_KNOWN}") as resp:
        return resp.status, await resp.json()


async def test_five_same_origin_redirects_are_followed(servers: FakeServers,
                                                       sidecar: SidecarFactory) -> None:
    server = await servers.start([*chain(5, WELL_KNOWN), *fake_as_routes()])
    status, body = await metadata_via(sidecar, f"{server.base}/hop0", server.base)
    assert status == 200, body
    assert body["issuer"] == server.base


async def test_a_sixth_redirect_is_refused(servers: FakeServers,
                                           sidecar: SidecarFactory) -> None:
    server = await servers.start([*chain(6, WELL_KNOWN), *fake_as_routes()])
    status, body = await metadata_via(sidecar, f"{server.base}/hop0", server.base)
    assert status == 502
    assert "more than 5 redirects" in body["error_description"]
    assert WELL_KNOWN not in server.paths()


async def test_a_redirect_to_another_origin_is_refused_unfollowed(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    foreign = await servers.start(fake_as_routes(), host="127.0.0.3")
    server = await servers.start(chain(1, f"{foreign.base}{WELL_KNOWN}"))
    status, body = await metadata_via(sidecar, f"{server.base}/hop0", server.base)
    assert status == 502
    assert "another origin" in body["error_description"]
    assert foreign.hits == []


@pytest.mark.parametrize(("a", "b", "same"), [
    ("https://as.test/a", "https://as.test:443/b", True),
    ("https://AS.test/a", "https://as.test/b", True),
    ("https://as.test/a", "http://as.test/b", False),       # never https -> http
    ("https://as.test/a", "http://as.test:443/b", False),
    ("https://as.test/a", "https://as.test:8443/b", False),
    ("https://as.test/a", "https://evil.test/b", False),
    ("https://as.test/a", "https://as.test.evil.test/b", False),
    ("https://as.test/a", "https:///nohost", False),
])
def test_same_origin(a: str, b: str, same: bool) -> None:
    assert _same_origin(b, a) is same
