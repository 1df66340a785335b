"""Plans of the forwarding path (dcr_sidecar.forward): made once per (upstream, route,
generation), never serving other credentials than their own, made again after a reload, never
made for a refused destination; a private_key_jwt assertion is still signed per request.

Nothing here connects: plans are checked and encoded, not sent (the token-route suites send)."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from dcr_sidecar import errors
from dcr_sidecar.client_keys import CryptoSigner, generate
from dcr_sidecar.config import LiveSettings, Settings, Upstream, parse_settings
from dcr_sidecar.forward import MAX_PLANS, Forwarder
from dcr_sidecar.net import Outbound
from dcr_sidecar.oauth.client_auth import ClientCredentials, basic_authorization
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.resolver import Credentials, Resolver
from dcr_sidecar.store.memory import MemoryStore
from tests.conftest import LeakGuard, SidecarFactory, sidecar_config
from tests.support.fakes import (
    TOKEN_RESPONSE,
    FakeServers,
    MapResolver,
    json_handler,
    never_answer,
)

ISSUER = "http://127.0.0.1:9/as"
SECRET = "plan-secret-0123456789"


def settings_for(tmp_path: Path, **extra: object) -> Settings:
    config = sidecar_config(tmp_path, {"store": {"backend": "memory"}, "upstreams": [{
        "name": "acme", "issuer": ISSUER, "client_id": "static-client",
        "grant_types": ["client_credentials"],
        "endpoints": {"token_endpoint": f"{ISSUER}/token"}}], **extra})
    return parse_settings(yaml.safe_dump(config), "forward.yaml",
                          env={"SECRET": SECRET})


def credentials(*, client_id: str = "static-client", generation: int = 0,
                token_endpoint: str = f"{ISSUER}/token",
                method: str = "client_secret_basic") -> Credentials:
    metadata = Metadata(ISSUER, {"issuer": ISSUER, "token_endpoint": token_endpoint,
                                 "pushed_authorization_request_endpoint": f"{ISSUER}/par"})
    signer = CryptoSigner(generate("ES256")) if method == "private_key_jwt" else None
    return Credentials(upstream="acme", metadata=metadata, client_id=client_id, method=method,
                       generation=generation, expires_at=0, static=False,
                       auth=ClientCredentials(client_id, Secret(SECRET), method, signer=signer,
                                              audience=ISSUER if signer else None))


@pytest.fixture
async def forwarder(tmp_path: Path, leak_guard: LeakGuard) -> AsyncIterator[Forwarder]:
    live = LiveSettings(settings_for(tmp_path))
    outbound = Outbound(live)
    await outbound.start()
    resolver = Resolver(live, outbound, MemoryStore(), redactor=leak_guard.redactor)
    try:
        yield Forwarder(outbound, resolver)
    finally:
        await resolver.close()
        await outbound.close()


def upstream_of(forwarder: Forwarder) -> Upstream:
    upstream = forwarder.outbound.settings.upstream("acme")
    assert upstream is not None
    return upstream


async def test_a_warm_request_finds_the_plan_made_for_its_credentials(
        forwarder: Forwarder) -> None:
    upstream, creds = upstream_of(forwarder), credentials()
    plan = forwarder.plan_for(upstream, "token", creds)
    assert forwarder.plan_for(upstream, "token", creds) is plan
    assert plan.creds is creds
    assert plan.url == f"{ISSUER}/token"
    assert plan.auth_headers == {"Authorization": basic_authorization("static-client", SECRET)}
    assert plan.auth_tail == ""
    assert plan.target is not None
    assert plan.target.named == ("http", "127.0.0.1", 9)
    # one plan per route
    par = forwarder.plan_for(upstream, "par", creds)
    assert par is not plan
    assert par.auth_tail == "client_id=static-client"


async def test_a_plan_never_serves_other_credentials_of_the_same_generation(
        forwarder: Forwarder) -> None:
    """Same (upstream, route, generation), another Credentials object (a re-adoption, a
    recovery after a store loss): a new plan, with the new client's authentication."""
    upstream = upstream_of(forwarder)
    first = forwarder.plan_for(upstream, "token", credentials())
    other = credentials(client_id="another-client")
    second = forwarder.plan_for(upstream, "token", other)
    assert second is not first
    assert second.creds is other
    assert second.auth_headers["Authorization"] == basic_authorization("another-client", SECRET)
    # an equal but distinct object is not trusted either: identity, not equality
    third = forwarder.plan_for(upstream, "token", dataclasses.replace(other))
    assert third is not second


async def test_generations_have_their_own_plans(forwarder: Forwarder) -> None:
    """The current and the superseded generation (the grace retry) are planned side by side."""
    upstream = upstream_of(forwarder)
    old, new = credentials(client_id="gen-1", generation=1), credentials(client_id="gen-2",
                                                                         generation=2)
    old_plan, new_plan = (forwarder.plan_for(upstream, "token", c) for c in (old, new))
    assert forwarder.plan_for(upstream, "token", old) is old_plan
    assert forwarder.plan_for(upstream, "token", new) is new_plan
    assert old_plan.auth_headers != new_plan.auth_headers


async def test_a_reload_makes_every_plan_again(forwarder: Forwarder, tmp_path: Path) -> None:
    upstream, creds = upstream_of(forwarder), credentials()
    plan = forwarder.plan_for(upstream, "token", creds)
    reloaded = settings_for(tmp_path, timeouts={"total": 3})
    forwarder.outbound.update(reloaded)  # as Sidecar.reload does: adjust, then swap
    forwarder.outbound.live.current = reloaded
    again = forwarder.plan_for(upstream, "token", creds)
    assert again is not plan
    assert again.epoch == forwarder.outbound.epoch
    assert again.target is not None
    assert again.target.epoch == forwarder.outbound.epoch


