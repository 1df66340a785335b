"""Redis Cluster (design.md §3.4): ``redis+cluster://`` URLs against a real three-master cluster
with a replica per master, created on loopback ports with ``redis-cli --cluster create``.

- One upstream's record, lease and revision share a hash tag, hence one slot (so one Lua script
  may touch them all): proven with CLUSTER KEYSLOT and by where the keys live.
- A slot migration and a master failover in the middle of lease-guarded writes lose nothing:
  every write the store called done is read back afterwards, in order; sidecars serving token
  traffic through both answer 200 and register once.

Timings are printed (pytest -s shows them) for the issue report.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dcr_sidecar.store.records import Record, RecordKey
from dcr_sidecar.store.redis import RedisStore, flow_cache
from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.support.redis_ha import ClusterGroup, StoreFactory, redis_stores
from tests.test_lifecycle import cc_token
from tests.test_store_records import record
from tests.test_store_redis import FLOW

KEY = RecordKey("https://as.example", "acme")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[ClusterGroup]:
    group = ClusterGroup(tmp_path)
    try:
        yield await group.start()
    finally:
        await group.stop()


@pytest.fixture
async def stores() -> AsyncIterator[StoreFactory]:
    async with redis_stores(lease_ttl=10, lease_wait=20) as make:
        yield make


def numbered(n: int) -> Record:
    return record(client_id=f"cid-{n}")


async def test_one_upstreams_keys_share_one_slot_and_live_on_its_master(
        cluster: ClusterGroup, stores: StoreFactory) -> None:
    store = stores(cluster.url())
    names = [store.record_key(KEY), store.lease_key(KEY), store.revision_key(KEY)]
    slots = {await cluster.keyslot(name) for name in names}
    assert len(slots) == 1
    async with store.lock(KEY):
        owner = await cluster.owner(await cluster.keyslot(names[0]))
        assert await cluster.query(owner, "EXISTS", names[1]) == 1
        await store.put(numbered(1))
    for name in (names[0], names[2]):
        assert await cluster.query(owner, "EXISTS", name) == 1
    got = await stores(cluster.url()).get(KEY)
    assert got is not None
    assert got.generations[0].client_id == "cid-1"


async def test_flow_records_on_a_cluster_spread_over_slots_and_are_taken_once(
        cluster: ClusterGroup, stores: StoreFactory) -> None:
    """The flow cache (aiocache's RedisCache) runs on the store's RedisCluster client: records
    put by one replica land on the masters that own their slots, and concurrent takes from
    two replicas give each record to exactly one of them. Each store is opened first, as
    `serve` does: redis-py's RedisCluster client can fail commands issued concurrently
    before its first one has mapped the cluster (seen with redis-py 8.1)."""
    replicas = [stores(cluster.url()), stores(cluster.url())]
    for store in replicas:
        await store.open()
    one, two = flow_cache(replicas[0]), flow_cache(replicas[1])
    flows = [replace(FLOW, app_state=f"s-{n}") for n in range(12)]
    for n, flow in enumerate(flows):
        await one.put(f"state:{n}", flow)
    owners = {(await cluster.owner(await cluster.keyslot(one.backend_key(f"state:{n}")))).port
              for n in range(12)}
    assert len(owners) > 1  # not all on one node: the client follows each key's slot
    got = await asyncio.gather(*(replica.take(f"state:{n}") for n in range(12)
                                 for replica in (one, two, one, two)))
    assert sorted((g for g in got if g is not None), key=lambda f: f.app_state or "") == sorted(
        flows, key=lambda f: f.app_state or "")


async def write_steadily(store: RedisStore, stop: asyncio.Event,
                         done: list[int]) -> None:
    """Lease-guarded writes of cid-1, cid-2, ... until `stop`; `done` gets each one the store
    called written. Bounded: at most 2,000 writes."""
    for n in range(1, 2001):
        if stop.is_set():
            return
        async with store.lock(KEY):
            await store.put(numbered(n))
        done.append(n)
        await asyncio.sleep(0.01)


async def until_written(done: list[int], count: int, writing: asyncio.Task[None],
                        deadline_s: float = 60.0) -> None:
    """Wait (bounded) until `count` writes are done; fail at once if the writer failed."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while len(done) < count:
        if writing.done():
            raise AssertionError(f"the writer stopped after {len(done)} writes") \
                from writing.exception()
        assert loop.time() - started < deadline_s, f"{count} writes within {deadline_s} s"
        await asyncio.sleep(0.02)


async def read_back(store: RedisStore) -> int:
    got = await store.get(KEY)
    assert got is not None
    return int(got.generations[0].client_id.removeprefix("cid-"))


async def test_slot_migration_during_writes_loses_nothing(
        cluster: ClusterGroup, stores: StoreFactory) -> None:
    """The upstream's slot is moved to another master (IMPORTING/MIGRATING, MIGRATE, SETSLOT
    NODE) while one store writes steadily and another reads: no write fails, the reader never
    sees a number go back, and the last write is what everyone reads after."""
    writer, reader = stores(cluster.url()), stores(cluster.url())
    slot = await cluster.keyslot(writer.record_key(KEY))
    source = await cluster.owner(slot)
    target = next(m for m in await cluster.masters_now() if m is not source)
    stop, done = asyncio.Event(), list[int]()
    writing = asyncio.create_task(write_steadily(writer, stop, done))
    seen: list[int] = []
    loop = asyncio.get_running_loop()
    await until_written(done, 20, writing)
    started = loop.time()
    migrating = asyncio.create_task(cluster.migrate(slot, target))
    while not migrating.done() or len(seen) < 20:
        seen.append(await read_back(reader))
        await asyncio.sleep(0.01)
    moved = await migrating
    took = loop.time() - started
    await until_written(done, len(done) + 20, writing)
    stop.set()
    await writing
    print(f"\ncluster: slot {slot} moved ({moved} keys) in {took:.2f} s during {len(done)} "
          f"writes; {len(seen)} reads, none went back")
    assert moved in (2, 3)  # record and revision; the lease too when held at that moment
    assert await cluster.owner(slot) is target
    assert seen == sorted(seen)
    assert done == list(range(1, len(done) + 1))
    assert await read_back(stores(cluster.url())) == done[-1]


async def test_master_failover_during_writes_loses_nothing(
        cluster: ClusterGroup, stores: StoreFactory) -> None:
    """The master serving the upstream's slot is SIGKILLed mid-writes; its replica is promoted
    and the killed node restarted (it rejoins as the new master's replica). Every write the
    store called done — each acknowledged by a replica — is still there: the last one is read
    back, and the writes go on."""
    writer, reader = stores(cluster.url()), stores(cluster.url())
    slot = await cluster.keyslot(writer.record_key(KEY))
    stop, done = asyncio.Event(), list[int]()
    writing = asyncio.create_task(write_steadily(writer, stop, done))
    loop = asyncio.get_running_loop()
    await until_written(done, 20, writing)
    victim = await cluster.owner(slot)
    await victim.kill()
    killed, at_kill = loop.time(), len(done)
    promoted = await cluster.wait_failover(slot, victim)
    await victim.start()  # back as a replica: the new master can be acknowledged again
    await until_written(done, at_kill + 20, writing)
    resumed = loop.time() - killed
    stop.set()
    await writing
    last = await read_back(reader)
    print(f"\ncluster: slot master killed; replica promoted {promoted:.2f} s later; writes "
          f"resumed within {resumed:.2f} s; {len(done)} writes, last read back {last}")
    assert last == done[-1]
    assert done == list(range(1, len(done) + 1))


async def test_sidecars_on_a_cluster_serve_through_a_slot_migration_and_a_master_kill(
        cluster: ClusterGroup, oidc: ProviderFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    """Three replicas on a redis+cluster:// URL register one client at the real oidc-provider;
    during token traffic (each replica re-reading the record every 0.5 s) the upstream's slot
    is migrated to another master, then the master now serving it is SIGKILLed: every request
    answers 200 and no second client is registered."""
    provider = await oidc()
    config: dict[str, Any] = {
        "store": {"backend": "redis", "url": cluster.url(), "lease": {"ttl": 10, "wait": 20}},
        "upstreams": [{"name": "acme", "issuer": provider.issuer,
                       "grant_types": ["client_credentials"]}]}
    replicas = [await sidecar(config, max_record_age=0.5) for _ in range(3)]
    statuses: list[int] = []

    async def traffic(session: aiohttp.ClientSession, until: asyncio.Task[Any]) -> None:
        """Token requests round-robin until `until` is done and 100 more were sent."""
        for n in range(400):  # bounded
            status, token = await cc_token(session, replicas[n % 3].listen.url)
            statuses.append(status)
            if status == 200:
                leak_guard.add_token_response(token)
            if until.done() and n > 100:
                return
            await asyncio.sleep(0.02)

    store = replicas[0].store
    assert isinstance(store, RedisStore)
    slot = await cluster.keyslot(store.record_key(RecordKey(provider.issuer, "acme")))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        answers = await asyncio.gather(*(cc_token(session, replicas[i % 3].listen.url)
                                         for i in range(15)))
        assert {status for status, _ in answers} == {200}
        source = await cluster.owner(slot)
        target = next(m for m in await cluster.masters_now() if m is not source)
        migration = asyncio.create_task(cluster.migrate(slot, target))
        await traffic(session, migration)
        moved = await migration
        assert await cluster.owner(slot) is target
        await target.kill()
        failover = asyncio.create_task(cluster.wait_failover(slot, target))
        await traffic(session, failover)
    print(f"\ncluster sidecars: {len(statuses)} token requests through a slot migration "
          f"({moved} keys) and a master kill (promoted after {await failover:.2f} s): "
          f"statuses {sorted(set(statuses))}")
    assert set(statuses) == {200}
    assert (await provider.stats())["registrations"] == 1
