"""Redis store: credentials shared by a fleet of replicas, a lease per key (design.md §3.4), and
short-lived one-time records for callback mediation (§3.6).

Keys — one upstream's record and lease share a hash tag, so they sit in one cluster slot and
one Lua script may touch both::

    {prefix}:{<upstream>:<sha256(issuer)[:16]>}:record   JSON made by records.record_to_json
    {prefix}:{<upstream>:<sha256(issuer)[:16]>}:lease    a random token, PX store.lease.ttl
    {prefix}:{<upstream>:<sha256(issuer)[:16]>}:revision counts the record's writes
    {prefix}:key-check                                    the encryption key check (JSON)
    {prefix}:flow:<sha256(key)>                           one-time records, PX their TTL
                                                          (aiocache: flow_cache below)

Invariants:
- ``lock(key)`` takes the lease: SET NX PX with a fresh random token. Waiters poll (jittered,
  at most 250 ms apart) until ``store.lease.wait``, then :class:`LeaseTimeout`. While held, a
  background task extends it every ttl/3 with compare-and-pexpire; release is compare-and-
  delete. Within one process an asyncio lock per key queues holders first.
- ``put(record)`` is compare-token-and-set in one Lua script: the record is written only while
  the lease still holds this holder's token, else :class:`LeaseLost` and nothing is written —
  a holder paused past its lease never overwrites the replica that took over.
- ``open()`` checks the encryption keys against the key check (wrong keys: KeyMismatch, nothing
  written), writes it on first start, and reseals records not stored under the newest key with
  compare-and-swap on their exact bytes (safe beside a concurrent lease holder's write). When
  Redis is unreachable at start, this runs on first use instead.
- Every redis-py failure becomes :class:`StoreUnreachable`; no message holds the URL's password.
- The lease, the compare-and-set writes and the key check stay on redis-py (Lua scripts,
  WAIT): aiocache has no such primitive. The flow records go through aiocache's RedisCache on
  this store's client (:func:`flow_cache`).

Failover (sentinel and cluster targets; design.md §3.4):
- Lease takes and record writes wait for ``replica_acks`` replicas (``WAIT`` on the connection
  that wrote, at most ``ACK_TIMEOUT``). A lease no replica acknowledged is given back and the
  take fails; a record write no replica acknowledged is undone (compare-and-set back, under
  the lease) and is retried like a missing master, then fails: so a write that counted as
  done survives the promotion of a replica.
- A command that finds no master (the old one killed, the new one not yet promoted, a
  read-only former master, a moved slot) is retried for up to ``failover_wait`` (store.lease.
  wait) before :class:`StoreUnreachable`: the store follows the new master without a restart.
- A lease whose release failed is released in the background once a master answers again
  (until it would have expired anyway), so a failover never strands the key for a lease TTL.
- Revisions never go back in one process: each write bumps the key's revision (in the same
  script); a read that finds an older revision than this process has already seen (a replica
  promoted without the last write) is answered with the newer record it saw, and the next
  write under the lease puts it back. A rotated-away secret is never served again after its
  successor. (A single Redis found empty — restarted without persistence, flushed — was
  emptied on purpose: that is read as empty.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from aiocache.serializers import BaseSerializer
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dcr_sidecar.oauth.callback import FlowRecord
from dcr_sidecar.oauth.secret import MASK, Secret
from dcr_sidecar.observability import scrub_patterns
from dcr_sidecar.store.aiocache_redis import ClientRedisCache
from dcr_sidecar.store.errors import (
    KeyMismatch,
    LeaseLost,
    LeaseTimeout,
    StoreCorrupt,
    StoreError,
    StoreUnreachable,
)
from dcr_sidecar.store.flows import FLOW_TTL, FlowCache, hashed_key
from dcr_sidecar.store.records import (
    PLAIN,
    Record,
    RecordKey,
    Sealer,
    record_from_json,
    record_to_json,
    resealed,
)
from dcr_sidecar.store.redis_url import RedisTarget, parse_redis_url

log = structlog.get_logger(__name__)
T = TypeVar("T")
Client = Redis | RedisCluster

CONNECT_TIMEOUT = 2.0  # seconds; an outage must turn into a quick 503, not a hung request
COMMAND_TIMEOUT = 5.0
CHECK_TIMEOUT = 1.0  # /readyz
_POLL_MAX = 0.25
_SCAN_LIMIT = 100_000  # records resealed at start; far beyond any real fleet's upstreams
ACK_TIMEOUT = 1.0  # seconds a lease or record write waits for its replica acknowledgements


class _Unacknowledged(RedisError):
    """Fewer replicas than ``replica_acks`` acknowledged a write (it was given back or undone)."""


# No master for now: a failover under way (sentinel promotion, cluster election, a moved slot),
# or no replica caught up yet (the remaining replicas are being pointed at the new master).
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, ClusterDownError,
              TryAgainError, MovedError, AskError, _Unacknowledged)

# KEYS[1] lease; ARGV[1] token, ARGV[2] ttl (ms)
_RENEW = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
          "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0")
# KEYS[1] lease; ARGV[1] token
_RELEASE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "return redis.call('DEL', KEYS[1]) end return 0")
# KEYS[1] lease, KEYS[2] record, KEYS[3] revision; ARGV[1] token, ARGV[2] the record's JSON,
# ARGV[3] the newest revision the writer has seen. Returns {0} (refused) or {revision, the
# record it replaced or ''}; the revision never goes below what the writer saw.
_WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local old = redis.call('GET', KEYS[2]) or ''
local rev = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), tonumber(ARGV[3])) + 1
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], rev)
return {rev, old}
"""
# Undo an unacknowledged write: same keys; ARGV[1] token, ARGV[2] the JSON written, ARGV[3]
# what it replaced ('' = nothing). The revision still counts up, so no reader goes back.
_UNDO = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] or redis.call('GET', KEYS[2]) ~= ARGV[2] then
  return 0 end
