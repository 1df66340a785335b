"""The resolver on an injected clock (design.md §3.4, §3.5, §3.7): renewal timers, grace deletion
and backoff, driven by a hand-moved clock (tests/support/clock.HandClock) instead of waiting.
The sidecar, its store and the AS (an in-process HTTP server on loopback) are real; only time is
the test's. Each step waits for the maintenance loop to be asleep again (a bounded wait on a
condition), so what the clock made due has happened before the assertions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dcr_sidecar.app import Sidecar
from tests.conftest import FakeFactory, LeakGuard, SidecarFactory
from tests.support.clock import HandClock
from tests.support.fakes import FakeServer, as_metadata
from tests.test_faults import get

GRACE = 600.0
LIFETIME = 1000  # seconds: renewal margin min(max(60, 100), 500) = 100, so due at 900


class ManagedAS:
    """Open registration with RFC 7592 management: GET answers the client with a secret
    extended to `lifetime` seconds from now on the test's clock; DELETE is recorded."""

    def __init__(self, fake: FakeServer, clock: HandClock, lifetime: int | None) -> None:
        self.fake, self.clock, self.lifetime = fake, clock, lifetime
        self.registered: list[str] = []
        self.deleted: list[str] = []
        fake.json("GET", "/.well-known/oauth-authorization-server", as_metadata(fake.url))
        fake.route("POST", "/register", self.register)
        fake.json("POST", "/token", {"access_token": "clock-access-token-0123456789",
                                     "token_type": "Bearer"})

    def expires(self) -> int:
        return 0 if self.lifetime is None else int(self.clock.time()) + self.lifetime

    def client(self, client_id: str) -> dict[str, Any]:
        return {"client_id": client_id, "client_secret": f"{client_id}-secret-0123456789",
                "client_secret_expires_at": self.expires(),
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["client_credentials"]}

    async def register(self, _: web.Request) -> web.StreamResponse:
        client_id = f"clock-{len(self.registered) + 1}"
        self.registered.append(client_id)
        path = f"/register/{client_id}"

        async def read(_: web.Request) -> web.StreamResponse:
            return web.json_response(self.client(client_id))

        async def delete(_: web.Request) -> web.StreamResponse:
            self.deleted.append(client_id)
            return web.Response(status=204)

        self.fake.route("GET", path, read)
        self.fake.route("DELETE", path, delete)
        return web.json_response({**self.client(client_id),
                                  "registration_access_token": f"{client_id}-rat-0123456789",
                                  "registration_client_uri": f"{self.fake.url}{path}"},
                                 status=201)

    def reads(self, client_id: str) -> int:
        return self.fake.count("GET", f"/register/{client_id}")


def config(issuer: str, **extra: Any) -> dict[str, Any]:
    return {"upstreams": [{"name": "acme", "issuer": issuer,
                           "grant_types": ["client_credentials"],
                           "generation_grace": GRACE}], **extra}


async def token(side: Sidecar, leak_guard: LeakGuard) -> None:
    status, body, _ = await post_token(side)
    assert status == 200, body
    leak_guard.add_token_response(body)


async def post_token(side: Sidecar) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{side.listen.url}/acme/token", data={"grant_type": "client_credentials"}) as resp:
        return resp.status, json.loads(await resp.read()), dict(resp.headers)


