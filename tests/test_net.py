"""The outbound client against real loopback servers: the dial-time address policy (names,
literals, rebinding, authorities), transport rules, read caps and timeouts.

Only 127.0.0.0/8 is ever dialled: 127.0.0.1 is the allow-listed "AS", 127.0.0.2 and 127.0.0.3
stand for internal and foreign hosts, and MapResolver maps test names onto them.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from dcr_sidecar import errors
from dcr_sidecar.config import LiveSettings, parse_settings
from dcr_sidecar.net import Outbound
from tests.conftest import SidecarFactory, sidecar_config
from tests.support.fakes import (
    TOKEN_RESPONSE,
    FakeServer,
    FakeServers,
    MapResolver,
    json_handler,
    never_answer,
)

OutboundFactory = Callable[..., Awaitable[Outbound]]
ALLOW_HTTP = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "as.test", "other.test", "rebind.test",
              "mixed.test"]


@pytest.fixture
async def outbound(tmp_path: Path) -> AsyncIterator[OutboundFactory]:
    started: list[Outbound] = []

    async def start(upstreams: list[dict[str, Any]], *,
                    resolver: AbstractResolver | None = None, **extra: Any) -> Outbound:
        config = sidecar_config(tmp_path, {
            "security": {"allow_http": ALLOW_HTTP, "allow_private_networks": ["127.0.0.1/32"]},
            "upstreams": upstreams, **extra})
        # No real DNS unless a test asks for it: unknown names simply do not resolve.
        client = Outbound(LiveSettings(parse_settings(yaml.safe_dump(config), "test.yaml")),
                          resolver=resolver or MapResolver())
        await client.start()
        started.append(client)
        return client

    yield start
    for client in started:
        await client.close()


def upstream(issuer: str) -> dict[str, Any]:
    return {"name": "acme", "issuer": issuer, "grant_types": ["client_credentials"]}


async def hello_server(servers: FakeServers, host: str = "127.0.0.1", port: int = 0
                       ) -> FakeServer:
    return await servers.start([("GET", "/hello", json_handler({"hello": host}))], host=host,
                               port=port)


async def get(client: Outbound, url: str) -> Any:
    response = await client.request("GET", url, step="discover", upstream="acme")
    return response.status, response.json() if response.status == 200 else None


# ---------------------------------------------------------------------- the address policy

async def test_configured_name_may_use_the_allow_listed_address(
        outbound: OutboundFactory, servers: FakeServers) -> None:
    server = await hello_server(servers)
    client = await outbound([upstream(f"http://as.test:{server.port}")],
                            resolver=MapResolver({"as.test": "127.0.0.1"}))
    assert await get(client, f"http://as.test:{server.port}/hello") == (200, {
        "hello": "127.0.0.1"})


async def test_server_supplied_name_gets_no_allow_list(
        outbound: OutboundFactory, servers: FakeServers) -> None:
    """other.test resolves to the allow-listed 127.0.0.1 but is no configured authority: the
    allow-list does not apply to it, so the connection is refused before it is made."""
    server = await hello_server(servers)
    client = await outbound([upstream(f"http://as.test:{server.port}")],
                            resolver=MapResolver({"as.test": "127.0.0.1",
                                                  "other.test": "127.0.0.1"}))
    with pytest.raises(errors.PolicyRefused, match="loopback"):
        await get(client, f"http://other.test:{server.port}/hello")
    assert server.hits == []


async def test_server_supplied_private_networks_apply_to_any_authority_but_only_those(
        outbound: OutboundFactory, servers: FakeServers) -> None:
    """`allow_private_networks_server_supplied` (an AS that a resource names on an internal
    network): other.test on 127.0.0.1 is let through; 127.0.0.2, not listed, still is not."""
    server = await hello_server(servers)
    internal = await hello_server(servers, "127.0.0.2")
    client = await outbound(
        [upstream(f"http://as.test:{server.port}")],
        resolver=MapResolver({"as.test": "127.0.0.1", "other.test": "127.0.0.1",
                              "mixed.test": "127.0.0.2"}),
        security={"allow_http": ALLOW_HTTP, "allow_private_networks": ["127.0.0.1/32"],
                  "allow_private_networks_server_supplied": ["127.0.0.1/32"]})
    assert await get(client, f"http://other.test:{server.port}/hello") == (200, {
        "hello": "127.0.0.1"})
    with pytest.raises(errors.PolicyRefused, match="loopback"):
        await get(client, f"http://mixed.test:{internal.port}/hello")
    assert internal.hits == []


async def test_ip_literal_outside_the_allow_list_is_refused_before_connecting(
        outbound: OutboundFactory, servers: FakeServers) -> None:
    internal = await hello_server(servers, "127.0.0.2")
    client = await outbound([upstream(f"http://127.0.0.2:{internal.port}")])
    with pytest.raises(errors.PolicyRefused, match="loopback address"):
        await get(client, f"{internal.base}/hello")
    assert internal.hits == []


@pytest.mark.parametrize("literal", ["[::ffff:127.0.0.2]", "[::ffff:7f00:2]", "[::1]"])
async def test_ipv6_literal_forms_are_refused(outbound: OutboundFactory,
                                              literal: str) -> None:
    client = await outbound([upstream("http://127.0.0.1:1")])
    with pytest.raises(errors.PolicyRefused):
        await client.request("GET", f"https://{literal}:1/x", step="discover", upstream="acme")


@pytest.mark.parametrize(("host", "refusal"), [
    ("2130706434", errors.BadUpstream), ("127.2", errors.BadUpstream),
    ("017700000002", errors.BadUpstream), ("0x7f.0.0.2", errors.PolicyRefused)])
async def test_legacy_numeric_ipv4_forms_never_reach_a_socket(
        outbound: OutboundFactory, servers: FakeServers, host: str,
        refusal: type[errors.UpstreamError]) -> None:
    """Numeric forms that inet_aton reads as 127.0.0.2: aiohttp refuses the all-digit ones
    as invalid URLs; the hex one goes through the (real, local: no DNS query is made for a
    numeric host) resolver and its answer, 127.0.0.2, is refused by the policy."""
    internal = await hello_server(servers, "127.0.0.2")
    client = await outbound([upstream("http://127.0.0.1:1")], resolver=DefaultResolver())
    with pytest.raises(refusal):
        await client.request("GET", f"https://{host}:{internal.port}/hello", step="discover",
                             upstream="acme")
    assert internal.hits == []


async def test_dns_rebinding_dials_the_checked_address_and_refuses_the_rebound_one(
        outbound: OutboundFactory, servers: FakeServers) -> None:
    """rebind.test answers 127.0.0.1 (allowed) to the first lookup and 127.0.0.2 (forbidden)
    to every later one. The first request is served by 127.0.0.1 — the connector dialled the
    address that was checked and did not look the name up again; the next connection
    resolves anew, gets 127.0.0.2 and is refused. 127.0.0.2 never sees a request."""
    allowed = await servers.start(
        [("GET", "/hello", json_handler({"hello": "allowed"}, headers={"Connection": "close"}))])
    internal = await hello_server(servers, "127.0.0.2", allowed.port)
    resolver = MapResolver(sequences={"rebind.test": [["127.0.0.1"], ["127.0.0.2"]]})
    client = await outbound([upstream(f"http://rebind.test:{allowed.port}")], resolver=resolver)
    url = f"http://rebind.test:{allowed.port}/hello"
    assert await get(client, url) == (200, {"hello": "allowed"})
    with pytest.raises(errors.PolicyRefused, match=r"127\.0\.0\.2"):
        await get(client, url)
    assert internal.hits == []
    assert resolver.lookups == ["rebind.test", "rebind.test"]  # no cache between the two


async def test_mixed_dns_answer_dials_only_the_allowed_address(
        outbound: OutboundFactory, servers: FakeServers) -> None:
    allowed = await hello_server(servers)
    internal = await hello_server(servers, "127.0.0.2", allowed.port)
    client = await outbound([upstream(f"http://mixed.test:{allowed.port}")],
                            resolver=MapResolver({"mixed.test": ["127.0.0.2", "127.0.0.1"]}))
    for _ in range(3):
        assert await get(client, f"http://mixed.test:{allowed.port}/hello") == (
            200, {"hello": "127.0.0.1"})
    assert internal.hits == []


async def test_another_scheme_on_the_same_host_and_port_is_another_authority(
        outbound: OutboundFactory, servers: FakeServers) -> None:
    """http://as.test:P is configured; https://as.test:P is not (scheme is part of the
    authority), so it gets no allow-list — even right after as.test:P was resolved for the
    configured one (no DNS answer is shared between authorities)."""
    server = await hello_server(servers)
    client = await outbound([upstream(f"http://as.test:{server.port}")],
                            resolver=MapResolver({"as.test": "127.0.0.1"}))
    assert (await get(client, f"http://as.test:{server.port}/hello"))[0] == 200
    with pytest.raises(errors.PolicyRefused, match="loopback"):
        await get(client, f"https://as.test:{server.port}/hello")
    assert len(server.hits) == 1


async def test_keep_alive_connection_is_reused_within_its_authority(
        outbound: OutboundFactory, servers: FakeServers) -> None:
    server = await hello_server(servers)
    resolver = MapResolver({"as.test": "127.0.0.1"})
    client = await outbound([upstream(f"http://as.test:{server.port}")], resolver=resolver)
    for _ in range(5):
        assert (await get(client, f"http://as.test:{server.port}/hello"))[0] == 200
    assert resolver.lookups == ["as.test"]  # one connection, dialled once, reused


async def test_socket_guard_refuses_a_connection_with_no_named_destination(
        outbound: OutboundFactory, servers: FakeServers) -> None:
    """The connector's socket factory is the last word: a request that bypasses
    Outbound.request (so names no destination) gets the strict policy even for 127.0.0.1."""
    server = await hello_server(servers)
    client = await outbound([upstream(server.base)])
    with pytest.raises(aiohttp.ClientConnectorError, match="address policy forbids"):
        async with client.session.get(f"{server.base}/hello"):
            pass
    assert server.hits == []


# ---------------------------------------------------------------------- transport rules

async def test_plain_http_and_other_schemes_are_refused(outbound: OutboundFactory) -> None:
    client = await outbound([upstream("http://127.0.0.1:1")])
    for url in ("http://plain.test/x", "ftp://127.0.0.1/x", "file:///etc/passwd",
                "http:///nohost"):
        with pytest.raises(errors.PolicyRefused):
            await client.request("GET", url, step="discover", upstream="acme")


async def test_redirects_are_never_followed(outbound: OutboundFactory,
                                            servers: FakeServers) -> None:
    target = await hello_server(servers, "127.0.0.3")

    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(f"{target.base}/hello")

    source = await servers.start([("POST", "/register", redirect)])
    client = await outbound([upstream(source.base)])
    response = await client.request("POST", f"{source.base}/register", step="register",
                                    upstream="acme", headers={"Authorization": "Bearer x"})
    assert response.status == 307
    assert target.hits == []


async def test_environment_proxies_are_ignored(outbound: OutboundFactory, servers: FakeServers,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """trust_env=False: HTTP(S)_PROXY in the environment never sees the request."""
    proxy = await hello_server(servers, "127.0.0.3")
    server = await hello_server(servers)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy.base)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = await outbound([upstream(server.base)])
    assert (await get(client, f"{server.base}/hello"))[0] == 200
    assert proxy.hits == []


# ---------------------------------------------------------------------- bounded reads

async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    while True:
        await response.write(b" " * 65536)


async def test_announced_oversized_body_is_refused_unread(outbound: OutboundFactory,
                                                          servers: FakeServers) -> None:
    async def big(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * 4096, content_type="application/json")

    server = await servers.start([("GET", "/big", big)])
    client = await outbound([upstream(server.base)])
    with pytest.raises(errors.BadUpstream, match="4096-byte body; the limit is 2048"):
        await client.request("GET", f"{server.base}/big", step="discover", upstream="acme",
                             limit=2048)


async def test_never_ending_body_is_cut_at_the_cap(outbound: OutboundFactory,
                                                   servers: FakeServers) -> None:
    """A chunked body that never ends: the read stops just past the cap (it could never have
    been buffered whole) and the connection is dropped."""
    server = await servers.start([("GET", "/endless", endless)])
    client = await outbound([upstream(server.base)])
    started = time.perf_counter()
    with pytest.raises(errors.BadUpstream, match="more than 1048576 bytes"):
        await client.request("GET", f"{server.base}/endless", step="discover", upstream="acme")
    assert time.perf_counter() - started < 3


async def test_error_bodies_have_their_own_smaller_cap(outbound: OutboundFactory,
                                                       servers: FakeServers) -> None:
    async def chatty_error(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, body=b"e" * 10000)

    server = await servers.start([("GET", "/err", chatty_error)])
    client = await outbound([upstream(server.base)])
    with pytest.raises(errors.BadUpstream, match="limit is 8192"):
        await client.request("GET", f"{server.base}/err", step="discover", upstream="acme")


async def test_compressed_body_is_capped_after_decompression(outbound: OutboundFactory,
                                                             servers: FakeServers) -> None:
    """A 64 MiB gzip bomb (about 64 KiB on the wire) is cut at the cap of decompressed bytes."""
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)

    async def compressed(request: web.Request) -> web.StreamResponse:
        return web.Response(body=bomb, headers={"Content-Encoding": "gzip",
                                                "Content-Type": "application/json"})

    server = await servers.start([("GET", "/bomb", compressed)])
    client = await outbound([upstream(server.base)])
    assert len(bomb) < 1 << 20
    with pytest.raises(errors.BadUpstream, match="more than 1048576 bytes"):
        await client.request("GET", f"{server.base}/bomb", step="discover", upstream="acme")


# ---------------------------------------------------------------------- timeouts

async def test_silent_upstream_times_out_on_read(outbound: OutboundFactory,
                                                 servers: FakeServers) -> None:
    server = await servers.start([("GET", "/silent", never_answer)])
    client = await outbound([upstream(server.base)],
                            timeouts={"connect": 1, "read": 0.5, "total": 5})
    started = time.perf_counter()
    with pytest.raises(errors.UpstreamTimeout):
        await client.request("GET", f"{server.base}/silent", step="discover", upstream="acme")
    assert 0.4 < time.perf_counter() - started < 2


async def test_slow_loris_upstream_is_cut_by_the_total_timeout(outbound: OutboundFactory,
                                                               servers: FakeServers) -> None:
    """One byte every 0.2 s never trips the 1 s read timeout; the 1.5 s total ends it."""

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while True:
            await response.write(b" ")
            await asyncio.sleep(0.2)

    server = await servers.start([("GET", "/drip", drip)])
    client = await outbound([upstream(server.base)],
                            timeouts={"connect": 1, "read": 1, "total": 1.5})
    started = time.perf_counter()
    with pytest.raises(errors.UpstreamTimeout):
        await client.request("GET", f"{server.base}/drip", step="discover", upstream="acme")
    assert 1.4 < time.perf_counter() - started < 3


# ---------------------------------------------------------------------- per-upstream caps

async def test_a_stalled_upstream_exhausts_only_its_own_connections(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    """Two upstreams on ONE host:port (so a per-host pool would be shared): "slow" never
    answers, "fast" answers at once. With connections_per_upstream = 2 and six requests stuck
    on slow, slow's server never sees more than two at a time, and fast keeps answering
    quickly throughout; slow's callers get 504 once timeouts.total has passed."""
    in_flight = {"now": 0, "max": 0}
    saturated = asyncio.Event()

    async def stalled(request: web.Request) -> web.StreamResponse:
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        if in_flight["now"] == 2:
            saturated.set()
        try:
            return await never_answer(request)
        finally:
            in_flight["now"] -= 1

    server = await servers.start([("POST", "/slow/token", stalled),
                                  ("POST", "/fast/token", json_handler(TOKEN_RESPONSE))])

    def pinned(name: str) -> dict[str, Any]:
        return {"name": name, "issuer": f"{server.base}/{name}", "client_id": f"{name}-client",
                "token_endpoint_auth_method": "none", "grant_types": ["client_credentials"],
                "endpoints": {"token_endpoint": f"{server.base}/{name}/token"}}

    side = await sidecar({"upstreams": [pinned("slow"), pinned("fast")],
                          "limits": {"connections_per_upstream": 2},
                          "timeouts": {"connect": 1, "read": 2.5, "total": 3}})
    form = {"grant_type": "client_credentials"}
    async with aiohttp.ClientSession() as session:

        async def call(name: str) -> tuple[int, float]:
            started = time.perf_counter()
            async with session.post(f"{side.listen.url}/{name}/token", data=form) as resp:
                await resp.read()
                return resp.status, time.perf_counter() - started

        stuck = [asyncio.create_task(call("slow")) for _ in range(6)]
        await saturated.wait()
        fast = [await call("fast") for _ in range(20)]
        # Before any slow request timed out: two on the wire, four waiting for a slot.
        peak = in_flight["max"]
        slow = await asyncio.gather(*stuck)
    assert peak == 2
    assert [status for status, _ in fast] == [200] * 20
    assert max(elapsed for _, elapsed in fast) < 0.5, fast
    assert [status for status, _ in slow] == [504] * 6


