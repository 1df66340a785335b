"""Replicas on one Redis, in process (design.md §3.4, §2.3, §2.4): what one replica writes is
served by the others within the staleness bound; a Redis outage keeps resolved upstreams
working, answers 503 + Retry-After for new ones, and resolution resumes when Redis is back;
a registration whose write fails is deleted at the AS."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from dcr_sidecar.app import Sidecar
from dcr_sidecar.store.records import RecordKey
from dcr_sidecar.store.redis import RedisStore
from tests.conftest import (
    FakeFactory,
    LeakGuard,
    ProviderFactory,
    RedisFactory,
    SidecarFactory,
)
from tests.support.oidc import OidcProvider
from tests.support.redis_server import RedisServer, command
from tests.test_fleet import HoldingAS
from tests.test_lifecycle import IAT, audit_events, cc_token

BOUND = 1.0  # the staleness bound, lowered from 30 s


def redis_config(redis: RedisServer, *upstreams: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"store": {"backend": "redis", "url": redis.url, "lease": {"ttl": 5, "wait": 10}},
            "upstreams": list(upstreams), **extra}


def cc(issuer: str, name: str = "acme", **extra: Any) -> dict[str, Any]:
    return {"name": name, "issuer": issuer, "grant_types": ["client_credentials"], **extra}


async def client_of(side: Sidecar, name: str = "acme") -> tuple[int, dict[str, Any],
                                                                 dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/{name}/client") as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def until(condition: Any, deadline_s: float, what: str) -> float:
    """Poll an async condition every 50 ms; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await condition():
        assert loop.time() - started < deadline_s, f"{what} within {deadline_s} s"
        await asyncio.sleep(0.05)
    return loop.time() - started


async def new_generation_on_a_served_by_b(
        provider: OidcProvider, sidecar: SidecarFactory, config: dict[str, Any],
        leak_guard: LeakGuard, what: str) -> tuple[Sidecar, float]:
    """Sidecars A and B on one store (``config``, staleness bound BOUND) serve one client; the
    AS forgets every client; a token request on A answers 200 and A recovers a new generation.
    Returns B and the seconds until B served the new client_id (``what`` fails the wait after
    BOUND + 3 s)."""
    a, b = (await sidecar(config, max_record_age=BOUND),
            await sidecar(config, max_record_age=BOUND))
    _, first, _ = await client_of(a)
    _, same, _ = await client_of(b)
    assert same["client_id"] == first["client_id"]
    await provider.reset()
    async with aiohttp.ClientSession() as session:
        status, token = await cc_token(session, a.listen.url)
        assert status == 200, token
        leak_guard.add_token_response(token)
    _, recovered, _ = await client_of(a)
    assert recovered["client_id"] != first["client_id"]

    async def b_serves_it() -> bool:
        return bool((await client_of(b))[1]["client_id"] == recovered["client_id"])

    return b, await until(b_serves_it, BOUND + 3, what)