async def test_renewal_happens_when_its_timer_is_due_and_not_before(
        fake_server: FakeFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """A secret living 1000 s is renewed (RFC 7592 GET) at 900 s on the clock: not at 899,
    once at 901, and the renewed expiry is served without a new registration."""
    clock = HandClock()
    asys = ManagedAS(await fake_server(), clock, LIFETIME)
    side = await sidecar(config(asys.fake.url), clock=clock)
    await token(side, leak_guard)
    registered_at = clock.time()
    await clock.settled(1)
    snap = side.resolver.snapshot("acme")
    assert snap.renew_at is not None
    assert snap.renew_at == pytest.approx(int(registered_at) + LIFETIME - 100)

    clock.advance(snap.renew_at - clock.time() - 1)
    await clock.settled(1)
    assert asys.reads("clock-1") == 0
    assert side.resolver.snapshot("acme").stats["renewals"] == 0

    clock.advance(2)
    await clock.settled(1)
    assert asys.reads("clock-1") == 1
    after = side.resolver.snapshot("acme")
    assert after.stats["renewals"] == 1
    assert after.credentials is not None
    assert after.credentials.expires_at == int(clock.time()) + LIFETIME
    assert after.renew_at is not None
    assert after.renew_at > clock.time() + LIFETIME - 101
    await token(side, leak_guard)
    assert asys.registered == ["clock-1"]


async def test_a_superseded_generation_is_deleted_when_its_grace_ends(
        fake_server: FakeFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """A generation that served, superseded by a rotation, stays usable for generation_grace
    (600 s on the clock) and is deleted at the AS (RFC 7592 DELETE) when it ends: not at 599."""
    clock = HandClock()
    asys = ManagedAS(await fake_server(), clock, None)
    side = await sidecar(config(asys.fake.url), clock=clock)
    await token(side, leak_guard)  # served: kept for its grace once superseded
    rotated = await side.resolver.rotate("acme")
    assert rotated.client_id == "clock-2"
    await clock.settled(1)
    snap = side.resolver.snapshot("acme")
    assert snap.previous_until == pytest.approx(clock.time() + GRACE)
    previous = side.resolver.previous("acme")
    assert previous is not None
    assert previous.client_id == "clock-1"

    clock.advance(GRACE - 1)
    await clock.settled(1)
    assert asys.deleted == []
    assert side.resolver.previous("acme") is not None

    clock.advance(2)
    await clock.settled(1)
    assert asys.deleted == ["clock-1"]
    after = side.resolver.snapshot("acme")
    assert after.previous_until is None
    assert after.stats["deletions"] == 1
    assert side.resolver.previous("acme") is None
    assert await side.resolver.generation("acme", previous.generation) is None
    await token(side, leak_guard)
    assert asys.registered == ["clock-1", "clock-2"]


async def test_backoff_refuses_until_the_clock_passes_it_then_tries_again(
        fake_server: FakeFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """A registration answered 429 + Retry-After: 30 backs off 30 s on the clock: requests
    meanwhile are refused without reaching the AS, a waiter on the backoff wakes when the clock
    passes it, and the next request registers."""
    clock = HandClock()
    asys = ManagedAS(await fake_server(), clock, None)
    asys.fake.json("POST", "/register", {"error": "slow_down"}, status=429,
                   headers={"Retry-After": "30"})
    side = await sidecar(config(asys.fake.url, backoff={"base": 1, "cap": 2}), clock=clock)
    status, body, headers = await get(f"{side.listen.url}/acme/client")
    assert (status, body["error"], headers["Retry-After"]) == (503, "temporarily_unavailable",
                                                              "30")
    snap = side.resolver.snapshot("acme")
    assert (snap.failures, snap.last_error_step) == (1, "register")
    assert snap.backoff_until == pytest.approx(clock.time() + 30)

    waiter = asyncio.create_task(side.resolver.wait_backoff("acme"))
    await clock.settled(2)  # the maintenance loop and the waiter
    clock.advance(29)
    await clock.settled(2)
    assert not waiter.done()
    status, _, headers = await get(f"{side.listen.url}/acme/client")
    assert (status, headers["Retry-After"]) == (503, "1")
    assert asys.fake.count("POST", "/register") == 1

    asys.fake.route("POST", "/register", asys.register)
    clock.advance(1.5)
    await asyncio.wait_for(waiter, 10)
    status, client, _ = await get(f"{side.listen.url}/acme/client")
    assert status == 200, client
    assert client["client_id"] == "clock-1"
    assert asys.fake.count("POST", "/register") == 2
    assert side.resolver.snapshot("acme").failures == 0
