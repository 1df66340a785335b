"""Plans of the forwarding path (dcr_sidecar.forward): made once per (upstream, route,
generation), never serving other credentials than their own, made again after a reload, never
made for a refused destination; a private_key_jwt assertion is still signed per request.

Nothing here connects: plans are checked and encoded, not sent (the token-route suites send)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

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
from tests.conftest import LeakGuard, sidecar_config

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
