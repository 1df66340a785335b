"""Route behaviour and design.md §2.4 error answers: JSON bodies, request ids, status codes,
Retry-After, and the authorize redirect when credentials cannot be had."""

from __future__ import annotations

import socket
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from tests.conftest import ProviderFactory, SidecarFactory
from tests.flows import REDIRECT_URI
from tests.support.fakes import FakeServers, fake_as_routes


def closed_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dead_upstream() -> dict[str, object]:
    return {"upstreams": [{"name": "down", "issuer": f"http://127.0.0.1:{closed_port()}",
                           "redirect_uris": [REDIRECT_URI]}],
            "backoff": {"base": 30, "cap": 60}}


async def test_unknown_upstream_is_404_json_with_request_id(sidecar: SidecarFactory) -> None:
    side = await sidecar({})
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/nope/client", headers={"X-Request-Id": "req-123.abc"}) as resp:
        body = await resp.json()
    assert resp.status == 404
    assert body["error"] == "not_found"
    assert resp.headers["X-Request-Id"] == "req-123.abc"


async def test_invalid_request_id_is_replaced(sidecar: SidecarFactory) -> None:
    side = await sidecar({})
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/nope/client", headers={"X-Request-Id": "bad id!"}) as resp:
        assert resp.headers["X-Request-Id"] != "bad id!"
        assert len(resp.headers["X-Request-Id"]) == 32


async def test_unreachable_as_gives_503_then_backoff_with_retry_after(
        sidecar: SidecarFactory) -> None:
    """Connection refused -> 503 temporarily_unavailable; during backoff, 503 at once with
    Retry-After, naming the step that failed."""
    side = await sidecar(dead_upstream())
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{side.listen.url}/down/client") as resp:
            first = await resp.json()
            assert resp.status == 503
            assert first["error"] == "temporarily_unavailable"
            assert int(resp.headers["Retry-After"]) >= 1
        async with session.get(f"{side.listen.url}/down/client") as resp:
            second = await resp.json()
            assert resp.status == 503
            assert "backing off" in second["error_description"]
            assert int(resp.headers["Retry-After"]) >= 1
    assert side.resolver.snapshot("down").failures == 1


async def test_authorize_unavailable_redirects_error_with_state(sidecar: SidecarFactory) -> None:
    """RFC 6749 §4.1.2.1: a configured redirect_uri gets error=temporarily_unavailable + state."""
    side = await sidecar(dead_upstream())
    query = {"response_type": "code", "client_id": "x", "redirect_uri": REDIRECT_URI,
             "state": "s-42"}
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/down/authorize", params=query, allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    assert location.startswith(REDIRECT_URI + "?")
    params = parse_qs(urlsplit(location).query)
    assert params["error"] == ["temporarily_unavailable"]
    assert params["state"] == ["s-42"]


async def test_authorize_refuses_unlisted_redirect_uri_without_redirecting(
        sidecar: SidecarFactory) -> None:
    side = await sidecar(dead_upstream())
    query = {"response_type": "code", "redirect_uri": "https://evil.example/cb"}
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/down/authorize", params=query, allow_redirects=False) as resp:
        body = await resp.json()
    assert resp.status == 400
    assert body["error"] == "invalid_request"
    assert "Location" not in resp.headers


async def test_authorize_sets_real_client_id_and_keeps_query(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    provider = await oidc()
    side = await sidecar({"upstreams": [{"name": "acme", "issuer": provider.issuer,
                                         "redirect_uris": [REDIRECT_URI]}]})
    query = [("response_type", "code"), ("client_id", "placeholder"),
             ("redirect_uri", REDIRECT_URI), ("state", "abc"), ("scope", "openid"),
             ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
             ("code_challenge_method", "S256")]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{side.listen.url}/acme/authorize", params=query,
                               allow_redirects=False) as resp:
            assert resp.status == 302
            location = resp.headers["Location"]
        async with session.get(f"{side.listen.url}/acme/client") as resp:
            client_id = (await resp.json())["client_id"]
    assert location.startswith(f"{provider.issuer}/auth?")
    params = parse_qs(urlsplit(location).query)
    assert params["client_id"] == [client_id]
    for key, value in query:
        if key != "client_id":
            assert params[key] == [value]


