"""The redis store against a real redis-server (design.md §3.4, §3.9): hash-tagged keys, the lease
(SET NX PX, extension while held, compare-and-delete release, waiters with a deadline),
compare-token-and-set writes, encryption with key check and rotation, Sentinel, outages, and
the one-time flow records for callback mediation."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dcr_sidecar.oauth.callback import FlowRecord
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.store.errors import (
    KeyMismatch,
    LeaseLost,
    LeaseTimeout,
    StoreCorrupt,
    StoreUnreachable,
)
from dcr_sidecar.store.records import Record, RecordKey, Sealer
from dcr_sidecar.store.redis import RedisStore, flow_cache
from dcr_sidecar.store.redis_url import parse_redis_url
from tests.conftest import LeakGuard, RedisFactory
from tests.support.redis_server import command
from tests.support.waiting import until
from tests.test_store_records import RAT, SECRET, record, secrets_of

KEY = RecordKey("https://as.example", "acme")
StoreFactory = Callable[..., RedisStore]


def fernet_key() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
async def stores() -> AsyncIterator[StoreFactory]:
    """RedisStore instances (each its own connection pool: a replica), closed at teardown."""
    made: list[RedisStore] = []

    def make(url: str, *keys: str, **kwargs: float | str) -> RedisStore:
        store = RedisStore(Secret(url), sealer=Sealer([Secret(k) for k in keys]),
                           **kwargs)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def put(store: RedisStore, rec: Record) -> None:
    async with store.lock(rec.key):
        await store.put(rec)


async def test_record_and_lease_share_a_hash_tag(redis_server: RedisFactory,
                                                 stores: StoreFactory) -> None:
    server = await redis_server()
    store = stores(server.url)
    record_key, lease_key = store.record_key(KEY), store.lease_key(KEY)
    tag = record_key[record_key.index("{"):record_key.index("}") + 1]
    assert record_key == f"dcr-sidecar:{tag}:record"
    assert lease_key == f"dcr-sidecar:{tag}:lease"
    assert tag.startswith("{acme:")
    await store.open()
    await put(store, record())
    got = await store.get(KEY)
    assert got is not None
    assert secrets_of(got) == (SECRET, RAT)
    assert await command(server.port, "EXISTS", lease_key) == ":0"  # released


async def test_put_without_the_lease_is_refused(redis_server: RedisFactory,
                                                stores: StoreFactory) -> None:
    server = await redis_server()
    store = stores(server.url)
    with pytest.raises(LeaseLost):
        await store.put(record())
    assert await store.get(KEY) is None


async def test_write_after_the_lease_was_taken_over_is_refused(
        redis_server: RedisFactory, stores: StoreFactory) -> None:
    """Compare-token-and-set: once another token holds the lease, nothing is written, and the
    old holder's release does not delete the new holder's lease."""
    server = await redis_server()
    store = stores(server.url, lease_ttl=5)
    async with store.lock(KEY):
        await command(server.port, "SET", store.lease_key(KEY), "someone-else", "PX", "5000")
        with pytest.raises(LeaseLost):
            await store.put(record())
    assert await store.get(KEY) is None
    assert await command(server.port, "GET", store.lease_key(KEY)) == "someone-else"


async def test_lease_is_extended_while_held(redis_server: RedisFactory,
                                            stores: StoreFactory) -> None:
    server = await redis_server()
    store = stores(server.url, lease_ttl=0.3)
    async with store.lock(KEY):
        token = await command(server.port, "GET", store.lease_key(KEY))
        await asyncio.sleep(1.0)  # more than three TTLs
        assert await command(server.port, "GET", store.lease_key(KEY)) == token
        await store.put(record())
    assert await store.get(KEY) is not None


async def test_waiter_gives_up_at_its_deadline_then_gets_the_lease_after_release(
        redis_server: RedisFactory, stores: StoreFactory) -> None:
    server = await redis_server()
    holder = stores(server.url, lease_ttl=5)
    waiter = stores(server.url, lease_ttl=5, lease_wait=0.4)
    loop = asyncio.get_running_loop()
    async with holder.lock(KEY):
        started = loop.time()
        with pytest.raises(LeaseTimeout) as caught:
            async with waiter.lock(KEY):
                pytest.fail("the lease was handed out twice")
        assert 0.4 <= loop.time() - started < 2.0
        assert caught.value.waited >= 0.4
        await holder.put(record("holder"))
    async with waiter.lock(KEY):
        got = await waiter.get(KEY)
        assert got is not None
        assert got.generations[0].client_id == "holder"


async def test_an_expired_lease_passes_to_the_next_replica(redis_server: RedisFactory,
                                                           stores: StoreFactory) -> None:
    """A holder that stops extending (a paused process) loses the lease after its TTL."""
    server = await redis_server()
    waiter = stores(server.url, lease_ttl=5, lease_wait=5)
    await command(server.port, "SET", waiter.lease_key(KEY), "paused-holder", "PX", "300")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with waiter.lock(KEY):
        assert 0.2 <= loop.time() - started < 2.0
        await waiter.put(record())


async def test_encrypted_records_key_check_and_rotation(redis_server: RedisFactory,
                                                        stores: StoreFactory) -> None:
    server = await redis_server()
    old, new = fernet_key(), fernet_key()
    first = stores(server.url, old)
    await first.open()
    assert (await command(server.port, "EXISTS", first.key_check_key)) == ":1"
    await put(first, record())
    raw = await command(server.port, "GET", first.record_key(KEY))
    assert "fernet" in raw
    assert SECRET not in raw
    assert RAT not in raw
    for wrong in ((fernet_key(),), ()):
        check_before = await command(server.port, "GET", first.key_check_key)
        with pytest.raises(KeyMismatch):
            await stores(server.url, *wrong).open()
        assert await command(server.port, "GET", first.key_check_key) == check_before
        assert await command(server.port, "GET", first.record_key(KEY)) == raw
    plain_reader = stores(server.url)
    with pytest.raises((StoreCorrupt, KeyMismatch)):
        await plain_reader.get(KEY)
    rotated = stores(server.url, new, old)
    await rotated.open()  # reseals under the newest key
    only_new = stores(server.url, new)
    await only_new.open()
    got = await only_new.get(KEY)
    assert got is not None
    assert secrets_of(got) == (SECRET, RAT)


async def test_record_that_will_not_decrypt_is_never_overwritten_at_open(
        redis_server: RedisFactory, stores: StoreFactory) -> None:
    server = await redis_server()
    key = fernet_key()
    store = stores(server.url, key)
    await store.open()
    alien = stores(server.url, fernet_key())
    alien.sealer = Sealer([Secret(fernet_key())])
    alien._prepared = True  # write past the key check, as a misconfigured replica would
    await put(alien, record("alien"))
    raw = await command(server.port, "GET", store.record_key(KEY))
    again = stores(server.url, key)
    await again.open()
    assert await command(server.port, "GET", store.record_key(KEY)) == raw
    with pytest.raises(StoreCorrupt):
        await again.get(KEY)


async def test_unreachable_redis_fails_fast_and_typed_without_the_password(
        redis_server: RedisFactory, stores: StoreFactory, leak_guard: LeakGuard) -> None:
    password = "redis-pass-0123456789"
    leak_guard.add(password)
    server = await redis_server(password=password)
    store = stores(server.url)
    await store.open()
    await put(store, record())
    assert await store.check() is None
    await server.stop()
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(StoreUnreachable) as caught:
        await store.get(KEY)
    assert loop.time() - started < 3
    assert password not in str(caught.value)
    trouble = await store.check()
    assert trouble is not None
    assert password not in trouble
    wrong = stores(server.url.replace(password, "wrong-password-123"))
    await server.start()
    with pytest.raises(StoreUnreachable) as caught:
        await wrong.get(KEY)
    assert "wrong-password-123" not in str(caught.value)
    assert await store.get(KEY) is None  # no persistence configured: back, empty


async def test_store_opened_while_redis_is_down_checks_keys_on_first_use(
        redis_server: RedisFactory, stores: StoreFactory) -> None:
    server = await redis_server()
    first = stores(server.url, fernet_key())
    await first.open()
    await server.shutdown(save=True)
    late = stores(server.url, fernet_key())
    await late.open()  # logged, not raised
    await server.start()
    with pytest.raises(KeyMismatch):
        await late.get(KEY)


async def test_sentinel_url_reaches_the_master(redis_server: RedisFactory,
                                              stores: StoreFactory,
                                              leak_guard: LeakGuard) -> None:
    """redis+sentinel://:password@host:port/service/db against a real redis-server --sentinel
    monitoring a password-protected master. The master has no replica here, so the URL turns
    the replica acknowledgement off (test_failover.py covers it)."""
    password = "sentinel-master-pass-0123"
    leak_guard.add(password)
    master = await redis_server(password=password)
    sentinel = await redis_server(sentinel_of=master, service="creds")
    url = f"redis+sentinel://:{password}@127.0.0.1:{sentinel.port}/creds/3?replica_acks=0"
    store = stores(url, fernet_key())
    assert store.target.describe() == f"redis+sentinel://127.0.0.1:{sentinel.port}/creds/3"
    await store.open()
    await put(store, record())
    got = await store.get(KEY)
    assert got is not None
    assert secrets_of(got) == (SECRET, RAT)
    assert await store.check() is None
    direct = stores(master.url.replace("/0", "/3"))
    assert await direct.client.exists(store.record_key(KEY)) == 1
    flows = flow_cache(store)  # aiocache on the store's Sentinel client: the master, db 3
    await flows.put("state:sentinel", FLOW)
    assert await direct.client.exists(flows.backend_key("state:sentinel")) == 1
    assert await flows.take("state:sentinel") == FLOW


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6390/2", {"db": 2, "tls": False, "sentinels": ()}),
    ("rediss://u:p%40ss@cache.internal:6380/0", {"tls": True, "password": "p@ss",
                                                  "username": "u"}),
    ("redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/1?sentinel_password=sp",
     {"sentinels": (("s1", 26379), ("s2", 26379), ("::1", 26380)), "service_name": "mymaster",
      "db": 1, "password": "pw", "sentinel_password": "sp"}),
    ("rediss+sentinel://s1/m", {"tls": True, "service_name": "m", "db": 0,
                                "replica_acks": 1, "fails_over": True}),
    ("redis+sentinel://s1/m?replica_acks=0", {"replica_acks": 0}),
    ("redis://127.0.0.1:6390/2", {"replica_acks": 0, "fails_over": False}),
    ("redis+cluster://:pw@127.0.0.1:7000,127.0.0.2,[::1]:7002",
     {"cluster_nodes": (("127.0.0.1", 7000), ("127.0.0.2", 6379), ("::1", 7002)),
      "password": "pw", "replica_acks": 1, "fails_over": True, "tls": False, "db": 0}),
    ("rediss+cluster://n1:7000/?replica_acks=2&ssl_ca_certs=/ca.pem",
     {"tls": True, "replica_acks": 2, "ssl_ca_certs": "/ca.pem"}),
])
def test_redis_url_forms(url: str, expected: dict[str, object]) -> None:
    target = parse_redis_url(url)
    for name, value in expected.items():
        assert getattr(target, name) == value
    assert "pw" not in target.describe()
    assert "p@ss" not in target.describe()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:6379", "redis://", "redis://h:99999/0", "redis://h/x",
    "redis+sentinel://s1:26379", "redis+sentinel://s1/m/x", "redis+sentinel:///m",
    "redis+sentinel://s1/m?nope=1", "redis+sentinel://s1:0/m",
    "redis+sentinel://s1/m?replica_acks=many", "redis+cluster://", "redis+cluster://s1/0",
    "redis+cluster://s1:7000?db=1", "redis+cluster://s1:x",
])
def test_redis_url_errors_never_repeat_the_url(url: str) -> None:
    with pytest.raises(ValueError, match=r"\w") as caught:
        parse_redis_url(url.replace("s1", "s1-secretish"))
    assert "secretish" not in str(caught.value)


# ---------------------------------------------------------------------------- flow records

FLOW = FlowRecord("https://app/cb", "app-state", "code-verifier-0123456789", 2,
                  upstream="acme", issuer="https://as.example", client="127.0.0.1")


async def test_flow_record_is_taken_once(redis_server: RedisFactory,
                                         stores: StoreFactory) -> None:
    flows = flow_cache(stores((await redis_server()).url))
    await flows.put("state:abc", FLOW)
    assert await flows.take("state:abc") == FLOW
    assert await flows.take("state:abc") is None
    assert await flows.take("state:never-set") is None


async def test_flow_record_expires_after_its_ttl(redis_server: RedisFactory,
                                                 stores: StoreFactory) -> None:
    store = stores((await redis_server()).url)
    flows = flow_cache(store, ttl=0.2)
    await flows.put("state:short", FLOW)
    key = flows.backend_key("state:short")
    assert 0 < await store.client.pttl(key) <= 200  # PX, set by aiocache's RedisCache

    async def gone() -> bool:
        return await store.client.exists(key) == 0

    await until(gone, "the flow record's PX ran out", deadline_s=5)
    assert await flows.take("state:short") is None


async def test_two_replicas_taking_one_record_at_once_yield_exactly_one_winner(
        redis_server: RedisFactory, stores: StoreFactory) -> None:
    """The take is one GETDEL through aiocache's raw command: of twelve concurrent takes from
    four replicas (each its own client and connections), exactly one gets each record."""
    server = await redis_server()
    replicas = [flow_cache(stores(server.url)) for _ in range(4)]
    for round_ in range(20):
        record_ = replace(FLOW, app_state=f"state-{round_}")
        await replicas[0].put(f"state:{round_}", record_)
        got = await asyncio.gather(*(r.take(f"state:{round_}") for r in replicas * 3))
        assert [g for g in got if g is not None] == [record_]


async def test_flow_records_are_sealed_and_keys_hashed(redis_server: RedisFactory,
                                                       stores: StoreFactory) -> None:
    store = stores((await redis_server()).url, fernet_key())
    flows = flow_cache(store)
    await flows.put("state:visible", FLOW)
    names = [n.decode() if isinstance(n, bytes) else n for n in await store.client.keys("*")]
    digest = hashlib.sha256(b"state:visible").hexdigest()
    assert names == [f"dcr-sidecar:flow:{digest}"]
    raw = await store.client.get(names[0])
    assert isinstance(raw, bytes)
    assert b"code-verifier-0123456789" not in raw
    assert b"app-state" not in raw
    assert await flows.take("state:visible") == FLOW


async def test_flow_records_use_the_stores_client_with_an_acl_user(
        redis_server: RedisFactory, stores: StoreFactory, leak_guard: LeakGuard) -> None:
    """aiocache 0.12's own RedisCache connects with a password only; the flow cache runs on the
    store's client, so an ACL user limited to the store's keys works, and another key
    pattern is refused (the commands really run as that user)."""
    password = "flows-user-pass-0123456789"
    leak_guard.add(password)
    server = await redis_server()
    assert await command(server.port, "ACL", "SETUSER", "sidecar", "on", f">{password}",
                         "~dcr-sidecar:*", "+@all") == "+OK"
    store = stores(f"redis://sidecar:{password}@127.0.0.1:{server.port}/0")
    flows = flow_cache(store)
    await flows.put("state:acl", FLOW)
    assert await flows.take("state:acl") == FLOW
    outside = flow_cache(stores(f"redis://sidecar:{password}@127.0.0.1:{server.port}/0",
                                key_prefix="elsewhere"))
    with pytest.raises(StoreUnreachable, match="NoPermission"):
        await outside.put("state:acl", FLOW)


def make_tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 (IP SAN), as PEM files."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
             signer: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    ca_cert = cert("test CA", ca_key, "test CA", ca_key, ca=True)
    server_cert = cert("127.0.0.1", server_key, "test CA", ca_key, ca=False)
    paths = directory / "server.pem", directory / "server.key", directory / "ca.pem"
    paths[0].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    paths[2].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return paths


async def test_rediss_url_speaks_tls_with_the_given_ca(
        redis_server: RedisFactory, stores: StoreFactory, tmp_path: Path) -> None:
    """rediss:// against a TLS-only redis-server; the CA comes from ?ssl_ca_certs=."""
    server = await redis_server(tls=make_tls(tmp_path))
    assert server.url.startswith("rediss://")
    store = stores(server.url, fernet_key())
    await store.open()
    await put(store, record())
    got = await store.get(KEY)
    assert got is not None
    assert secrets_of(got) == (SECRET, RAT)
    untrusted = stores(server.url.split("?")[0])  # the system CAs do not know this one
    with pytest.raises(StoreUnreachable):
        await untrusted.get(KEY)
    flows = flow_cache(store)  # aiocache on the store's TLS client, CA from the URL
    await flows.put("state:tls", FLOW)
    assert await flows.take("state:tls") == FLOW
    with pytest.raises(StoreUnreachable):
        await flow_cache(untrusted).put("state:tls", FLOW)