async def test_a_new_generation_on_one_replica_is_served_by_the_other_within_the_bound(
        oidc: ProviderFactory, redis_server: RedisFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """The AS forgets every client; replica A recovers (a new generation); replica B, which
    never saw an error, serves the new client_id within the bound and registers nothing."""
    provider = await oidc()
    redis = await redis_server()
    config = redis_config(redis, cc(provider.issuer))
    b, took = await new_generation_on_a_served_by_b(provider, sidecar, config, leak_guard,
                                                    "B serves the new generation")
    print(f"\nrotation on A served by B after {took:.2f} s (bound {BOUND} s)")
    assert took <= BOUND + 1.0
    async with aiohttp.ClientSession() as session:
        status, token = await cc_token(session, b.listen.url)
        assert status == 200, token
        leak_guard.add_token_response(token)
    assert (await provider.stats())["registrations"] == 1  # counted since the reset: A's
    assert b.resolver.snapshot("acme").stats["registrations"] == 0


async def test_a_renewal_on_one_replica_is_served_by_the_other_and_never_repeated(
        oidc: ProviderFactory, redis_server: RedisFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """Secrets expiring after 10 s, RFC 7592 PUT extends them and rotates the registration
    access token: exactly one replica renews, the other adopts the renewed record (with the
    new token) instead of renewing with a stale one — one registration, one renewal."""
    provider = await oidc(iat=IAT, secret_expires_in=10, put_extends_expiry=True)
    leak_guard.add(IAT)
    redis = await redis_server()
    config = redis_config(redis, cc(provider.issuer, initial_access_token=IAT))
    a, b = (await sidecar(config, max_record_age=BOUND),
            await sidecar(config, max_record_age=BOUND))
    _, first, _ = await client_of(a)
    _, on_b, _ = await client_of(b)
    expires = first["client_secret_expires_at"]
    assert on_b["client_secret_expires_at"] == expires

    async def both_renewed() -> bool:
        answers = [(await client_of(side))[1] for side in (a, b)]
        return all(x["client_secret_expires_at"] > expires for x in answers)

    took = await until(both_renewed, 15, "both replicas serve the renewed expiry")
    renewed = audit_events(leak_guard, "client_renewed")
    print(f"\nrenewal served by both replicas {took:.2f} s into the test window; "
          f"renewals: {len(renewed)}, registrations: "
          f"{(await provider.stats())['registrations']}")
    assert len(renewed) == 1
    assert (await provider.stats())["registrations"] == 1
    async with aiohttp.ClientSession() as session:
        while time.time() < expires + 1.5:  # across the old expiry, both still work
            for side in (a, b):
                status, token = await cc_token(session, side.listen.url)
                assert status == 200, token
                leak_guard.add_token_response(token)
            await asyncio.sleep(0.25)
    assert (await provider.stats())["registrations"] == 1


async def test_redis_outage_keeps_resolved_upstreams_and_resumes_without_restart(
        oidc: ProviderFactory, redis_server: RedisFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    provider = await oidc()
    redis = await redis_server()
    side = await sidecar(redis_config(
        redis, cc(provider.issuer, "one", required=True), cc(provider.issuer, "two"),
        backoff={"base": 0.2, "cap": 1}), max_record_age=0.5)
    _, one, _ = await client_of(side, "one")
    await redis.shutdown(save=True)
    outage_started = time.monotonic()

    async with aiohttp.ClientSession() as session:
        served = 0
        while time.monotonic() - outage_started < 2.5:  # several bounds long
            status, token = await cc_token(session, side.listen.url, "one")
            assert status == 200, token
            leak_guard.add_token_response(token)
            served += 1
            await asyncio.sleep(0.1)
        status, body, headers = await client_of(side, "two")
        assert status == 503, body
        assert body["error"] == "temporarily_unavailable"
        assert int(headers["Retry-After"]) >= 1
        async with session.get(f"{side.management.url}/readyz") as resp:
            ready = await resp.json()
            assert resp.status == 200, ready  # "one" (required) holds credentials
        assert ready["store"]["ok"] is False
        assert ready["store"]["error"]
        assert ready["upstreams"]["two"]["last_error_step"] in ("store_read", "lease")

        await redis.start()  # the same port and data

        async def two_resolves() -> bool:
            return (await client_of(side, "two"))[0] == 200

        took = await until(two_resolves, 15, "registration resumes after Redis is back")
        async with session.get(f"{side.management.url}/readyz") as resp:
            assert (await resp.json())["store"]["ok"] is True
    print(f"\noutage: {served} token requests served from held credentials; "
          f"resolution resumed {took:.2f} s after Redis came back")
    _, still, _ = await client_of(side, "one")
    assert still["client_id"] == one["client_id"]
    assert (await provider.stats())["registrations"] == 2


async def test_registration_whose_write_fails_is_deleted_at_the_as(
        fake_server: FakeFactory, redis_server: RedisFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """Redis goes away between the registration POST and the write: the caller gets 503 +
    Retry-After (store_write) and the client is deleted with RFC 7592, not orphaned."""
    holding = HoldingAS(await fake_server(), leak_guard)
    redis = await redis_server()
    side = await sidecar(redis_config(redis, cc(holding.fake.url)))
    request = asyncio.create_task(client_of(side))
    await until(lambda: _true_when(holding.fake.count("POST", "/register") >= 1), 10,
                "the registration POST arrives")
    await redis.shutdown(save=False)
    holding.release.set()
    status, body, headers = await asyncio.wait_for(request, 30)
    assert status == 503, body
    assert body["error"] == "temporarily_unavailable"
    assert "Retry-After" in headers
    assert holding.deleted == ["client-1"]
    orphans = audit_events(leak_guard, "orphan_deleted")
    assert [(e["client_id"], e["cause_step"]) for e in orphans] == [("client-1", "store_write")]
    assert side.resolver.snapshot("acme").credentials is None


async def _true_when(value: bool) -> bool:
    return value


async def test_memory_store_never_rereads_and_the_file_store_does(
        oidc: ProviderFactory, sidecar: SidecarFactory, tmp_path: Path) -> None:
    """The memory store is not `shared` (one process): no staleness re-reads, the record age
    stays 0. The file store may be shared by several processes, so it is re-read on the bound
    (issue 14: before, a second process on one file never saw the other's changes)."""
    provider = await oidc()
    memory = await sidecar({"store": {"backend": "memory"}, "upstreams": [cc(provider.issuer)]})
    await client_of(memory)
    assert not memory.store.shared
    assert memory.resolver.snapshot("acme").record_age == 0.0
    on_file = await sidecar({"upstreams": [cc(provider.issuer, "beta")]})
    await client_of(on_file, "beta")
    assert on_file.store.shared
    await asyncio.sleep(0.05)
    assert on_file.resolver.snapshot("beta").record_age > 0.0


async def test_lease_wait_timeout_is_503_with_retry_after_step_lease(
        oidc: ProviderFactory, redis_server: RedisFactory, sidecar: SidecarFactory) -> None:
    """Another replica holds the lease past store.lease.wait: the caller gets 503 +
    Retry-After, the error names the step `lease`, and nothing is registered."""
    provider = await oidc()
    redis = await redis_server()
    config = redis_config(redis, cc(provider.issuer))
    config["store"]["lease"] = {"ttl": 5, "wait": 0.5}
    side = await sidecar(config)
    store = side.store
    assert isinstance(store, RedisStore)
    lease = store.lease_key(RecordKey(provider.issuer, "acme"))
    await command(redis.port, "SET", lease, "another-replica", "PX", "20000")
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body, headers = await client_of(side)
    assert status == 503, body
    assert 0.5 <= loop.time() - started < 3
    assert body["error"] == "temporarily_unavailable"
    assert int(headers["Retry-After"]) >= 1
    assert side.resolver.snapshot("acme").last_error_step == "lease"
    assert (await provider.stats())["registrations"] == 0


async def test_file_store_shared_by_two_sidecars_serves_a_new_generation_within_the_bound(
        oidc: ProviderFactory, sidecar: SidecarFactory, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """Two sidecars on one credentials file (each its own FileStore and file descriptors, as two
    processes have): A recovers a new generation after the AS forgot its client; B, which saw no
    error, re-reads the file on the staleness bound and serves it, registering nothing."""
    provider = await oidc()
    config = {"store": {"backend": "file", "path": str(tmp_path / "shared.json")},
              "upstreams": [cc(provider.issuer)]}
    b, took = await new_generation_on_a_served_by_b(
        provider, sidecar, config, leak_guard, "B serves the new generation from the file")
    print(f"\nfile store: a new generation on A served by B after {took:.2f} s "
          f"(bound {BOUND} s)")
    assert took <= BOUND + 1.0
    assert b.resolver.snapshot("acme").stats["registrations"] == 0
    leak_guard.add_store(tmp_path / "shared.json")