async def test_loopback_any_port_matches_other_ports_only_when_enabled(
        sidecar: SidecarFactory) -> None:
    up = {"name": "down", "issuer": f"http://127.0.0.1:{closed_port()}",
          "redirect_uris": ["http://127.0.0.1:1111/cb"]}
    side = await sidecar({"upstreams": [up, {**up, "name": "any", "loopback_any_port": True}],
                          "backoff": {"base": 30}})
    async with aiohttp.ClientSession() as session:
        for name, expected in (("down", 400), ("any", 302)):
            async with session.get(f"{side.listen.url}/{name}/authorize", params={
                    "redirect_uri": "http://127.0.0.1:2222/cb"}, allow_redirects=False) as resp:
                assert resp.status == expected, name


async def test_token_route_refuses_dpop_wrong_type_and_large_bodies(
        sidecar: SidecarFactory) -> None:
    side = await sidecar(dict(dead_upstream(), limits={"max_request_bytes": 2048}))
    url = f"{side.listen.url}/down/token"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data={"grant_type": "x"}, headers={"DPoP": "e30"}) as resp:
            assert resp.status == 400
            assert "DPoP" in (await resp.json())["error_description"]
        async with session.post(url, json={"grant_type": "x"}) as resp:
            assert resp.status == 400
        async with session.post(url, data={"grant_type": "x", "pad": "a" * 5000}) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"] == "invalid_request"
        async with session.post(url, data=b"%zz=1&&=",
                                headers={"Content-Type": "application/x-www-form-urlencoded"}
                                ) as resp:
            assert resp.status == 400


async def test_oversized_headers_get_431_json(sidecar: SidecarFactory) -> None:
    side = await sidecar({"limits": {"max_header_bytes": 2048}})
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/x/client", headers={"X-Big": "a" * 3000}) as resp:
        assert resp.status == 431
        assert (await resp.json())["error"] == "invalid_request"


async def test_healthz_and_readyz_follow_required_upstreams(sidecar: SidecarFactory) -> None:
    config = dead_upstream()
    config["upstreams"][0]["required"] = True  # type: ignore[index]
    side = await sidecar(config)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{side.management.url}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{side.management.url}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 503
            assert body["upstreams"]["down"]["credentials"] is False


async def test_required_upstream_becomes_ready_after_prefetch(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    """`required` implies prefetch: /readyz turns 200 without any app request."""
    import asyncio

    provider = await oidc()
    side = await sidecar({"upstreams": [{"name": "acme", "issuer": provider.issuer,
                                         "grant_types": ["client_credentials"],
                                         "required": True}]})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{side.management.url}/readyz") as resp:
                if resp.status == 200:
                    break
            assert loop.time() < deadline, "never became ready"
            await asyncio.sleep(0.05)
    assert (await provider.stats())["registrations"] == 1


@pytest.mark.parametrize("char", ["\x00", "\x0b", "\x7f", "\x1b"])
async def test_control_character_in_authorization_endpoint_is_a_502_naming_the_member(
        servers: FakeServers, sidecar: SidecarFactory, char: str) -> None:
    """An authorization_endpoint with NUL, VT, DEL or ESC is refused at discovery: /authorize
    answers a JSON 502 naming the member instead of dropping the connection (then, during the
    backoff that follows, 503s that still name it)."""
    as_ = await servers.start(fake_as_routes(lambda issuer: {
        "authorization_endpoint": f"{issuer}/auth{char}orize"}))
    side = await sidecar({"upstreams": [{"name": "acme", "issuer": as_.base,
                                         "client_id": "static-client",
                                         "redirect_uris": [REDIRECT_URI]}]})
    async with aiohttp.ClientSession() as session:
        for path, status in (("/acme/authorize?response_type=code&client_id=x", 502),
                             ("/acme/client", 503)):
            async with session.get(f"{side.listen.url}{path}", allow_redirects=False) as resp:
                body = await resp.json()
                assert resp.status == status, body
                assert "authorization_endpoint" in body["error_description"]
                assert "X-Request-Id" in resp.headers
            assert body["error"] == ("server_error" if status == 502
                                     else "temporarily_unavailable")
