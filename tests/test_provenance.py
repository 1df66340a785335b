"""Provenance (design.md §3.8): configured authorities versus server-supplied endpoints — the
address allow-list, the initial access token and client secrets, each refused before any
connection, with the refused server recording zero hits.

127.0.0.1 is the allow-listed AS; 127.0.0.2 and 127.0.0.3 stand for internal and foreign hosts.
"""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from dcr_sidecar.config import parse_settings
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.provenance import configured_authorities, secret_authorities
from tests.conftest import LeakGuard, SidecarFactory
from tests.support.fakes import FakeServer, FakeServers, MapResolver, fake_as_routes

IAT = "iat-provenance-0123456789"
SECRET = "static-secret-provenance-0123456789"
SECURITY = {"allow_http": ["127.0.0.1", "127.0.0.2", "127.0.0.3", "as.test", "internal.test",
                           "other.test"],
            "allow_private_networks": ["127.0.0.1/32"]}


def static(issuer: str, **extra: Any) -> dict[str, Any]:
    return {"name": "acme", "issuer": issuer, "client_id": "static-client",
            "grant_types": ["client_credentials"], **extra}


def dynamic(issuer: str, **extra: Any) -> dict[str, Any]:
    return {"name": "acme", "issuer": issuer, "grant_types": ["client_credentials"], **extra}


async def post_token(base: str, name: str = "acme") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{base}/{name}/token", data={"grant_type": "client_credentials"}) as resp:
        return resp.status, await resp.json()


