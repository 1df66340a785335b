"""Redis Sentinel failover (design.md §3.4): a real master, replica and three sentinels on
loopback; the master SIGKILLed under the store and under sidecars.

- Lease and record writes wait for a replica acknowledgement (WAIT): what counted as written
  survives the promotion; a write no replica acknowledged fails and is undone.
- The store follows the new master without a restart, and a lease whose holder lost its master
  is released on the new one: the key is not stranded for a lease TTL.
- No going back: a replica promoted without the last write never makes a process serve the
  older record after the newer one.

Timings are printed (pytest -s shows them) for the issue report.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import unquote

import aiohttp
import pytest
from aiohttp import web

from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.store.errors import StoreUnreachable
from dcr_sidecar.store.records import Record, RecordKey
from dcr_sidecar.store.redis import RedisStore
from tests.conftest import FakeFactory, LeakGuard, ProviderFactory, SidecarFactory
from tests.support.fakes import FakeServer, as_metadata
from tests.support.redis_ha import SentinelGroup, StoreFactory, redis_stores
from tests.test_fleet import HoldingAS
from tests.test_lifecycle import cc_token
from tests.test_store_records import SECRET, record, secrets_of

KEY = RecordKey("https://as.example", "acme")
ROTATED = "rotated-secret-0123456789"
LEASE_TTL = 10.0


@pytest.fixture
async def stores() -> AsyncIterator[StoreFactory]:
    async with redis_stores(lease_ttl=LEASE_TTL, lease_wait=15.0) as make:
        yield make


def secret_of(rec: Record | None) -> str | None:
    assert rec is not None
    return secrets_of(rec)[0]


async def replica_has(group: SentinelGroup, key: str) -> bool:
    """On every replica."""
    counts = [await group.query(r, "EXISTS", key) for r in group.replicas]
    return all(counts)


async def test_record_write_is_on_the_replica_when_put_returns(
        sentinels: SentinelGroup, stores: StoreFactory) -> None:
    """WAIT on the writing connection: the lease and the record are on the replica the moment
    the store says they are written, with no waiting by the test."""
    store = stores(sentinels.url())
    async with store.lock(KEY):
        assert await replica_has(sentinels, store.lease_key(KEY))
        await store.put(record())
        assert await replica_has(sentinels, store.record_key(KEY))
        assert await replica_has(sentinels, store.revision_key(KEY))


async def test_write_no_replica_acknowledged_fails_and_is_undone(
        sentinels: SentinelGroup, stores: StoreFactory) -> None:
    """The replica is frozen (SIGSTOP): a lease take is given back, and a record write made
    under a lease is undone on the master, each failing typed after the ack timeout."""
    store = stores(sentinels.url(), lease_wait=2.0)
    frozen = [r.process.pid for r in sentinels.replicas if r.process is not None]
    async with store.lock(KEY):
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnreachable, match="acknowledged by 0 of 1"):
                await store.put(record())
            assert await store.get(KEY) is None  # undone on the master
            other = stores(sentinels.url(), lease_wait=2.0)
            with pytest.raises(StoreUnreachable, match="given back"):
                async with other.lock(RecordKey("https://as.example", "other")):
                    pass
            assert await sentinels.query(sentinels.master,  # type: ignore[arg-type]
                                         "EXISTS", other.lease_key(
                                             RecordKey("https://as.example", "other"))) == 0
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)


async def test_store_follows_the_promoted_replica_without_a_restart(
        sentinels: SentinelGroup, stores: StoreFactory) -> None:
    """SIGKILL the master: a read issued at once waits for the promotion and returns the
    record written before; writes go to the new master."""
    store = stores(sentinels.url())
    async with store.lock(KEY):
        await store.put(record())
    killed = await sentinels.kill_master()
    got = await store.get(KEY)
    loop = asyncio.get_running_loop()
    print(f"\nsentinel: a read issued at the kill answered after {loop.time() - killed:.2f} s")
    assert secret_of(got) == SECRET
    await sentinels.wait_promoted()
    newer = record(client_id="cid-after")
    async with store.lock(KEY):
        await store.put(newer)
    assert await replica_has(sentinels, store.record_key(KEY))
    fresh = stores(sentinels.url())
    again = await fresh.get(KEY)
    assert again is not None
    assert again.generations[0].client_id == "cid-after"


async def test_lease_of_a_holder_whose_master_died_is_released_on_the_new_master(
        sentinels: SentinelGroup, stores: StoreFactory) -> None:
    """A holds the lease (10 s TTL, replicated); the master is SIGKILLed; A's work ends and
    its release fails; A releases on the promoted replica in the background, so B gets the
    lease soon after the promotion instead of after the TTL."""
    a, b = stores(sentinels.url()), stores(sentinels.url())
    loop = asyncio.get_running_loop()
    async with a.lock(KEY):
        killed = await sentinels.kill_master()
    # A's release failed at once (no master): it keeps trying in the background.
    promoted = await sentinels.wait_promoted()
    async with b.lock(KEY):
        got_lease = loop.time() - killed
    print(f"\nsentinel: promoted {promoted:.2f} s after the kill; B took the lease "
          f"{got_lease:.2f} s after the kill (lease TTL {LEASE_TTL:g} s)")
    assert got_lease < promoted + 2.0
    assert got_lease < LEASE_TTL - 2.0


async def test_a_promoted_replica_without_the_last_write_is_not_served_again(
        sentinels: SentinelGroup, stores: StoreFactory) -> None:
    """Replication is cut (the replica frozen) and acknowledgements turned off: the rotated
    record reaches the master only. Once read, it is what this process serves even after the
    master dies and the replica (with the old record) is promoted; the next write under the
    lease puts it back."""
    writer = stores(sentinels.url(replica_acks="0"))
    reader = stores(sentinels.url(replica_acks="0"))
    old = record()
    rotated = Record(KEY, (replace(old.generations[0], client_secret=Secret(ROTATED)),))
    async with writer.lock(KEY):
        await writer.put(old)
    assert secret_of(await reader.get(KEY)) == SECRET
    frozen = [r.process.pid for r in sentinels.replicas if r.process is not None]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        assert sentinels.master is not None  # links cut while the replicas cannot reconnect
        await sentinels.query(sentinels.master, "CLIENT", "KILL", "TYPE", "replica")
        async with writer.lock(KEY):
            await writer.put(rotated)
        assert secret_of(await reader.get(KEY)) == ROTATED
        await sentinels.kill_master()  # the rotated record dies with it
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    await sentinels.wait_promoted()
    plain = stores(sentinels.url())
    assert secret_of(await plain.get(KEY)) == SECRET  # the promoted replica holds the old one
    assert secret_of(await reader.get(KEY)) == ROTATED
    assert secret_of(await writer.get(KEY)) == ROTATED
    async with writer.lock(KEY):
        current = await writer.get(KEY)
        assert isinstance(current, Record)
        await writer.put(current)  # the holder's next write restores it
    fresh = stores(sentinels.url())
    assert secret_of(await fresh.get(KEY)) == ROTATED


# ---------------------------------------------------------------------------- sidecars


def sentinel_config(group: SentinelGroup, issuer: str) -> dict[str, Any]:
    return {"store": {"backend": "redis", "url": group.url(),
                      "lease": {"ttl": LEASE_TTL, "wait": 15}},
            "timeouts": {"connect": 2, "read": 20, "total": 30},
            "upstreams": [{"name": "acme", "issuer": issuer,
                           "grant_types": ["client_credentials"]}]}


async def get_client(session: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, Any]]:
    async with session.get(f"{base}/acme/client") as resp:
        return resp.status, await resp.json()


async def test_master_killed_mid_registration_storm_keeps_one_registration_and_no_gap(
        sentinels: SentinelGroup, fake_server: FakeFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """Three replicas, 30 concurrent first contacts; the AS holds the first registration POST;
    the master is SIGKILLed while it is held (the lease already on both replicas), then the AS
    answers. The holder stores its client on the promoted replica (same lease token): every
    contact answers 200 with that one client, nothing is deleted, and a fourth replica's
    first contact after the kill waits only for the promotion, not for the lease TTL."""
    holding = HoldingAS(await fake_server(), leak_guard)
    config = sentinel_config(sentinels, holding.fake.url)
    replicas = [await sidecar(config) for _ in range(3)]
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        storm = [asyncio.create_task(get_client(session, replicas[i % 3].listen.url))
                 for i in range(30)]
        deadline = loop.time() + 20
        while holding.fake.count("POST", "/register") < 1:
            assert loop.time() < deadline, "no replica sent its registration"
            await asyncio.sleep(0.02)
        killed = await sentinels.kill_master()
        promotion = asyncio.create_task(sentinels.wait_promoted())
        holding.release.set()
        late = await sidecar(config)
        status, late_client = await get_client(session, late.listen.url)
        first_contact = loop.time() - killed
        answers = await asyncio.wait_for(asyncio.gather(*storm), 60)
        storm_done = loop.time() - killed
    promoted = await promotion
    print(f"\nfailover mid-registration: promoted {promoted:.2f} s after the kill; a new "
          f"replica's first contact answered {first_contact:.2f} s after the kill; the "
          f"30-contact storm finished {storm_done:.2f} s after it; "
          f"registrations {holding.issued}, deleted {holding.deleted} "
          f"(lease TTL {LEASE_TTL:g} s)")
    assert status == 200, late_client
    assert all(code == 200 for code, _ in answers), answers
    assert {body["client_id"] for _, body in answers} == {late_client["client_id"]}
    assert holding.issued == ["client-1"]
    assert holding.deleted == []
    assert first_contact < LEASE_TTL - 2.0
    record = await stored(sentinels, holding.fake.url)
    assert [g.client_id for g in record.generations] == ["client-1"]


async def stored(group: SentinelGroup, issuer: str) -> Record:
    store = RedisStore(Secret(group.url()))
    try:
        record = await store.get(RecordKey(issuer, "acme"))
    finally:
        await store.close()
    assert record is not None
    return record


async def test_steady_token_traffic_through_a_master_kill_gets_only_200(
        sentinels: SentinelGroup, oidc: ProviderFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """Three replicas serve client_credentials tokens from the real oidc-provider, re-reading
    the record every 0.5 s (the staleness bound, lowered); the master is SIGKILLed mid-traffic:
    every token request answers 200 and one client is registered in all."""
    provider = await oidc()
    replicas = [await sidecar(sentinel_config(sentinels, provider.issuer), max_record_age=0.5)
                for _ in range(3)]
    loop = asyncio.get_running_loop()
    statuses: list[int] = []
    slowest = 0.0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for replica in replicas:
            status, _ = await get_client(session, replica.listen.url)
            assert status == 200
        killed: float | None = None
        promotion: asyncio.Task[float] | None = None
        for n in range(2000):  # bounded: about 5 s of traffic after the promotion
            if n == 50:
                killed = await sentinels.kill_master()
                promotion = asyncio.create_task(sentinels.wait_promoted())
            sent = loop.time()
            status, token = await cc_token(session, replicas[n % 3].listen.url)
            slowest = max(slowest, loop.time() - sent)
            statuses.append(status)
            if status == 200:
                leak_guard.add_token_response(token)
            if promotion is not None and promotion.done() and killed is not None \
                    and loop.time() - killed > promotion.result() + 5:
                break
            await asyncio.sleep(0.01)
    assert killed is not None
    assert promotion is not None
    promoted = await promotion
    print(f"\nfailover under token traffic: {len(statuses)} requests, promoted {promoted:.2f} s "
          f"after the kill, slowest answer {slowest:.2f} s, statuses {sorted(set(statuses))}")
    assert set(statuses) == {200}
    assert (await provider.stats())["registrations"] == 1


class RotatingAS:
    """An RFC 7591/7592 AS whose secret lives 12 s; the first RFC 7592 GET is held until
    released, then rotates the secret and registration access token and extends the expiry
    by an hour. The token endpoint accepts every secret it issued and records which one each
    request used (the test sends one request at a time, so it knows the replica)."""

    ACCESS_TOKEN = "rotating-as-access-token-0123456789"

    def __init__(self, fake: FakeServer, leak_guard: LeakGuard) -> None:
        self.fake = fake
        self.release = asyncio.Event()
        self.secrets = ["rotating-secret-1-0123456789"]
        self.tokens = ["rotating-rat-1-0123456789"]
        self.used: list[str] = []
        leak_guard.add(*self.secrets, *self.tokens, self.ACCESS_TOKEN,
                       "rotating-secret-2-0123456789", "rotating-rat-2-0123456789")
        fake.json("GET", "/.well-known/oauth-authorization-server", as_metadata(fake.url))
        fake.route("POST", "/register", self.register)
        fake.route("GET", "/reg/client-1", self.read)
        fake.route("POST", "/token", self.token)

    def _document(self, expires_in: int) -> dict[str, Any]:
        return {"client_id": "client-1", "client_secret": self.secrets[-1],
                "client_secret_expires_at": int(time.time()) + expires_in,
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["client_credentials"],
                "registration_access_token": self.tokens[-1],
                "registration_client_uri": f"{self.fake.url}/reg/client-1"}

    async def register(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._document(12), status=201)

    async def read(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.tokens[-1]}":
            return web.json_response({"error": "invalid_token"}, status=401)
        await self.release.wait()
        if len(self.secrets) == 1:
            self.secrets.append("rotating-secret-2-0123456789")
            self.tokens.append("rotating-rat-2-0123456789")
        return web.json_response(self._document(3600))

    async def token(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        secret = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")[2]
        self.used.append(unquote(secret))
        if self.used[-1] not in self.secrets:
            return web.json_response({"error": "invalid_client"}, status=401)
        return web.json_response({"access_token": self.ACCESS_TOKEN, "token_type": "Bearer",
                                  "expires_in": 300})


async def test_master_killed_mid_renewal_stores_the_rotated_secret_and_never_serves_the_old(
        sentinels: SentinelGroup, fake_server: FakeFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """Three replicas hold secret 1 (12 s lifetime: renewal due at 6 s). The renewal's RFC 7592
    GET is held; the master is SIGKILLed; the AS then answers with secret 2 and a new
    registration access token. The renewing replica stores them on the promoted replica, every
    replica switches to secret 2 within the staleness bound (lowered to 0.5 s), and no replica
    sends secret 1 again once it has sent secret 2. The store holds secret 2 and token 2."""
    rotating = RotatingAS(await fake_server(), leak_guard)
    replicas = [await sidecar(sentinel_config(sentinels, rotating.fake.url), max_record_age=0.5)
                for _ in range(3)]
    loop = asyncio.get_running_loop()
    per_replica: list[list[str]] = [[], [], []]
    statuses: list[int] = []

    async def traffic(session: aiohttp.ClientSession, rounds: int) -> None:
        for n in range(rounds):
            status, _ = await cc_token(session, replicas[n % 3].listen.url)
            statuses.append(status)
            if status == 200:
                per_replica[n % 3].append(rotating.used[-1])
            await asyncio.sleep(0.02)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await traffic(session, 6)
        deadline = loop.time() + 20
        while rotating.fake.count("GET", "/reg/client-1") < 1:
            assert loop.time() < deadline, "no replica started the renewal"
            await traffic(session, 3)
        killed = await sentinels.kill_master()
        promotion = asyncio.create_task(sentinels.wait_promoted())
        rotating.release.set()
        deadline = loop.time() + 30
        while not all(seen and seen[-1] == rotating.secrets[-1] for seen in per_replica) \
                or len(rotating.secrets) < 2:
            assert loop.time() < deadline, f"not every replica switched: {per_replica}"
            await traffic(session, 3)
        switched = loop.time() - killed
        await traffic(session, 30)
    promoted = await promotion
    print(f"\nfailover mid-renewal: promoted {promoted:.2f} s after the kill; every replica "
          f"sent secret 2 {switched:.2f} s after the kill; statuses {sorted(set(statuses))}")
    assert set(statuses) == {200}
    old, new = rotating.secrets
    for seen in per_replica:
        assert old not in seen[seen.index(new):], seen  # never back after the new one
    record = await stored(sentinels, rotating.fake.url)
    secret, token = secrets_of(record)
    assert (secret, token) == (new, rotating.tokens[-1])


async def test_lease_lost_in_a_failover_is_detected_before_a_second_registration_is_kept(
        sentinels: SentinelGroup, fake_server: FakeFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """The weaker guarantee (`replica_acks=0`), at its worst: the replicas are cut off, so A's
    lease exists on the master only; A's registration is held at the AS; the master dies and a
    replica without the lease is promoted; B takes the lease there and registers. When A's
    answer arrives its write is refused (compare-token-and-set on the new master): A deletes
    its client (RFC 7592) and serves B's. One registration kept, no orphan."""
    holding = HoldingAS(await fake_server(), leak_guard)
    config = sentinel_config(sentinels, holding.fake.url)
    config["store"]["url"] = sentinels.url(replica_acks="0")
    a, b = await sidecar(config), await sidecar(config)
    frozen = [r.process.pid for r in sentinels.replicas if r.process is not None]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    loop = asyncio.get_running_loop()
    try:
        assert sentinels.master is not None
        await sentinels.query(sentinels.master, "CLIENT", "KILL", "TYPE", "replica")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            a_first = asyncio.create_task(get_client(session, a.listen.url))
            deadline = loop.time() + 20
            while holding.fake.count("POST", "/register") < 1:
                assert loop.time() < deadline, "A never sent its registration"
                await asyncio.sleep(0.02)
            await sentinels.kill_master()
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
            frozen = []
            await sentinels.wait_promoted()
            status, b_client = await get_client(session, b.listen.url)
            assert status == 200, b_client
            assert b_client["client_id"] == "client-2"
            holding.release.set()
            status, a_client = await asyncio.wait_for(a_first, 60)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert status == 200, a_client
    assert a_client["client_id"] == "client-2"
    assert holding.issued == ["client-1", "client-2"]
    assert holding.deleted == ["client-1"]
    record = await stored(sentinels, holding.fake.url)
    assert [g.client_id for g in record.generations] == ["client-2"]
