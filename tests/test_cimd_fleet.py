"""CIMD across a fleet (design.md §3.11): three replicas on one real redis-server serve
byte-identical documents and JWKS from one key set made once under the lease, and a key
rotation while clients keep asking for tokens loses no request. Against the real
oidc-provider with `features.clientIdMetadataDocument`; figures printed for the report.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dcr_sidecar.app import Sidecar
from dcr_sidecar.cimd import keys_record_key
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.store.redis import RedisStore
from tests.conftest import LeakGuard, ProviderFactory, RedisFactory, SidecarFactory
from tests.flows import REDIRECT_URI
from tests.support.redis_server import RedisServer, free_port
from tests.support.tls_ca import LocalCa
from tests.test_cimd_as import authlib_login, cimd_provider

REPLICAS = 3
OVERLAP = 2.0  # cimd.key_overlap: small so a whole rotation fits the bounded loop
RECORD_AGE = 0.5  # replicas re-read the key set at least this often (below the overlap)
LOOP_LIMIT_S = 20.0
LOOP_LIMIT_REQUESTS = 2000


@pytest.fixture
def local_ca(tmp_path: Path) -> LocalCa:
    return LocalCa(tmp_path)


def replica_config(ca: LocalCa, redis: RedisServer, issuer: str, public_port: int,
                   front_port: int) -> dict[str, Any]:
    return {
        "front": ca.front(front_port),
        "public_base_url": f"https://127.0.0.1:{public_port}",
        "store": {"backend": "redis", "url": redis.url},
        "admin": {"token": "admin-token-for-the-fleet-test"},
        "upstreams": [{
            "name": "acme", "issuer": issuer, "registration": "cimd",
            "redirect_uris": [REDIRECT_URI], "scopes": ["openid", "profile", "api:read"],
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "cimd": {"max_age": 1, "key_overlap": OVERLAP}}]}


async def fleet(sidecar: SidecarFactory, ca: LocalCa, redis: RedisServer,
                issuer: str) -> list[Sidecar]:
    """Three replicas started at once (their start-up key making races on the lease); the
    AS reaches them through the first one's front port (public_base_url)."""
    public = free_port()
    ports = [public] + [0] * (REPLICAS - 1)
    replicas = await asyncio.gather(*(
        sidecar(replica_config(ca, redis, issuer, public, port), max_record_age=RECORD_AGE)
        for port in ports))
    return list(replicas)


async def fetch(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as resp:
        assert resp.status == 200, url
        return await resp.read()


async def public_answers(ca: LocalCa, replicas: list[Sidecar], path: str) -> list[bytes]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=ca.client_context())) as session:
        return [await fetch(session, f"https://127.0.0.1:{r.front.port}/acme/{path}")
                for r in replicas if r.front is not None]


async def wait_keys(replicas: list[Sidecar]) -> None:
    deadline = time.monotonic() + 10
    while any(r.resolver.cimd_keys("acme") is None for r in replicas):
        assert time.monotonic() < deadline, "start-up key sets not made"
        await asyncio.sleep(0.05)


async def test_three_replicas_serve_byte_identical_documents_and_jwks(
        oidc: ProviderFactory, redis_server: RedisFactory, sidecar: SidecarFactory,
        local_ca: LocalCa, leak_guard: LeakGuard) -> None:
    """One key set for the fleet (made once, under the lease, sealed in Redis like any
    secret); every replica answers with the same bytes and ETag; a login through one replica
    and token calls through the others all authenticate as the one URL client."""
    provider = await cimd_provider(oidc, local_ca)
    redis = await redis_server()
    replicas = await fleet(sidecar, local_ca, redis, provider.issuer)
    await wait_keys(replicas)
    documents = await public_answers(local_ca, replicas, "client-metadata.json")
    jwks = await public_answers(local_ca, replicas, "jwks.json")
    assert len(set(documents)) == 1
    assert len(set(jwks)) == 1
    assert len(json.loads(jwks[0])["keys"]) == 1
    store = RedisStore(Secret(redis.url))
    try:
        record = await store.get(keys_record_key("acme"))
    finally:
        await store.close()
    assert record is not None
    assert len(record.generations) == 1  # made once although three replicas raced

    url = replicas[0].settings.cimd_document_url(replicas[0].settings.upstreams[0])
    _, token = await authlib_login(
        local_ca, f"{replicas[1].listen.url}/acme/.well-known/openid-configuration", url,
        "openid profile")
    leak_guard.add_token_response(token)
    for replica in replicas:
        status, issued = await cc_token(replica)
        leak_guard.add_token_response(issued)
        assert status == 200, issued
    stats = await provider.stats()
    print(f"\nfleet: {REPLICAS} replicas, identical documents {len(set(documents)) == 1}, "
          f"identical JWKS {len(set(jwks)) == 1}, registrations at the AS "
          f"{stats['registrations']}")
    assert stats["registrations"] == 0