async def get_client(base: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/acme/client") as resp:
        return resp.status, await resp.json()


def requests_to(server: FakeServer, path: str) -> int:
    return sum(1 for hit in server.hits if hit.path == path)


# ---------------------------------------------------------------------- the address allow-list

async def test_token_endpoint_on_unlisted_loopback_address_is_refused_before_connecting(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    """Metadata names a token endpoint on 127.0.0.2 (not allow-listed): 502, zero hits there.
    A public client carries no secret, so this is the address policy alone."""
    internal = await servers.start(fake_as_routes(), host="127.0.0.2")
    as_ = await servers.start(fake_as_routes(lambda _: {
        "token_endpoint": f"{internal.base}/token"}))
    side = await sidecar({"security": SECURITY, "upstreams": [
        static(as_.base, token_endpoint_auth_method="none")]})
    status, body = await post_token(side.listen.url)
    assert status == 502
    assert body["error"] == "server_error"
    assert "127.0.0.2 is a loopback address" in body["error_description"]
    assert internal.hits == []


async def test_registration_endpoint_on_unlisted_loopback_address_is_refused_before_connecting(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    internal = await servers.start(fake_as_routes(client_secret="x" * 32), host="127.0.0.2")
    as_ = await servers.start(fake_as_routes(lambda _: {
        "registration_endpoint": f"{internal.base}/register"}))
    side = await sidecar({"security": SECURITY, "upstreams": [dynamic(as_.base)]})
    status, body = await get_client(side.listen.url)
    assert status == 502
    assert "loopback" in body["error_description"]
    assert internal.hits == []


async def test_server_supplied_name_on_the_allow_listed_address_is_refused(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    """as.test is configured; other.test is only named by the metadata. Both resolve to the
    allow-listed 127.0.0.1, but the allow-list applies to configured authorities only."""
    as_ = await servers.start(fake_as_routes(
        lambda issuer: {"token_endpoint": issuer.replace("as.test", "other.test") + "/token"}))
    resolver = MapResolver({"as.test": "127.0.0.1", "other.test": "127.0.0.1"})
    side = await sidecar({"security": SECURITY, "upstreams": [
        static(f"http://as.test:{as_.port}", token_endpoint_auth_method="none")]},
        resolver=resolver)
    status, body = await post_token(side.listen.url)
    assert status == 502
    assert "other.test resolves to 127.0.0.1, a loopback address" in body["error_description"]
    assert requests_to(as_, "/token") == 0
    assert "other.test" in resolver.lookups  # refused at dial time, after resolution


async def test_server_supplied_name_for_an_internal_host_is_refused_at_dial_time(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    internal = await servers.start(fake_as_routes(), host="127.0.0.2")
    as_ = await servers.start(fake_as_routes(lambda _: {
        "token_endpoint": f"http://internal.test:{internal.port}/token"}))
    resolver = MapResolver({"as.test": "127.0.0.1", "internal.test": "127.0.0.2"})
    side = await sidecar({"security": SECURITY, "upstreams": [
        static(f"http://as.test:{as_.port}", token_endpoint_auth_method="none")]},
        resolver=resolver)
    status, body = await post_token(side.listen.url)
    assert status == 502
    assert "internal.test resolves to 127.0.0.2" in body["error_description"]
    assert internal.hits == []


async def test_configured_name_reaches_its_allow_listed_address(
        servers: FakeServers, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """The other side of the rule: a configured name on the allow-listed address works."""
    as_ = await servers.start(fake_as_routes())
    side = await sidecar({"security": SECURITY, "upstreams": [
        static(f"http://as.test:{as_.port}", client_secret=SECRET)]},
        resolver=MapResolver({"as.test": "127.0.0.1"}))
    leak_guard.add(SECRET)
    status, body = await post_token(side.listen.url)
    assert status == 200, body
    assert requests_to(as_, "/token") == 1


# ---------------------------------------------------------------------- the initial access token

async def test_registration_redirect_to_another_host_is_refused_and_iat_stays_home(
        servers: FakeServers, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """The registration endpoint answers 307 to another host: the sidecar does not follow
    (502), the other host records zero hits and so never sees the IAT."""
    leak_guard.add(IAT)
    foreign = await servers.start(fake_as_routes(client_secret="y" * 32), host="127.0.0.3")

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{foreign.base}/register")

    as_ = await servers.start([("POST", "/register", redirect), *fake_as_routes()])
    side = await sidecar({"security": SECURITY, "upstreams": [
        dynamic(as_.base, initial_access_token=IAT)]})
    status, body = await get_client(side.listen.url)
    assert status == 502
    assert "redirect" in body["error_description"]
    assert foreign.hits == []
    assert requests_to(as_, "/register") == 1


async def test_iat_refused_for_a_registration_endpoint_on_another_authority(
        servers: FakeServers, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """Metadata names a registration endpoint on another authority (same address, other
    port) while an IAT is configured: 502 naming both authorities, raised before any
    connection; no server ever receives the IAT."""
    leak_guard.add(IAT)
    other = await servers.start(fake_as_routes(client_secret="z" * 32))
    as_ = await servers.start(fake_as_routes(lambda _: {
        "registration_endpoint": f"{other.base}/register"}))
    side = await sidecar({"security": SECURITY, "upstreams": [
        dynamic(as_.base, initial_access_token=IAT)]})
    status, body = await get_client(side.listen.url)
    assert status == 502
    description = body["error_description"]
    assert f"http://127.0.0.1:{other.port}" in description
    assert f"http://127.0.0.1:{as_.port}" in description
    assert "registration_endpoint" in description
    assert other.hits == []
    assert requests_to(as_, "/register") == 0
    for hit in as_.hits + other.hits:
        assert IAT not in str(hit.headers)


async def test_pinned_registration_endpoint_receives_the_iat(
        servers: FakeServers, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """Pinning the same endpoint with registration_endpoint makes it a configured authority."""
    leak_guard.add(IAT, "z" * 32)
    other = await servers.start(fake_as_routes(client_secret="z" * 32))
    as_ = await servers.start(fake_as_routes(lambda _: {
        "registration_endpoint": f"{other.base}/register"}))
    side = await sidecar({"security": SECURITY, "upstreams": [
        dynamic(as_.base, initial_access_token=IAT,
                registration_endpoint=f"{other.base}/register")]})
    status, body = await get_client(side.listen.url)
    assert status == 200, body
    assert [hit.headers.get("Authorization") for hit in other.hits] == [f"Bearer {IAT}"]


# ---------------------------------------------------------------------- client secrets

async def test_client_secret_goes_only_to_its_own_upstreams_authorities(
        servers: FakeServers, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """Upstream a's metadata names upstream b's token endpoint. b's authority is configured
    (the address policy lets it through), but it is not a's: a's secret is refused there."""
    leak_guard.add(SECRET, SECRET + "-b")
    b = await servers.start(fake_as_routes())
    a = await servers.start(fake_as_routes(lambda _: {"token_endpoint": f"{b.base}/token"}))
    side = await sidecar({"security": SECURITY, "upstreams": [
        static(a.base, name="a", client_secret=SECRET),
        static(b.base, name="b", client_secret=SECRET + "-b")]})
    status, body = await post_token(side.listen.url, "a")
    assert status == 502
    assert "refusing to send the client credentials of 'a'" in body["error_description"]
    assert f"http://127.0.0.1:{b.port}" in body["error_description"]
    assert requests_to(b, "/token") == 0
    status, body = await post_token(side.listen.url, "b")  # b's own secret is fine there
    assert status == 200, body


def test_secret_authorities_are_the_configured_ones_and_the_metadata_source() -> None:
    settings = parse_settings(
        "version: 1\nupstreams:\n- name: acme\n  discovery_url: https://d.test/.well-known/"
        "openid-configuration\n  issuer: https://Id.TEST/\n  grant_types: [client_credentials]"
        "\n  registration_endpoint: https://reg.test:8443/r\n", "t.yaml")
    upstream = settings.upstreams[0]
    configured = {("https", "d.test", 443), ("https", "id.test", 443),
                  ("https", "reg.test", 8443)}
    assert configured_authorities(upstream) == configured
    document = Metadata("https://Id.TEST/", {}, source=None)
    assert secret_authorities(upstream, document) == configured
    fetched = Metadata("https://Id.TEST/", {}, source="https://as.test/.well-known/x")
    assert secret_authorities(upstream, fetched) == configured | {("https", "as.test", 443)}