if ARGV[3] == '' then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[3]) end
return redis.call('INCR', KEYS[3])
"""
# KEYS[1] any key; ARGV[1] the exact bytes expected, ARGV[2] the new value
_SWAP = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
         "redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0")


def connect(url: Secret) -> tuple[Client, RedisTarget, list[Redis]]:
    """A client for `url` (not yet connected: redis-py connects on first command), the parsed
    target, and any sentinel clients to close with it."""
    target = parse_redis_url(url.reveal())
    common: dict[str, Any] = {
        "socket_timeout": COMMAND_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
        # One quick retry: a pooled connection may be dead after Redis restarted.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    }
    tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": target.ssl_ca_certs} if target.tls \
        else {}
    if target.cluster:
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.cluster_nodes],
            username=target.username, password=target.password, **common, **tls)
        return cluster, target, []
    if not target.sentinel:
        return Redis.from_url(target.url, **common), target, []
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs={**common, **tls, "password": target.sentinel_password},
        **common, **tls, db=target.db, username=target.username, password=target.password)
    assert target.service_name is not None
    return sentinel.master_for(target.service_name), target, list(sentinel.sentinels)


@dataclass
class _Lease:
    key: str
    token: str
    until: float  # monotonic: when it expires unless extended again
    lost: bool = False


class RedisStore:
    name = "redis"
    shared = True

    def __init__(self, url: Secret, *, key_prefix: str = "dcr-sidecar", sealer: Sealer = PLAIN,
                 lease_ttl: float = 30.0, lease_wait: float = 10.0) -> None:
        self.client, self.target, self._sentinels = connect(url)
        self.prefix = key_prefix
        self.sealer = sealer
        self.lease_ttl = lease_ttl
        self.lease_wait = lease_wait
        self.replica_acks = self.target.replica_acks
        self.failover_wait = lease_wait if self.target.fails_over else 0.0
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._swap = self.client.register_script(_SWAP)
        self._local: dict[RecordKey, asyncio.Lock] = {}
        self._held: dict[RecordKey, _Lease] = {}
        self._newest: dict[RecordKey, tuple[int, Record | None]] = {}
        self._releasing: set[asyncio.Task[None]] = set()
        self._prepared = False
        self._preparing = asyncio.Lock()

    # -- keys

    def _tag(self, key: RecordKey) -> str:
        digest = hashlib.sha256(key.issuer.encode()).hexdigest()[:16]
        return f"{self.prefix}:{{{key.upstream}:{digest}}}"

    def record_key(self, key: RecordKey) -> str:
        return f"{self._tag(key)}:record"

    def lease_key(self, key: RecordKey) -> str:
        return f"{self._tag(key)}:lease"

    def revision_key(self, key: RecordKey) -> str:
        return f"{self._tag(key)}:revision"

    @property
    def key_check_key(self) -> str:
        return f"{self.prefix}:key-check"

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except RedisError as exc:
            raise StoreUnreachable(
                f"redis {self.target.describe()} failed ({doing}): {type(exc).__name__}: "
                f"{self._scrub(str(exc))[:200]}") from exc

    def _scrub(self, text: str) -> str:
        """A Redis error's text without credentials, whatever it says. (The process's
        redactor also knows the passwords, from the configured store.url.)"""
        for secret in (self.target.password, self.target.sentinel_password):
            if secret and len(secret) >= 6:  # the redactor's rule: shorter masks words
                text = text.replace(secret, MASK)
        return scrub_patterns(text)

    async def _run(self, doing: str, op: Callable[[], Awaitable[T]],
                   wait: float | None = None) -> T:
        """One store operation. On a target that fails over, a transient failure (no master
        yet) is retried for up to `wait` (default ``failover_wait``) seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.failover_wait if wait is None else wait)
        pause = 0.05
        while True:
            try:
                with self._errors(doing):
                    return await op()
            except StoreUnreachable as exc:
                if not isinstance(exc.__cause__, _TRANSIENT) or loop.time() + pause > deadline:
                    raise
                log.info("store_failover_wait", store=self.target.describe(), doing=doing,
                         error=type(exc.__cause__).__name__)
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

    async def _acked(self, key: str, *command: Any) -> tuple[Any, int]:
        """Run `command` (on `key`'s node) and WAIT for ``replica_acks`` on that connection:
        its reply and how many replicas acknowledged (``replica_acks`` when none are asked)."""
        if not self.replica_acks:
            return await self.client.execute_command(*command), 0
        wait = ("WAIT", self.replica_acks, int(ACK_TIMEOUT * 1000))
        if isinstance(self.client, RedisCluster):
            return await self._acked_on_node(key, command, wait)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.execute_command(*command)
            pipe.execute_command(*wait)
            reply, acks = await pipe.execute()
        return reply, int(acks)

    async def _acked_on_node(self, key: str, command: tuple[Any, ...],
                             wait: tuple[Any, ...]) -> tuple[Any, int]:
        assert isinstance(self.client, RedisCluster)
        cluster = self.client
        node = cluster.get_node_from_key(key)
        assert node is not None
        calls = [PipelineCommand(0, *command), PipelineCommand(1, *wait)]
        try:
            await node.execute_pipeline(calls)
        except _TRANSIENT:
            await self._refresh_slots()
            raise
        for call in calls:
            if isinstance(call.result, Exception):
                if isinstance(call.result, _TRANSIENT):
                    await self._refresh_slots()
                raise call.result
        acks = calls[1].result
        assert isinstance(acks, int)
        return calls[0].result, acks

    async def _refresh_slots(self) -> None:
        """The slot moved or its master died: ask the cluster for its slots again."""
        assert isinstance(self.client, RedisCluster)
        with contextlib.suppress(RedisError, OSError):
            await self.client.nodes_manager.initialize()

    # -- start: the key check and resealing

    async def open(self) -> None:
        try:
            await self._prepare()
        except StoreUnreachable as exc:
            log.warning("store_unreachable_at_start", store=self.target.describe(),
                        detail=str(exc), then="the key check runs on first use")

    async def _ready(self) -> None:
        if not self._prepared:
            await self._run("preparing the store", self._prepare)

    async def _prepare(self) -> None:
        async with self._preparing:
            if self._prepared:
                return
            await self._check_keys()
            await self._reseal_all()
            self._prepared = True

    async def _check_keys(self) -> None:
        for _ in range(3):  # replicas starting together race to write the first key check
            with self._errors("reading the key check"):
                raw = await self.client.get(self.key_check_key)
            try:
                stored = json.loads(raw) if raw is not None else None
            except ValueError:
                raise KeyMismatch("the store's key check is not valid JSON") from None
            state = self.sealer.check_keys(stored)  # KeyMismatch before anything is written
            if not self.sealer.enabled or state == "current":
                return
            value = json.dumps(self.sealer.key_check())
            with self._errors("writing the key check"):
                if raw is None:
                    done = await self.client.set(self.key_check_key, value, nx=True)
                else:
                    done = await self._swap(keys=[self.key_check_key], args=[raw, value])
            if done:
                log.info("store_key_check_written", store=self.target.describe(),
                         reason="first start" if raw is None else "newest key changed")
                return
        raise StoreUnreachable("the key check kept changing under this replica; retry")

    async def _reseal_all(self) -> None:
        pattern = f"{self.prefix}:{{*}}:record"
        seen = 0
        with self._errors("resealing records"):
            async for name in self.client.scan_iter(match=pattern, count=100):
                seen += 1
                if seen > _SCAN_LIMIT:
                    break
                raw = await self.client.get(name)
                if raw is None:
                    continue
                try:
                    again = resealed(_loads(raw), self.sealer)
                except StoreCorrupt as exc:
                    log.warning("stored_record_unreadable", key=_text(name), detail=str(exc))
                    continue
                if again is not None:
                    await self._swap(keys=[name], args=[raw, _dumps(again)])

    # -- records

    async def get(self, key: RecordKey) -> Record | None:
        await self._ready()
        names = [self.record_key(key), self.revision_key(key)]
        raw, revision = await self._run("reading a record", lambda: self.client.mget(names))
        record = None if raw is None else record_from_json(_loads(raw), self.sealer)
        return self._no_going_back(key, int(revision or 0), record)

    def _no_going_back(self, key: RecordKey, revision: int, record: Record | None) -> \
            Record | None:
        seen = self._newest.get(key)
        emptied = revision == 0 and record is None and not self.target.fails_over
        if seen is not None and revision < seen[0] and not emptied:
            log.warning("store_went_back", key=str(key), stored_revision=revision,
                        seen_revision=seen[0], then="serving the newer record; the next write "
                                                    "under the lease restores it")
            return seen[1]
        self._newest[key] = (revision, record)
        return record

    async def put(self, record: Record) -> None:
        await self._ready()
        lease = self._held.get(record.key)
        if lease is None:
            raise LeaseLost(f"no lease is held on {record.key}; the write was refused")
        value = _dumps(record_to_json(record, self.sealer))
        keys = [lease.key, self.record_key(record.key), self.revision_key(record.key)]
        seen = self._newest.get(record.key, (0, None))[0]
        reply = await self._run("writing a record", lambda: self._write_acked(
            keys, lease.token, value, seen))
        if not reply[0]:
            lease.lost = True
            raise LeaseLost(f"the lease on {record.key} expired or was taken over by another "
                            "replica; the write was refused")
        self._newest[record.key] = (int(reply[0]), record)

    async def _write_acked(self, keys: list[str], token: str, value: str,
                           seen: int) -> list[Any]:
        reply, acks = await self._acked(keys[1], "EVAL", _WRITE, 3, *keys, token, value, seen)
        if reply[0] and acks < self.replica_acks:
            await self._undo(keys, token, value, _text(reply[1]))
            raise _Unacknowledged(f"the record write was acknowledged by {acks} of "
                                  f"{self.replica_acks} replica(s) within {ACK_TIMEOUT:g} s; "
                                  "it was undone")
        return list(reply)

    async def _undo(self, keys: list[str], token: str, value: str, old: str) -> None:
        try:
            with self._errors("undoing an unacknowledged write"):
                await self.client.execute_command("EVAL", _UNDO, 3, *keys, token, value, old)
        except StoreUnreachable as exc:  # the master is gone: so, most likely, is the write
            log.warning("store_undo_failed", detail=str(exc))

    # -- the lease

    @contextlib.asynccontextmanager
    async def lock(self, key: RecordKey) -> AsyncIterator[None]:
        async with self._local.setdefault(key, asyncio.Lock()):
            await self._ready()
            lease = await self._acquire(key)
            self._held[key] = lease
            keeper = asyncio.create_task(self._keep(lease))
            try:
                yield
            finally:
                keeper.cancel()
                await asyncio.gather(keeper, return_exceptions=True)
                self._held.pop(key, None)
                await self._let_go(lease)

    async def _acquire(self, key: RecordKey) -> _Lease:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.lease_wait
        lease = _Lease(self.lease_key(key), secrets.token_urlsafe(18), 0.0)
        pause = 0.02
        while True:
            taken = await self._run(
                "taking the lease", lambda: self._take_acked(lease),
                wait=max(0.0, min(self.failover_wait, deadline - loop.time())))
            if taken:
                return lease
            left = deadline - loop.time()
            if left <= 0:
                raise LeaseTimeout(f"another replica held the lease on {key} for longer than "
                                   f"store.lease.wait ({self.lease_wait:g} s)",
                                   waited=loop.time() - started)
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.0)))  # noqa: S311
            pause = min(pause * 2, _POLL_MAX)

    async def _take_acked(self, lease: _Lease) -> bool:
        taken_at = asyncio.get_running_loop().time()
        taken, acks = await self._acked(lease.key, "SET", lease.key, lease.token, "NX", "PX",
                                        self._ttl_ms)
        if not taken:
            return False
        lease.until = taken_at + self.lease_ttl
        if acks < self.replica_acks:
            with contextlib.suppress(RedisError):  # else it expires after its TTL
                await self._release(keys=[lease.key], args=[lease.token])
            raise _Unacknowledged(f"the lease was acknowledged by {acks} of "
                                  f"{self.replica_acks} replica(s) within {ACK_TIMEOUT:g} s; "
                                  "it was given back")
        return True

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.lease_ttl * 1000))

    async def _keep(self, lease: _Lease) -> None:
        """Extend the lease every ttl/3 while held; stop once it is found lost."""
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            sent_at = asyncio.get_running_loop().time()
            try:
                with self._errors("extending the lease"):
                    extended = await self._renew(keys=[lease.key], args=[lease.token,
                                                                         self._ttl_ms])
                if extended:
                    lease.until = sent_at + self.lease_ttl
            except StoreError as exc:
                log.warning("lease_extension_failed", lease=lease.key, detail=str(exc))
                continue
            if not extended:
                lease.lost = True
                log.warning("lease_lost", lease=lease.key)
                return

    async def _let_go(self, lease: _Lease) -> None:
        if lease.lost:
            return
        try:
            with self._errors("releasing the lease"):
                await asyncio.wait_for(
                    self._release(keys=[lease.key], args=[lease.token]), COMMAND_TIMEOUT)
        except (StoreError, TimeoutError) as exc:  # it expires by itself after its TTL
            log.warning("lease_release_failed", lease=lease.key, detail=str(exc),
                        then="released once a master answers" if self.target.fails_over
                        else "it expires after its TTL")
            if self.target.fails_over:
                task = asyncio.create_task(self._release_later(lease))
                self._releasing.add(task)
                task.add_done_callback(self._releasing.discard)

    async def _release_later(self, lease: _Lease) -> None:
        """Release on the new master once one answers, so waiters need not sit out the TTL
        (the lease was replicated to the promoted replica with this holder's token)."""
        left = lease.until - asyncio.get_running_loop().time()
        if left <= 0:
            return
        try:
            released = await self._run(
                "releasing the lease after a failover",
                lambda: self._release(keys=[lease.key], args=[lease.token]), wait=left)
        except StoreError as exc:
            log.warning("lease_release_failed", lease=lease.key, detail=str(exc),
                        then="it expires after its TTL")
            return
        log.info("lease_released_after_failover", lease=lease.key, released=bool(released))

    # -- health and end

    async def check(self) -> str | None:
        try:
            with self._errors("ping"):
                await asyncio.wait_for(self.client.ping(), CHECK_TIMEOUT)
        except StoreError as exc:
            return str(exc)
        except TimeoutError:
            return f"redis {self.target.describe()} did not answer PING within " \
                   f"{CHECK_TIMEOUT:g} s"
        return None

    async def close(self) -> None:
        for task in list(self._releasing):
            task.cancel()
        await asyncio.gather(*self._releasing, return_exceptions=True)
        for client in (self.client, *self._sentinels):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()