async def cc_token(replica: Sidecar, session: aiohttp.ClientSession | None = None,
                   ) -> tuple[int, dict[str, Any]]:
    form = {"grant_type": "client_credentials", "scope": "api:read"}
    if session is None:
        async with aiohttp.ClientSession() as own, own.post(
                f"{replica.listen.url}/acme/token", data=form) as resp:
            return resp.status, await resp.json()
    async with session.post(f"{replica.listen.url}/acme/token", data=form) as resp:
        return resp.status, await resp.json()


async def test_key_rotation_under_load_loses_no_request(
        oidc: ProviderFactory, redis_server: RedisFactory, sidecar: SidecarFactory,
        local_ca: LocalCa, leak_guard: LeakGuard) -> None:
    """Admin `rotate` on one replica while every replica keeps serving client_credentials and
    refresh grants (bounded: 20 s, 2,000 requests): the new key is published beside the old,
    signs after the overlap on every replica, the old one is dropped after another overlap —
    and not one token request fails."""
    provider = await cimd_provider(oidc, local_ca)
    redis = await redis_server()
    replicas = await fleet(sidecar, local_ca, redis, provider.issuer)
    await wait_keys(replicas)
    url = replicas[0].settings.cimd_document_url(replicas[0].settings.upstreams[0])
    _, login = await authlib_login(
        local_ca, f"{replicas[0].listen.url}/acme/.well-known/openid-configuration", url,
        "openid profile")
    leak_guard.add_token_response(login)
    old_kid = json.loads((await public_answers(local_ca, replicas[:1], "jwks.json"))[0])[
        "keys"][0]["kid"]

    outcomes: list[tuple[float, int, str]] = []
    refresh = {"token": login["refresh_token"]}
    stop = asyncio.Event()

    async def client(index: int) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set() and len(outcomes) < LOOP_LIMIT_REQUESTS:
                replica = replicas[len(outcomes) % REPLICAS]
                if index == 0:
                    form = {"grant_type": "refresh_token", "refresh_token": refresh["token"]}
                    async with session.post(f"{replica.listen.url}/acme/token",
                                            data=form) as resp:
                        status, body = resp.status, await resp.json()
                    if status == 200:
                        refresh["token"] = body.get("refresh_token", refresh["token"])
                else:
                    status, body = await cc_token(replica, session)
                if status == 200:
                    leak_guard.add_token_response(body)
                outcomes.append((time.monotonic(), status, str(body.get("error", ""))))
                await asyncio.sleep(0.01)

    started = time.monotonic()
    clients = [asyncio.create_task(client(i)) for i in range(3)]
    try:
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession() as session, session.post(
                f"{replicas[0].management.url}/admin/upstreams/acme/rotate",
                headers={"Authorization": "Bearer admin-token-for-the-fleet-test"}) as resp:
            assert resp.status == 200, await resp.text()
            rotated_at = time.monotonic()
            described = await resp.json()
        keys = described["cimd"]["keys"]
        assert len(keys) == 2
        new_kid = next(k["kid"] for k in keys if k["kid"] != old_kid)
        # Mid-rotation every replica publishes both keys, byte-identically.
        await asyncio.sleep(RECORD_AGE + 0.5)
        both = await public_answers(local_ca, replicas, "jwks.json")
        assert len(set(both)) == 1
        assert [k["kid"] for k in json.loads(both[0])["keys"]] == [old_kid, new_kid]
        # Run past the switch (overlap) and the drop (two overlaps), within the bound.
        remaining = rotated_at + 2 * OVERLAP + 2.0 - time.monotonic()
        await asyncio.sleep(max(0.0, min(remaining, LOOP_LIMIT_S - (time.monotonic() - started))))
    finally:
        stop.set()
        await asyncio.gather(*clients)
    after = await public_answers(local_ca, replicas, "jwks.json")
    assert len(set(after)) == 1
    assert [k["kid"] for k in json.loads(after[0])["keys"]] == [new_kid]
    failed = [o for o in outcomes if o[1] != 200]
    after_switch = [o for o in outcomes if o[0] >= rotated_at + OVERLAP + 1.0]
    duration = time.monotonic() - started
    print(f"\nrotation under load: {len(outcomes)} token requests in {duration:.1f} s across "
          f"{REPLICAS} replicas, {len(after_switch)} after the switch, failed {len(failed)}")
    assert not failed, failed[:5]
    assert after_switch  # requests were signed with the new key only, and succeeded
    assert (await provider.stats())["registrations"] == 0
