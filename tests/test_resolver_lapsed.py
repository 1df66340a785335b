"""A client secret that expired during a long AS outage (design.md §3.5, RFC 7592 §2.1-2.2):
when the AS answers again, the sidecar first reads (and if needed updates) the existing
registration with its registration access token, which is how an expired secret is renewed;
it registers a new client only when the AS says the registration is gone (401/404), refuses
its management (403), or gave no management endpoint. Real in-process AS on loopback, time
moved by hand (tests/support/clock.HandClock): nothing sleeps."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from tests.conftest import FakeFactory, LeakGuard, SidecarFactory
from tests.support.clock import HandClock
from tests.support.fakes import FakeServer, as_metadata
from tests.test_resolver_clock import config, post_token, token

LIFETIME = 1000  # seconds; renewal due at 900 (margin 100)


class FlakyManagedAS:
    """Open registration with RFC 7592 management; `down` makes every endpoint answer 503 (an
    outage); `management` is what the client configuration endpoint answers once it is back:
    200 with the secret extended to `LIFETIME` from now on the test's clock, or a status."""

    def __init__(self, fake: FakeServer, clock: HandClock, *, manageable: bool = True) -> None:
        self.fake, self.clock, self.manageable = fake, clock, manageable
        self.down = False
        self.management: int = 200
        self.registered: list[str] = []
        self.calls: list[str] = []  # "register" / "GET <client_id>" / "PUT <client_id>"
        fake.route("GET", "/.well-known/oauth-authorization-server", self._metadata)
        fake.route("POST", "/register", self._register)
        fake.route("POST", "/token", self._token)

    def _unavailable(self) -> web.StreamResponse | None:
        return web.Response(status=503, text="down") if self.down else None

    async def _metadata(self, _: web.Request) -> web.StreamResponse:
        return self._unavailable() or web.json_response(as_metadata(self.fake.url))

    async def _token(self, _: web.Request) -> web.StreamResponse:
        return self._unavailable() or web.json_response(
            {"access_token": "lapsed-access-token-0123456789", "token_type": "Bearer"})

    def _client(self, client_id: str) -> dict[str, Any]:
        return {"client_id": client_id, "client_secret": f"{client_id}-secret-0123456789",
                "client_secret_expires_at": int(self.clock.time()) + LIFETIME,
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["client_credentials"]}

    async def _register(self, _: web.Request) -> web.StreamResponse:
        if (down := self._unavailable()) is not None:
            return down
        client_id = f"lapsed-{len(self.registered) + 1}"
        self.registered.append(client_id)
        self.calls.append("register")
        path = f"/register/{client_id}"

        async def manage(request: web.Request) -> web.StreamResponse:
            if (down := self._unavailable()) is not None:
                return down
            self.calls.append(f"{request.method} {client_id}")
            if self.management != 200:
                return web.json_response({"error": "invalid_token"}, status=self.management)
            return web.json_response(self._client(client_id))

        async def delete(_: web.Request) -> web.StreamResponse:
            return web.Response(status=204)

        answer = self._client(client_id)
        if self.manageable:
            for method in ("GET", "PUT"):
                self.fake.route(method, path, manage)
            self.fake.route("DELETE", path, delete)
            answer.update(registration_access_token=f"{client_id}-rat-0123456789",
                          registration_client_uri=f"{self.fake.url}{path}")
        return web.json_response(answer, status=201)


async def outlive_the_secret(asys: FlakyManagedAS, clock: HandClock) -> None:
    """The AS goes down before the renewal is due and stays down past the secret's expiry;
    the sidecar's renewal attempts meanwhile all fail. Then it comes back."""
    asys.down = True
    for _ in range(12):  # 1200 s in 100 s steps: past renewal (900) and expiry (1000)
        clock.advance(100)
        await clock.settled(1)
    asys.down = False


async def test_a_secret_that_expired_in_an_outage_is_renewed_not_replaced(
        fake_server: FakeFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """The secret expires while the AS is down; once it is back, the sidecar renews it with
    RFC 7592 (the same client, the same generation, a new expiry) and registers nothing."""
    clock = HandClock()
    asys = FlakyManagedAS(await fake_server(), clock)
    side = await sidecar(config(asys.fake.url, backoff={"base": 1, "cap": 2}), clock=clock)
    await token(side, leak_guard)
    await clock.settled(1)
    await outlive_the_secret(asys, clock)
    assert asys.calls == ["register"]  # nothing reached the AS while it was down

    clock.advance(3)  # past any backoff
    await clock.settled(1)
    status, body, _ = await post_token(side)
    assert status == 200, body
    leak_guard.add_token_response(body)
    assert asys.registered == ["lapsed-1"], asys.calls
    assert asys.calls[:2] == ["register", "GET lapsed-1"]
    snap = side.resolver.snapshot("acme")
    assert snap.credentials is not None
    assert (snap.credentials.client_id, snap.credentials.generation) == ("lapsed-1", 1)
    assert snap.credentials.expires_at > clock.time()
    assert snap.stats["renewals"] == 1
    assert snap.stats["registrations"] == 1


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_an_expired_client_the_as_no_longer_manages_is_replaced_after_asking(
        fake_server: FakeFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        status: int) -> None:
    """Back from the outage, the AS answers the RFC 7592 read with `status` (401/404: the
    registration is gone; 403: management refused): then, and only after asking, the sidecar
    registers a new generation."""
    clock = HandClock()
    asys = FlakyManagedAS(await fake_server(), clock)
    side = await sidecar(config(asys.fake.url, backoff={"base": 1, "cap": 2}), clock=clock)
    await token(side, leak_guard)
    await clock.settled(1)
    asys.management = status
    await outlive_the_secret(asys, clock)

    clock.advance(3)
    await clock.settled(1)
    status_now, body, _ = await post_token(side)
    assert status_now == 200, body
    leak_guard.add_token_response(body)
    assert asys.registered == ["lapsed-1", "lapsed-2"]
    assert asys.calls.index("GET lapsed-1") < asys.calls.index("register", 1)
    creds = side.resolver.snapshot("acme").credentials
    assert creds is not None
    assert (creds.client_id, creds.generation) == ("lapsed-2", 2)


async def test_an_expired_client_without_management_is_replaced(
        fake_server: FakeFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """No registration access token: nothing to renew with, so a new generation."""
    clock = HandClock()
    asys = FlakyManagedAS(await fake_server(), clock, manageable=False)
    side = await sidecar(config(asys.fake.url, backoff={"base": 1, "cap": 2}), clock=clock)
    await token(side, leak_guard)
    await clock.settled(1)
    await outlive_the_secret(asys, clock)

    clock.advance(3)
    await clock.settled(1)
    status, body, _ = await post_token(side)
    assert status == 200, body
    leak_guard.add_token_response(body)
    assert asys.registered == ["lapsed-1", "lapsed-2"]
    assert asys.calls == ["register", "register"]