async def test_requests_waiting_for_a_slot_at_shutdown_get_503_not_a_crash(
        outbound: OutboundFactory, servers: FakeServers) -> None:
    arrived = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        arrived.set()
        return await never_answer(request)

    server = await servers.start([("GET", "/silent", silent)])
    client = await outbound([upstream(server.base)], limits={"connections_per_upstream": 1})
    calls = [asyncio.create_task(client.request("GET", f"{server.base}/silent",
                                                step="discover", upstream="acme"))
             for _ in range(2)]
    await arrived.wait()  # one on the wire, one waiting for the slot
    await client.close()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, errors.Unavailable) for o in outcomes), outcomes


async def test_a_reload_that_narrows_the_policy_retires_pooled_connections(
        outbound: OutboundFactory, servers: FakeServers, tmp_path: Path) -> None:
    """A keep-alive connection checked under the old allow-list is not reused after a reload
    that removes it: the next request dials anew and is refused."""
    server = await hello_server(servers)
    resolver = MapResolver({"as.test": "127.0.0.1"})
    client = await outbound([upstream(f"http://as.test:{server.port}")], resolver=resolver)
    url = f"http://as.test:{server.port}/hello"
    assert (await get(client, url))[0] == 200
    narrowed = sidecar_config(tmp_path, {
        "security": {"allow_http": ALLOW_HTTP, "allow_private_networks": []},
        "upstreams": [upstream(f"http://as.test:{server.port}")]})
    reloaded = parse_settings(yaml.safe_dump(narrowed), "reloaded.yaml")
    client.update(reloaded)  # as Sidecar.reload does: adjust, then swap the one reference
    client.live.current = reloaded
    with pytest.raises(errors.PolicyRefused, match="loopback"):
        await get(client, url)
    assert len(server.hits) == 1
    unchanged = client.session
    again = parse_settings(yaml.safe_dump(narrowed), "again.yaml")
    client.update(again)
    client.live.current = again
    assert client.session is unchanged  # the same policy keeps the pool
