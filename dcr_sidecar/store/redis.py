"""Redis store: credentials shared by a fleet of replicas, a lease per key (design.md §3.4), and
short-lived one-time records for callback mediation (§3.6).

Keys — one upstream's record and lease share a hash tag, so they sit in one cluster slot and
one Lua script may touch both::

    {prefix}:{<upstream>:<sha256(issuer)[:16]>}:record   JSON made by records.record_to_json
    {prefix}:{<upstream>:<sha256(issuer)[:16]>}:lease    a random token, PX store.lease.ttl
    {prefix}:key-check                                    the encryption key check (JSON)
    {prefix}:flow:<sha256(key)>                           one-time records, PX their TTL

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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import random
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from dcr_sidecar import errors
from dcr_sidecar.oauth.callback import FlowRecord
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.observability import remember_secret, scrub
from dcr_sidecar.store.errors import (
    KeyMismatch,
    LeaseLost,
    LeaseTimeout,
    StoreCorrupt,
    StoreError,
    StoreUnreachable,
)
from dcr_sidecar.store.flows import FLOW_TTL
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

CONNECT_TIMEOUT = 2.0  # seconds; an outage must turn into a quick 503, not a hung request
COMMAND_TIMEOUT = 5.0
CHECK_TIMEOUT = 1.0  # /readyz
_POLL_MAX = 0.25
_SCAN_LIMIT = 100_000  # records resealed at start; far beyond any real fleet's upstreams

# KEYS[1] lease; ARGV[1] token, ARGV[2] ttl (ms)
_RENEW = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
          "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0")
# KEYS[1] lease; ARGV[1] token
_RELEASE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
            "return redis.call('DEL', KEYS[1]) end return 0")
# KEYS[1] lease, KEYS[2] record; ARGV[1] token, ARGV[2] the record's JSON
_WRITE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
          "redis.call('SET', KEYS[2], ARGV[2]) return 1 end return 0")
# KEYS[1] any key; ARGV[1] the exact bytes expected, ARGV[2] the new value
_SWAP = ("if redis.call('GET', KEYS[1]) == ARGV[1] then "
         "redis.call('SET', KEYS[1], ARGV[2]) return 1 end return 0")


def connect(url: Secret) -> tuple[Redis, RedisTarget, list[Redis]]:
    """A client for `url` (not yet connected: redis-py connects on first command), the parsed
    target, and any sentinel clients to close with it."""
    target = parse_redis_url(url.reveal())
    for secret in (target.password, target.sentinel_password):
        remember_secret(secret)  # scrubbed from every log line, whatever the error says
    common: dict[str, Any] = {
        "socket_timeout": COMMAND_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
        # One quick retry: a pooled connection may be dead after Redis restarted.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    }
    if not target.sentinel:
        return Redis.from_url(target.url, **common), target, []
    tls: dict[str, Any] = {"ssl": True, "ssl_ca_certs": target.ssl_ca_certs} if target.tls \
        else {}
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
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._write = self.client.register_script(_WRITE)
        self._swap = self.client.register_script(_SWAP)
        self._local: dict[RecordKey, asyncio.Lock] = {}
        self._held: dict[RecordKey, _Lease] = {}
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
                f"{scrub(str(exc))[:200]}") from exc

    # -- start: the key check and resealing

    async def open(self) -> None:
        try:
            await self._prepare()
        except StoreUnreachable as exc:
            log.warning("store_unreachable_at_start", store=self.target.describe(),
                        detail=str(exc), then="the key check runs on first use")

    async def _ready(self) -> None:
        if not self._prepared:
            await self._prepare()

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
        with self._errors("reading a record"):
            raw = await self.client.get(self.record_key(key))
        return None if raw is None else record_from_json(_loads(raw), self.sealer)

    async def put(self, record: Record) -> None:
        await self._ready()
        lease = self._held.get(record.key)
        if lease is None:
            raise LeaseLost(f"no lease is held on {record.key}; the write was refused")
        value = _dumps(record_to_json(record, self.sealer))
        with self._errors("writing a record"):
            written = await self._write(keys=[lease.key, self.record_key(record.key)],
                                        args=[lease.token, value])
        if not written:
            lease.lost = True
            raise LeaseLost(f"the lease on {record.key} expired or was taken over by another "
                            "replica; the write was refused")

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
        lease = _Lease(self.lease_key(key), secrets.token_urlsafe(18))
        pause = 0.02
        while True:
            with self._errors("taking the lease"):
                if await self.client.set(lease.key, lease.token, nx=True, px=self._ttl_ms):
                    return lease
            left = deadline - loop.time()
            if left <= 0:
                raise LeaseTimeout(f"another replica held the lease on {key} for longer than "
                                   f"store.lease.wait ({self.lease_wait:g} s)",
                                   waited=loop.time() - started)
            await asyncio.sleep(min(left, pause * random.uniform(0.5, 1.0)))  # noqa: S311
            pause = min(pause * 2, _POLL_MAX)

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.lease_ttl * 1000))

    async def _keep(self, lease: _Lease) -> None:
        """Extend the lease every ttl/3 while held; stop once it is found lost."""
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            try:
                with self._errors("extending the lease"):
                    extended = await self._renew(keys=[lease.key], args=[lease.token,
                                                                         self._ttl_ms])
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
            log.warning("lease_release_failed", lease=lease.key, detail=str(exc))

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
        for client in (self.client, *self._sentinels):
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()


class RedisFlowRecords:
    """Short-lived one-time records in Redis: callback-mediation state (design.md §3.6).

    ``set(key, value, ttl)`` stores `value` for `ttl` seconds; ``pop(key)`` returns it once
    (atomic GETDEL, Redis ≥ 6.2): of two replicas popping one key, exactly one gets the value.
    Keys are stored hashed; values are sealed when ``store.encryption_keys`` is set (they may
    hold a PKCE verifier). Failures raise :class:`StoreUnreachable`.
    """

    def __init__(self, client: Redis, *, key_prefix: str = "dcr-sidecar",
                 sealer: Sealer = PLAIN) -> None:
        self.client = client
        self.prefix = key_prefix
        self.sealer = sealer

    @classmethod
    def sharing(cls, store: RedisStore) -> RedisFlowRecords:
        """Flow records on the credential store's connection, prefix and keys."""
        return cls(store.client, key_prefix=store.prefix, sealer=store.sealer)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:flow:{hashlib.sha256(key.encode()).hexdigest()}"

    async def set(self, key: str, value: str, ttl: float) -> None:
        sealed = self.sealer.seal(value)
        stored = sealed if isinstance(sealed, str) else json.dumps(sealed)
        try:
            await self.client.set(self._key(key), stored, px=max(1, int(ttl * 1000)))
        except RedisError as exc:
            raise StoreUnreachable(f"redis failed (storing a flow record): "
                                   f"{type(exc).__name__}") from exc

    async def pop(self, key: str) -> str | None:
        try:
            raw = await self.client.getdel(self._key(key))
        except RedisError as exc:
            raise StoreUnreachable(f"redis failed (taking a flow record): "
                                   f"{type(exc).__name__}") from exc
        if raw is None:
            return None
        text = _text(raw)
        if not self.sealer.enabled:
            return text
        try:
            return self.sealer.unseal(json.loads(text), "a flow record")
        except ValueError:
            raise StoreCorrupt("a flow record is not in a known form") from None


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


class RedisFlowStore:
    """The callback-mediation :class:`~dcr_sidecar.store.flows.FlowStore` on Redis, so a login
    started on one replica can finish on another (design.md §3.4: the records live in Redis with
    the redis store). Store failures become typed 503s."""

    def __init__(self, records: RedisFlowRecords, ttl: float = FLOW_TTL) -> None:
        self.records = records
        self.ttl = ttl

    async def put(self, key: str, record: FlowRecord) -> None:
        try:
            await self.records.set(key, json.dumps(dataclasses.asdict(record)), self.ttl)
        except StoreError as exc:
            raise errors.StoreUnavailable(str(exc), step="store_write", retry_after=5) from exc

    async def take(self, key: str) -> FlowRecord | None:
        try:
            raw = await self.records.pop(key)
        except StoreError as exc:
            raise errors.StoreUnavailable(str(exc), step="store_read", retry_after=5) from exc
        if raw is None:
            return None
        data = json.loads(raw)
        # A record written before records were bound carries no binding: refused as foreign.
        data.setdefault("upstream", "")
        data.setdefault("issuer", "")
        return FlowRecord(**data)