async def test_a_refused_destination_is_never_planned(forwarder: Forwarder) -> None:
    """A secret may not go to a server-supplied host (design.md §3.8): refused on every
    request, not remembered as planned."""
    upstream = upstream_of(forwarder)
    creds = credentials(token_endpoint="http://127.0.0.3:9/token")
    for _ in range(2):
        with pytest.raises(errors.PolicyRefused):
            forwarder.plan_for(upstream, "token", creds)
    assert len(forwarder) == 0


async def test_no_endpoint_is_not_found(forwarder: Forwarder) -> None:
    with pytest.raises(errors.NotFound):
        forwarder.plan_for(upstream_of(forwarder), "revoke", credentials())


async def test_private_key_jwt_is_signed_per_request(forwarder: Forwarder) -> None:
    plan = forwarder.plan_for(upstream_of(forwarder), "token",
                              credentials(method="private_key_jwt"))
    assert plan.auth_tail is None
    assert plan.auth_headers == {}


async def test_plans_are_bounded(forwarder: Forwarder) -> None:
    upstream = upstream_of(forwarder)
    for generation in range(MAX_PLANS + 10):
        forwarder.plan_for(upstream, "token", credentials(generation=generation))
        assert len(forwarder) <= MAX_PLANS


async def test_a_compressed_request_body_is_counted_as_it_decompresses(
        sidecar: SidecarFactory) -> None:
    """Content-Length counts compressed bytes: such a body is read against the limit as it
    decompresses (413), never read in one go on the strength of its Content-Length."""
    side = await sidecar({"limits": {"max_request_bytes": 2048}, "upstreams": [
        {"name": "acme", "issuer": "http://127.0.0.1:9", "grant_types": ["client_credentials"]}]})
    body = gzip.compress(b"grant_type=client_credentials&pad=" + b"a" * 100_000)
    assert len(body) < 2048
    async with aiohttp.ClientSession() as session, session.post(
            f"{side.listen.url}/acme/token", data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded",
                     "Content-Encoding": "gzip"}) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "invalid_request"


# ---------------------------------------------------------------- the planned send's guarantees

def pinned(name: str, token_endpoint: str) -> dict[str, Any]:
    return {"name": name, "issuer": "http://127.0.0.1:9/as", "client_id": f"{name}-client",
            "client_secret": SECRET, "grant_types": ["client_credentials"],
            "endpoints": {"token_endpoint": token_endpoint}}


async def post_token(base: str, name: str) -> tuple[int, dict[str, Any], float]:
    started = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.post(
            f"{base}/{name}/token", data={"grant_type": "client_credentials"}) as resp:
        return resp.status, await resp.json(), time.perf_counter() - started


async def test_a_planned_name_is_still_checked_when_it_is_dialled(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    """The plan checks the URL once, but a name's addresses are judged at every dial, for the
    authority the plan names: a configured name on the allow-listed address is served (which
    the server-supplied policy would refuse), one resolving outside the allow-list is refused
    (502) and the server behind that address sees nothing."""
    allowed = await servers.start([("POST", "/token", json_handler(TOKEN_RESPONSE))])
    internal = await servers.start([("POST", "/token", json_handler(TOKEN_RESPONSE))],
                                   host="127.0.0.2")
    side = await sidecar(
        {"upstreams": [pinned("good", f"http://as.test:{allowed.port}/token"),
                       pinned("bad", f"http://internal.test:{internal.port}/token")],
         "security": {"allow_http": ["127.0.0.1", "as.test", "internal.test"]}},
        resolver=MapResolver({"as.test": "127.0.0.1", "internal.test": "127.0.0.2"}))
    for _ in range(2):  # the first request plans, the second uses the plan
        status, _, _ = await post_token(side.listen.url, "good")
        assert status == 200
        status, body, _ = await post_token(side.listen.url, "bad")
        assert (status, body["error"]) == (502, "server_error")
    assert len(allowed.hits) == 2
    assert internal.hits == []


async def test_waiting_for_a_slot_counts_against_the_total_timeout(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    """connections_per_upstream = 1, timeouts.total = 1.5 s, an AS that never answers. A second
    request sent 0.5 s after the first waits ~1 s for the slot, then gets only the 0.5 s left:
    it ends ~1.5 s after it was sent (504), not after its wait plus a whole total (2.5 s)."""
    arrived: list[float] = []
    on_the_wire = asyncio.Event()

    async def silent(request: web.Request) -> web.StreamResponse:
        arrived.append(time.perf_counter())
        on_the_wire.set()
        return await never_answer(request)

    server = await servers.start([("POST", "/token", silent)])
    side = await sidecar({"upstreams": [pinned("acme", f"{server.base}/token")],
                          "limits": {"connections_per_upstream": 1},
                          "timeouts": {"connect": 1, "read": 10, "total": 1.5}})
    first = asyncio.create_task(post_token(side.listen.url, "acme"))
    await on_the_wire.wait()
    await asyncio.sleep(0.5)  # the scenario's offset, not a wait for something to happen
    status, _, elapsed = await post_token(side.listen.url, "acme")
    assert (await first)[0] == 504
    assert status == 504
    assert len(arrived) == 2  # it did get the slot, with time left
    assert 1.2 < elapsed < 2.1, elapsed


async def test_a_silent_as_trips_the_read_timeout_on_the_planned_path(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    server = await servers.start([("POST", "/token", never_answer)])
    side = await sidecar({"upstreams": [pinned("acme", f"{server.base}/token")],
                          "timeouts": {"connect": 1, "read": 0.5, "total": 5}})
    status, body, elapsed = await post_token(side.listen.url, "acme")
    assert status == 504
    assert "timeouts.read" in body["error_description"]
    assert 0.4 < elapsed < 2