class FlowRecordSerializer(BaseSerializer):  # type: ignore[misc]  # aiocache is untyped
    """A record as the JSON text a shared backend stores, sealed with `sealer` when it has
    keys; a value that is not a record in a known form is :class:`StoreCorrupt`."""

    def __init__(self, sealer: Sealer = PLAIN) -> None:
        super().__init__()
        self.sealer = sealer

    def dumps(self, value: FlowRecord) -> str:
        sealed = self.sealer.seal(json.dumps(dataclasses.asdict(value)))
        return sealed if isinstance(sealed, str) else json.dumps(sealed)

    def loads(self, value: str | None) -> FlowRecord | None:
        if value is None:
            return None
        try:
            text = self.sealer.unseal(json.loads(value), "a flow record") \
                if self.sealer.enabled else value
            data = json.loads(text)
            # A record written before records were bound carries no binding: refused as foreign.
            data.setdefault("upstream", "")
            data.setdefault("issuer", "")
            return FlowRecord(**data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreCorrupt(
                f"a flow record is malformed ({type(exc).__name__})") from None


def flow_cache(store: RedisStore, ttl: float = FLOW_TTL) -> FlowCache:
    """Callback-mediation records (store/flows.py) through aiocache's RedisCache on this
    store's own client (store/aiocache_redis.py: TLS, ACL user, Sentinel, Cluster as the store
    connects), under ``{prefix}:flow:<sha256(key)>``, sealed with the store's keys."""
    cache = ClientRedisCache(store.client, namespace=f"{store.prefix}:flow",
                             serializer=FlowRecordSerializer(store.sealer),
                             key_builder=hashed_key)
    return FlowCache(cache, ttl=ttl, getdel=True, unreachable=(RedisError,))


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _loads(raw: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise StoreCorrupt("a stored record is not valid JSON; it is left untouched") from None
    if not isinstance(data, dict):
        raise StoreCorrupt("a stored record is not a JSON object; it is left untouched")
    return data


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))
