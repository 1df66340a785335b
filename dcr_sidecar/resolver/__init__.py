"""The stateful resolver: per upstream, metadata and credentials, obtained once and kept right.

Guarantees:
- In one process, at most one resolution per upstream is in flight (:class:`SingleFlight`):
  N concurrent first contacts cause one discovery and one registration, and every waiter gets
  the same result or the same typed error; a cancelled waiter never cancels the shared work.
- A stored record with a usable generation is adopted as read, without the lock. The store's
  per-key lock (file lock; Redis lease across a fleet) is taken only to change something —
  register, renew, recover, delete — and the store is re-read after taking it, so processes
  sharing a store register at most once per key (barring a lost Redis lease).
- Shared stores (Redis): what a replica serves from, and decides renewals on, is a record at most
  ``max_record_age`` seconds old (30): the maintenance loop re-reads it before that, a request
  finding it older re-reads it first. So a renewal, rotation or new generation written by one
  replica is served by the others within the bound.
- A holder whose lease was lost mid-change has its write refused (LeaseLost); it deletes the
  client it just registered (RFC 7592, when it can), re-reads and adopts the winner's record.
- Credentials are persisted before they are used; a registration whose write fails is deleted
  at the AS when possible (no orphan) and the resolution fails typed. A new client_secret or
  registration access token from RFC 7592 replaces the old one in the store at once.
- Store trouble never takes away credentials already held: while unexpired they keep being
  served when a re-read or renewal fails; new resolutions get 503 + Retry-After until the
  store is back (no restart needed).
- Client generations (design.md §3.4): a new generation supersedes the previous one, which stays
  usable for `generation_grace` (one-time fallback on invalid_grant) and is deleted (RFC 7592
  DELETE) after it. Static clients are never registered, renewed, invalidated or deleted.
- The mechanism (design.md §3.11) is chosen per resolution: static > CIMD > DCR. A CIMD client
  registers nothing: its client_id is the document URL, its keys come from :class:`CimdKeys`
  (made once per upstream under the lock/lease), and an `invalid_client` for it is relayed and
  reported, never "recovered" by registering.
- Every failure is typed and names its step; unexpected exceptions become ``BadUpstream``.
  A failed resolution backs off (full jitter, Retry-After honoured); callers during backoff get
  ``BackingOff`` (503 + Retry-After) at once. One upstream never delays another.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

import structlog

from dcr_sidecar import errors
from dcr_sidecar.cimd import CimdKeys, KeyRingSigner, schedule
from dcr_sidecar.client_keys import (
    KeySources,
    client_credentials,
    registration_key,
    static_credentials,
)
from dcr_sidecar.config import Settings, Upstream
from dcr_sidecar.discovery import Discoverer, DiscoveryResult
from dcr_sidecar.files import write_atomic
from dcr_sidecar.management7592 import Rfc7592
from dcr_sidecar.metrics import Metrics
from dcr_sidecar.net import Outbound
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth import cimd as cimd_rules
from dcr_sidecar.oauth.client_auth import ClientCredentials
from dcr_sidecar.oauth.lifetime import management_fields, renew_at, renewal_margin
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.oauth.registration import fingerprint
from dcr_sidecar.oauth.retry import backoff_delay
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.observability import remember_secret
from dcr_sidecar.registrar import Registrar, profile_of
from dcr_sidecar.resolver import migration
from dcr_sidecar.resolver.face import Credentials, Snapshot
from dcr_sidecar.singleflight import SingleFlight
from dcr_sidecar.store import CredentialStore
from dcr_sidecar.store import errors as store_errors
from dcr_sidecar.store.records import Generation, Record, RecordKey

__all__ = ["Credentials", "Resolver", "Snapshot"]

log = structlog.get_logger(__name__)
audit = structlog.get_logger("dcr_sidecar.audit")
T = TypeVar("T")
MAINTENANCE_IDLE = 300.0
MAX_RECORD_AGE = 30.0  # design.md §3.4: replicas serve from a record at most this old
REREAD_AT = 0.75  # the maintenance loop re-reads at this fraction of the bound


@dataclass
class UpstreamState:
    config: Upstream
    discovery: DiscoveryResult | None = None
    metadata_expires: float = 0.0  # monotonic
    credentials: Credentials | None = None
    # The credentials served last, kept when `credentials` is cleared (admin DELETE) and
    # across a reload: what a client_id change is measured against.
    last_served: Credentials | None = None
    # The client_id this state (so this config's client_id_file) last wrote to that file, and
    # the write in a thread (write_atomic fsyncs twice): the resolution awaits it (_guarded).
    client_id_written: str | None = None
    client_id_file_write: asyncio.Task[None] | None = None
    previous: Credentials | None = None
    previous_until: float = 0.0  # wall clock
    current: Generation | None = None
    key: RecordKey | None = None
    failures: int = 0
    backoff_until: float = 0.0  # monotonic
    last_error: str | None = None
    last_error_step: str | None = None
    step: errors.Step = "discover"
    last_renewal: float | None = None  # monotonic
    record_read_at: float = 0.0  # monotonic: when the adopted record was read (or written)
    recover_until: float = 0.0  # monotonic: no re-registration on invalid_client before it
    recoveries_unserved: int = 0  # recovery generations in a row that never served
    registered_here: set[int] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    mechanism: str | None = None  # static | cimd | dcr, once resolved
    mechanism_reason: str | None = None
    invalid_client: int = 0  # CIMD: invalid_client answers relayed (nothing to recover)
    watch: migration.ResourceWatch = field(default_factory=migration.ResourceWatch)
    stats: dict[str, int] = field(default_factory=lambda: {
        "registrations": 0, "discoveries": 0, "renewals": 0, "recoveries": 0, "deletions": 0})


class Resolver:
    """At most one registration per key per process; across processes, one per file lock or
    Redis lease (see the module docstring for every guarantee)."""

    metrics: Metrics = Metrics(None)  # the sidecar sets its own (app.Sidecar)

    def __init__(self, settings: Settings, outbound: Outbound, store: CredentialStore) -> None:
        self.settings = settings
        self.outbound = outbound
        self.store = store
        self.max_record_age = MAX_RECORD_AGE  # shared stores only; tests may lower it
        self.discoverer = Discoverer(outbound)
        self.registrar = Registrar(outbound)
        self.rfc7592 = Rfc7592(outbound)
        self.cimd_keys = CimdKeys(store, lambda: self.max_record_age)
        self._states = {u.name: UpstreamState(u) for u in settings.upstreams}
        self._flight: SingleFlight[tuple[str, str], object] = SingleFlight()
        self._key_sources: KeySources = {}  # static clients' key and assertion file readers

    # ------------------------------------------------------------------ public surface

    def names(self) -> list[str]:
        return list(self._states)

    def _state(self, name: str) -> UpstreamState:
        state = self._states.get(name)
        if state is None:
            raise errors.NotFound(f"no upstream named {name!r} is configured")
        return state

    def snapshot(self, name: str) -> Snapshot:
        """One upstream as held now, frozen (:class:`.face.Snapshot`); NotFound if unknown."""
        state = self._state(name)
        found, gen = state.discovery, state.current
        due = renew_at(gen.client_secret_expires_at, gen.received_at) if gen else None
        return Snapshot(
            config=state.config,
            metadata=found.metadata if found else None,
            discovered_from=found.source_url if found else None,
            discovered_at=found.fetched_at if found else None,
            metadata_expires_at=_wall(state.metadata_expires) if found else None,
            resource=found.resource if found else None,
            authorization_server_changes=tuple(state.watch.changes),
            mechanism=state.mechanism, mechanism_reason=state.mechanism_reason,
            credentials=state.credentials, record_key=state.key,
            registered_at=gen.received_at if gen else None,
            renew_at=float(due) if due else None,
            previous_until=(state.previous_until
                            if state.previous is not None and state.previous_until else None),
            record_age=self._record_age(state),
            failures=state.failures, backoff_until=_wall(state.backoff_until),
            last_error=state.last_error, last_error_step=state.last_error_step,
            recover_until=_wall(state.recover_until),
            recoveries_unserved=state.recoveries_unserved,
            invalid_client=state.invalid_client,
            stats=MappingProxyType(dict(state.stats)))

    async def generation(self, name: str, number: int) -> Generation | None:
        """Generation `number` of the upstream's record as the store holds it now (None when
        it is gone, or nothing is held yet): for mediation and the grace of a superseded
        generation. A store failure is a typed 503 naming `store_read`."""
        state = self._state(name)
        if state.key is None:
            return None
        return (await self._read(state, state.key)).get(number)

    def forget(self, name: str) -> None:
        """Drop the credentials held in memory (the store keeps them): the next request
        resolves again, from the store first."""
        self._state(name).credentials = None

    async def wait_backoff(self, name: str) -> None:
        """Return when the upstream's backoff ends (at once when it is not backing off)."""
        state = self._state(name)
        await asyncio.sleep(max(0.05, state.backoff_until - time.monotonic()))

    def cached(self, name: str) -> Credentials | None:
        state = self._states.get(name)
        return state.credentials if state else None

    async def metadata(self, name: str) -> Metadata:
        state = self._state(name)
        if state.discovery is not None and time.monotonic() < state.metadata_expires:
            return state.discovery.metadata
        if state.discovery is None:
            self._check_backoff(state)
        return await self._shared(state, "metadata", self._metadata)

    async def credentials(self, name: str) -> Credentials:
        state = self._state(name)
        creds = state.credentials
        if creds is not None and not self._stale(state, creds):
            return creds
        if creds is not None and time.monotonic() < state.backoff_until and not _expired(creds):
            return creds  # renewal or refresh is failing; what we hold is still valid
        self._check_backoff(state)
        try:
            return await self._shared(state, "credentials", self._resolve)
        except errors.UpstreamError:
            held = state.credentials
            if held is not None and not _expired(held):
                return held  # a re-read or refresh failed (logged, backing off): still valid
            raise

    def previous(self, name: str) -> Credentials | None:
        """The superseded generation still within its grace (for the invalid_grant retry)."""
        state = self._state(name)
        if state.previous is not None and time.time() < state.previous_until:
            return state.previous
        return None

    async def stored(self, name: str, issuer: str) -> Record:
        """The upstream's record as the store holds it now (empty when there is none); a store
        failure is a typed 503 naming `store_read` (design.md §3.7)."""
        state = self._state(name)
        return await self._read(state, RecordKey(issuer, name))

    async def recover(self, name: str, failed: Credentials) -> Credentials | None:
        """The AS said invalid_client to `failed`: find out why and, if the client is gone or
        its secret expired, register a new generation. None: nothing to retry with."""
        state = self._state(name)
        if failed.static:
            return None
        if failed.mechanism == "cimd":
            state.invalid_client += 1
            state.last_error = ("the AS answered invalid_client to the CIMD client (the sidecar "
                                "cannot fix that by registering; check the document and JWKS "
                                "the AS fetches)")
            state.last_error_step = "forward"
            self.metrics.cimd_invalid_client(name)
            log.warning("cimd_invalid_client", upstream=name, client_id=failed.client_id)
            return None
        held = state.credentials
        if held is not None and held.generation != failed.generation:
            return held  # already recovered (by another request or another process)
        if time.monotonic() < state.recover_until:
            return None
        return await self._shared(state, "recover", lambda st: self._recover(st, failed))

    async def served(self, name: str, creds: Credentials) -> None:
        """A request was served with `creds` (the AS accepted them, or the client_id went to
        an app): their generation is kept for its grace when superseded, and recovery's window
        starts again from `backoff.base`. Recorded once per generation; never raises."""
        state = self._states.get(name)
        if state is None or creds.static or creds.mechanism != "dcr":
            return
        gen = state.current
        if gen is None or gen.generation != creds.generation:
            return
        state.recoveries_unserved = 0
        if gen.served:
            return

        async def work() -> None:
            await self._mark_served(state, gen.generation)

        try:
            await self._flight.run(("served", name), work)
        except errors.SidecarError as exc:  # the store: tried again on the next request
            log.warning("served_mark_failed", upstream=name, generation=gen.generation,
                        detail=exc.description if isinstance(exc, errors.UpstreamError)
                        else str(exc))

    async def maintain(self, name: str) -> None:
        """Background upkeep of one upstream: renew before expiry, refresh metadata before it
        expires, delete superseded clients after their grace. Runs until cancelled."""
        state = self._state(name)
        while self._states.get(name) is state:  # a reload that replaces the state ends it
            delay = max(0.05, min(self._next_due(state) - time.time(), MAINTENANCE_IDLE))
            state.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.wake.wait(), timeout=delay)
            try:
                await self._maintenance_pass(state)
            except errors.SidecarError:
                await asyncio.sleep(max(0.05, state.backoff_until - time.monotonic()))

    async def delete_own_clients(self) -> None:
        """Ephemeral stores: on clean shutdown delete the clients this process registered."""
        for state in self._states.values():
            if state.registered_here and state.key is not None:
                with contextlib.suppress(errors.SidecarError):
                    await self._guarded(state, self._delete_own)

    async def recheck_resource(self, name: str) -> bool:
        """An authorization start: has the resource moved to another AS? True when it has, and
        the credentials held were dropped (:mod:`.migration`)."""
        return await migration.recheck(self, self._state(name))

    async def close(self) -> None:
        await self._flight.cancel_all()
        for state in self._states.values():
            await state.watch.flight.cancel_all()
            if state.client_id_file_write is not None:
                await state.client_id_file_write

    # ------------------------------------------------------------------ machinery

    async def _shared(self, state: UpstreamState, kind: str,
                      work: Callable[[UpstreamState], Awaitable[T]]) -> T:
        async def guarded() -> object:
            return await self._guarded(state, work)

        result = await self._flight.run((kind, state.config.name), guarded)
        return result  # type: ignore[return-value]

    async def _guarded(self, state: UpstreamState,
                       work: Callable[[UpstreamState], Awaitable[T]]) -> T:
        name = state.config.name
        structlog.contextvars.bind_contextvars(upstream=name)
        try:
            result = await work(state)
            if state.client_id_file_write is not None:  # written before it is served
                await state.client_id_file_write
        except errors.UpstreamError as exc:
            # Nested flights (credentials awaiting metadata) see one failure once.
            if not exc.accounted:
                self._failed(state, exc)
            raise
        except errors.SidecarError:
            raise  # a conflict or a not-found is an answer, not an upstream failure
        except Exception as exc:  # parsers and bugs: typed, never a crash (design.md §3.7)
            typed = errors.BadUpstream(f"unexpected failure during {state.step}: "
                                       f"{type(exc).__name__}", step=state.step, upstream=name)
            log.error("resolution_crashed", step=state.step, exc_info=exc)
            self._failed(state, typed)
            raise typed from exc
        state.failures, state.backoff_until = 0, 0.0
        state.last_error = state.last_error_step = None
        return result

    def _failed(self, state: UpstreamState, exc: errors.UpstreamError) -> None:
        state.failures += 1
        backoff = self.settings.backoff
        delay = backoff_delay(state.failures, base=backoff.base, cap=backoff.cap)
        hinted = exc.retry_hint if isinstance(exc, errors.Unavailable) else None
        if hinted is not None:
            delay = max(delay, min(float(hinted), backoff.max_retry_after))
        state.backoff_until = time.monotonic() + delay
        if isinstance(exc, errors.Unavailable):
            exc.retry_hint = delay  # the first caller hears the same wait as the others
        state.last_error, state.last_error_step = exc.description, exc.step
        exc.accounted = True
        log.warning("resolution_failed", upstream=state.config.name, step=exc.step,
                    error=exc.error, detail=exc.description, failures=state.failures,
                    backoff_s=round(delay, 3))
        self.metrics.resolution_failed(state.config.name, exc.step)

    def _check_backoff(self, state: UpstreamState) -> None:
        remaining = state.backoff_until - time.monotonic()
        if remaining > 0:
            raise errors.BackingOff(
                f"upstream {state.config.name!r} is backing off after a failure "
                f"({state.last_error_step}: {state.last_error})", step="discover",
                upstream=state.config.name, retry_after=remaining)

    def _stale(self, state: UpstreamState, creds: Credentials) -> bool:
        """Must this request wait for a resolution? Renewal before expiry never makes it wait:
        the maintenance loop renews in the background while the current secret stays valid."""
        keys_stale = (creds.mechanism == "cimd" and self.store.shared
                      and creds.method == "private_key_jwt"
                      and self.cimd_keys.read_age(state.config.name) >= self.max_record_age)
        moved = state.discovery is not None and creds.issuer != state.discovery.metadata.issuer
        return (time.monotonic() >= state.metadata_expires or _expired(creds)
                or self._record_age(state) >= self.max_record_age or keys_stale or moved)

    def _record_age(self, state: UpstreamState) -> float:
        """Seconds since the held record was read; 0 for stores no other process writes to
        behind the lock (file, memory): what this process holds is what they hold."""
        if not self.store.shared or state.current is None:
            return 0.0
        return time.monotonic() - state.record_read_at

    def _fingerprint(self, config: Upstream) -> str:
        """The fingerprint of the registration this config asks for (design.md §3.4)."""
        return fingerprint(profile_of(config, self.settings))

    def _renewal_due(self, state: UpstreamState, gen: Generation, now: float) -> bool:
        when = renew_at(gen.client_secret_expires_at, gen.received_at)
        if when is None or now < when:
            return False
        if state.last_renewal is None:
            return True
        margin = renewal_margin(gen.client_secret_expires_at, gen.received_at)
        return time.monotonic() - state.last_renewal >= margin  # one renewal per margin

    @contextlib.asynccontextmanager
    async def _store_errors(self, state: UpstreamState,
                            step: errors.Step) -> AsyncIterator[None]:
        state.step = step
        with store_errors.map_store_errors(step, upstream=state.config.name,
                                           count=self.metrics.store_error):
            yield

    async def _read(self, state: UpstreamState, key: RecordKey) -> Record:
        async with self._store_errors(state, "store_read"):
            return await self.store.get(key) or Record(key)

    async def _write(self, state: UpstreamState, record: Record) -> None:
        async with self._store_errors(state, "store_write"):
            await self.store.put(record)

    @contextlib.asynccontextmanager
    async def _locked(self, state: UpstreamState, key: RecordKey) -> AsyncIterator[None]:
        async with self._store_errors(state, "lease"), self.store.lock(key):
            yield

    # ------------------------------------------------------------------ discovery

    async def _metadata(self, state: UpstreamState) -> Metadata:
        state.step = "discover"
        try:
            result = await self.discoverer.discover(
                state.config, need_registration=state.config.strategy == "dcr")
        except errors.UpstreamError:
            if state.discovery is None:
                raise
            # A failed refresh keeps serving the stale document (design.md §2.2 discovery).
            state.metadata_expires = time.monotonic() + self.settings.discovery.min_ttl
            log.warning("metadata_refresh_failed", upstream=state.config.name)
            self.metrics.discovery(state.config.name, "failure")
            return state.discovery.metadata
        previous, state.discovery = state.discovery, result
        state.metadata_expires = time.monotonic() + result.ttl
        migration.discovered(state, previous)  # may keep `previous` (a static client's AS)
        state.stats["discoveries"] += 1
        log.info("metadata_discovered", upstream=state.config.name, issuer=result.metadata.issuer,
                 url=result.source_url or "(endpoints from config)")
        self.metrics.discovery(state.config.name, "success")
        return state.discovery.metadata

    async def _fresh_metadata(self, state: UpstreamState) -> Metadata:
        if state.discovery is None or time.monotonic() >= state.metadata_expires:
            return await self._shared(state, "metadata", self._metadata)
        return state.discovery.metadata

    # ------------------------------------------------------------------ credentials

    async def _resolve(self, state: UpstreamState) -> Credentials:
        metadata = await self._fresh_metadata(state)
        mechanism, why = self._choose(state, metadata)
        if (state.mechanism, state.mechanism_reason) != (mechanism, why):
            log.info("client_mechanism_chosen", upstream=state.config.name, mechanism=mechanism,
                     reason=why)
        state.mechanism, state.mechanism_reason = mechanism, why
        if mechanism == "static":
            self._adopt_static(state, metadata)
        elif mechanism == "cimd":
            await self._adopt_cimd(state, metadata)
        else:
            await self._dynamic(state, metadata)
        assert state.credentials is not None
        return state.credentials

    def _choose(self, state: UpstreamState, metadata: Metadata) -> tuple[str, str]:
        """static > CIMD > DCR (design.md §3.11), and why."""
        config = state.config
        state.step = "register"
        source = state.discovery.source_url if state.discovery is not None else None
        try:
            return cimd_rules.choose(
                registration=config.registration, has_client_id=bool(config.client_id),
                metadata=metadata.document, metadata_url=source,
                client_id_url=self.settings.cimd_document_url(config),
                auth_method=config.cimd.auth_method)
        except ProtocolError as exc:
            raise errors.BadUpstream(exc.reason, step="register", upstream=config.name) from exc

    async def _adopt_cimd(self, state: UpstreamState, metadata: Metadata) -> None:
        """A CIMD client: nothing to register; the key set comes from the store."""
        config = state.config
        method = config.cimd.auth_method
        client_id = self.settings.cimd_document_url(config)
        signer, audience = None, None
        if method == "private_key_jwt":
            state.step = "store_read"
            record = await self.cimd_keys.record(config.name)
            signer = KeyRingSigner(record)
            audience = (metadata.issuer if config.assertion_audience == "issuer"
                        else metadata.token_endpoint or metadata.issuer)
        state.current = state.previous = None
        state.key, state.previous_until = None, 0.0
        self._switch(state, Credentials(
            upstream=config.name, metadata=metadata, client_id=client_id, method=method,
            generation=0, expires_at=0, static=False, mechanism="cimd",
            auth=ClientCredentials(client_id, None, method, signer=signer, audience=audience)))
        state.wake.set()

    def _adopt_static(self, state: UpstreamState, metadata: Metadata) -> None:
        config = state.config
        assert config.client_id is not None
        remember_secret(config.client_secret)
        method = config.static_auth_method
        creds = Credentials(
            upstream=config.name, metadata=metadata, client_id=config.client_id, method=method,
            generation=0, expires_at=0, static=True, mechanism="static",
            auth=static_credentials(config, metadata, self._key_sources))
        self._switch(state, creds)

    async def _dynamic(self, state: UpstreamState, metadata: Metadata) -> None:
        config = state.config
        key = RecordKey(metadata.issuer, config.name)
        wanted = self._fingerprint(config)
        record = await self._read(state, key)  # serving needs no lock: only changes do
        current = record.current(wanted, time.time())
        if current is None or self._renewal_due(state, current, time.time()):
            try:
                record, current = await self._change(state, metadata, key, wanted)
            except errors.LeaseLost as exc:
                record, current = await self._winner(state, metadata, key, wanted, exc)
        if current.generation not in state.registered_here and (
                state.current is None or state.current.generation != current.generation):
            log.info("credentials_loaded", upstream=config.name,
                     client_id=current.client_id, generation=current.generation)
        self._adopt(state, metadata, key, record, current)

    async def _change(self, state: UpstreamState, metadata: Metadata, key: RecordKey,
                      wanted: str) -> tuple[Record, Generation]:
        """Under the lock, decide again on a fresh read: renew, register, or adopt what another
        process wrote meanwhile."""
        async with self._locked(state, key):
            record = await self._read(state, key)
            now = time.time()
            current = record.current(wanted, now)
            if current is not None and self._renewal_due(state, current, now):
                current, record = await self._renew(state, record, current)
            if current is None:
                current, record = await self._register(state, metadata, record, wanted)
        return record, current

    async def _winner(self, state: UpstreamState, metadata: Metadata, key: RecordKey,
                      wanted: str, lost: errors.LeaseLost) -> tuple[Record, Generation]:
        """Our lease ran out mid-change (a pause, a failover) and another replica took over:
        its record wins. Adopt it; if it has not written yet, wait for its lease once."""
        log.warning("lease_lost", upstream=state.config.name, detail=lost.description)
        record = await self._read(state, key)
        current = record.current(wanted, time.time())
        if current is None:
            return await self._change(state, metadata, key, wanted)
        return record, current

    def _adopt(self, state: UpstreamState, metadata: Metadata, key: RecordKey, record: Record,
               current: Generation) -> None:
        now = time.time()
        previous = record.previous(current, state.config.generation_grace, now)
        state.key, state.current = key, current
        state.record_read_at = time.monotonic()
        state.previous = _credentials(state.config, metadata, previous) if previous else None
        state.previous_until = (previous.superseded_at or 0) + state.config.generation_grace \
            if previous else 0.0
        self._switch(state, _credentials(state.config, metadata, current))
        state.wake.set()

    def _switch(self, state: UpstreamState, creds: Credentials) -> None:
        """Serve `creds`. Every change of client_id — renewal, rotation, recovery, config
        change, admin DELETE — is one `client_id_changed` event and one count."""
        old = state.last_served
        state.credentials = state.last_served = creds
        if old is not None and old.client_id != creds.client_id:
            audit.info("client_id_changed", upstream=creds.upstream, client_id=creds.client_id,
                       generation=creds.generation, previous_client_id=old.client_id,
                       previous_generation=old.generation)
        if old is None or old.client_id != creds.client_id:
            self.metrics.client_id_seen(creds.upstream, old, creds)
        if state.client_id_written != creds.client_id:  # also a new client_id_file (reload)
            self._write_client_id_file(state, creds.client_id)
            state.client_id_written = creds.client_id

    async def _mark_served(self, state: UpstreamState, number: int) -> None:
        key = state.key
        if key is None:
            return
        async with self._locked(state, key):
            record = await self._read(state, key)
            gen = record.get(number)
            if gen is not None and not gen.served:
                await self._write(state, record.replace(replace(gen, served=True)))
        if state.current is not None and state.current.generation == number:
            state.current = replace(state.current, served=True)

    async def _register(self, state: UpstreamState, metadata: Metadata, record: Record,
                        wanted: str) -> tuple[Generation, Record]:
        """Register a new generation, superseding the live ones; those that never served a
        request are deleted at once (RFC 7592), the others kept for `generation_grace`."""
        config = state.config
        unserved = [g for g in record.generations if g.superseded_at is None and not g.served]
        state.step = "register"
        signing_key = await registration_key(config, metadata, record)
        registration = await self.registrar.register(
            config, metadata, signing_key.binding() if signing_key else None)
        client = registration.client
        now = time.time()
        generation = Generation(
            generation=max(record.next_number(), state.watch.generation_floor + 1),
            fingerprint=wanted, client_id=client.client_id,
            client_secret=client.client_secret,
            token_endpoint_auth_method=client.token_endpoint_auth_method,
            client_secret_expires_at=client.client_secret_expires_at,
            client_id_issued_at=client.client_id_issued_at,
            registration_access_token=client.registration_access_token,
            registration_client_uri=client.registration_client_uri,
            registration_endpoint=registration.endpoint, received_at=now,
            private_key=signing_key.private_jwk if signing_key else None, served=False)
        updated = record.with_generation(generation, now)
        try:
            await self._write(state, updated)
        except errors.StoreUnavailable as exc:  # LeaseLost included
            await self._discard_orphan(state, generation, exc)
            raise
        state.registered_here.add(generation.generation)
        state.stats["registrations"] += 1
        audit.info("client_registered", upstream=config.name, client_id=client.client_id,
                   generation=generation.generation, method=client.token_endpoint_auth_method,
                   expires_at=client.client_secret_expires_at, endpoint=registration.endpoint,
                   endpoint_source=registration.provenance,
                   manageable=Rfc7592.manageable(generation))
        self.metrics.registration(config.name, "success")
        for old in unserved:
            updated = await self._delete_unserved(state, updated, old.generation)
        return generation, updated

    async def _delete_unserved(self, state: UpstreamState, record: Record,
                               number: int) -> Record:
        """Delete a superseded generation no request was served with: nobody holds a code or
        token of it, and a storm of invalid_client must not leave a client per answer at the
        AS. On failure it stays superseded and the janitor deletes it after the grace."""
        gen = record.get(number)
        if gen is None:
            return record
        try:
            return await self._delete_generation(state, record, gen,
                                                 "superseded before it served a request")
        except errors.UpstreamError as exc:
            log.warning("superseded_delete_failed", upstream=state.config.name,
                        client_id=gen.client_id, generation=number, detail=exc.description)
            return record

    async def _discard_orphan(self, state: UpstreamState, gen: Generation,
                              cause: errors.UpstreamError) -> None:
        """A registration that could not be stored would be an orphan at the AS (PEERS #6):
        delete it with RFC 7592 when the AS lets us. Never raises: `cause` is what the caller
        hears."""
        deleted = False
        if Rfc7592.manageable(gen):
            try:
                deleted = await self.rfc7592.delete(state.config, gen)
            except errors.UpstreamError as exc:
                log.warning("orphan_delete_failed", upstream=state.config.name,
                            client_id=gen.client_id, detail=exc.description)
        if deleted:
            state.stats["deletions"] += 1
        audit.warning("orphan_deleted" if deleted else "orphan_left", upstream=state.config.name,
                      client_id=gen.client_id, cause_step=cause.step, cause=cause.description,
                      manageable=Rfc7592.manageable(gen))

    # ------------------------------------------------------------------ renewal (§3.5)

    async def _renew(self, state: UpstreamState, record: Record,
                     gen: Generation) -> tuple[Generation | None, Record]:
        """RFC 7592 GET, then PUT when needed. None: register a new generation."""
        state.last_renewal = time.monotonic()
        state.step = "renew"
        config = state.config
        if not Rfc7592.manageable(gen):
            log.info("renewal_needs_new_generation", upstream=config.name,
                     client_id=gen.client_id, reason="no registration access token")
            return None, record
        margin = renewal_margin(gen.client_secret_expires_at, gen.received_at)
        try:
            answer = await self.rfc7592.read(config, gen)
            if answer.document is not None:
                gen, record = await self._apply_management(state, record, gen, answer.document)
                if _extended(gen, margin):
                    return self._renewed(state, gen, "read"), record
                answer = await self.rfc7592.update(config, gen, answer.document)
                if answer.document is not None:
                    gen, record = await self._apply_management(state, record, gen,
                                                               answer.document)
                    if _extended(gen, margin):
                        return self._renewed(state, gen, "update"), record
        except errors.UpstreamError as exc:
            if gen.expired(time.time()) or isinstance(exc, errors.LeaseLost):
                raise  # a lost lease: the replica that took over decides (see _winner)
            log.warning("renewal_failed", upstream=config.name, client_id=gen.client_id,
                        detail=exc.description, keeping_until=gen.client_secret_expires_at)
            self.metrics.renewal(config.name, "failure")
            return gen, record
        reason = "gone" if answer.gone else "expiry unchanged"
        log.info("renewal_needs_new_generation", upstream=config.name, client_id=gen.client_id,
                 reason=reason)
        return None, record

    def _renewed(self, state: UpstreamState, gen: Generation, via: str) -> Generation:
        state.stats["renewals"] += 1
        self.metrics.renewal(state.config.name, "success")
        audit.info("client_renewed", upstream=state.config.name, client_id=gen.client_id,
                   generation=gen.generation, via=via, expires_at=gen.client_secret_expires_at)
        return gen

    async def _apply_management(self, state: UpstreamState, record: Record, gen: Generation,
                                document: dict[str, object]) -> tuple[Generation, Record]:
        """RFC 7592 §2.1: a new secret or registration access token replaces the old at once;
        a moved expiry is adopted, the lifetime measured from now."""
        secret, token, expires = management_fields(document)
        now = time.time()
        changes: dict[str, object] = {}
        if secret and (gen.client_secret is None or secret != gen.client_secret.reveal()):
            changes["client_secret"] = Secret(secret)
            remember_secret(secret)
        if token and (gen.registration_access_token is None
                      or token != gen.registration_access_token.reveal()):
            changes["registration_access_token"] = Secret(token)
            remember_secret(token)
        if expires is not None and expires != gen.client_secret_expires_at:
            changes["client_secret_expires_at"] = expires
            changes["received_at"] = now
        if not changes:
            return gen, record
        updated = replace(gen, **changes)  # type: ignore[arg-type]
        record = record.replace(updated)
        await self._write(state, record)
        return updated, record

    # ------------------------------------------------------------------ recovery (§3.5)

    async def _recover(self, state: UpstreamState, failed: Credentials) -> Credentials | None:
        metadata = await self._fresh_metadata(state)
        key = RecordKey(metadata.issuer, state.config.name)
        wanted = self._fingerprint(state.config)
        try:
            return await self._recover_locked(state, metadata, key, wanted, failed)
        except errors.LeaseLost as exc:
            record, current = await self._winner(state, metadata, key, wanted, exc)
        self._adopt(state, metadata, key, record, current)
        return state.credentials

    async def _recover_locked(self, state: UpstreamState, metadata: Metadata, key: RecordKey,
                              wanted: str, failed: Credentials) -> Credentials | None:
        config = state.config
        async with self._locked(state, key):
            record = await self._read(state, key)
            now = time.time()
            current = record.current(wanted, now)
            if current is not None and current.generation != failed.generation:
                self._adopt(state, metadata, key, record, current)  # another process recovered
                return state.credentials
            gen = record.get(failed.generation)
            if gen is not None and Rfc7592.manageable(gen):
                state.step = "renew"
                answer = await self.rfc7592.read(config, gen)
                if answer.forbidden:
                    self._hold_off_recovery(state, "registration management is not permitted")
                    return None
                if answer.document is not None:
                    before = gen.client_secret
                    gen, record = await self._apply_management(state, record, gen,
                                                               answer.document)
                    if not gen.expired(now):
                        if gen.client_secret != before:  # the AS rotated the secret
                            self._adopt(state, metadata, key, record, gen)
                            return state.credentials
                        self._hold_off_recovery(state, "the client exists and its secret is "
                                                       "valid: the error is not the sidecar's")
                        return None
                # gone (401/404), or an expired secret the AS did not renew: re-register.
            state.stats["recoveries"] += 1
            audit.info("client_invalidated", upstream=config.name, client_id=failed.client_id,
                       generation=failed.generation)
            current, record = await self._register(state, metadata, record, wanted)
            self._recovery_window(state)
        self._adopt(state, metadata, key, record, current)
        return state.credentials

    def _recovery_window(self, state: UpstreamState) -> None:
        """At most one re-registration per window: `backoff.base`, doubling up to `backoff.cap`
        for each recovery in a row whose generation never served a request. Inside it an
        invalid_client is relayed to the app, registering nothing."""
        backoff = self.settings.backoff
        state.recoveries_unserved += 1
        window = min(backoff.cap, backoff.base * 2.0 ** min(state.recoveries_unserved - 1, 30))
        state.recover_until = time.monotonic() + window
        log.info("recovery_window_started", upstream=state.config.name, window_s=window,
                 recoveries_unserved=state.recoveries_unserved)

    def _hold_off_recovery(self, state: UpstreamState, why: str) -> None:
        backoff = self.settings.backoff
        state.recover_until = time.monotonic() + max(backoff.base, backoff_delay(
            max(1, state.failures + 1), base=backoff.base, cap=backoff.cap))
        log.warning("invalid_client_not_recovered", upstream=state.config.name, reason=why)

    # ------------------------------------------------------------------ maintenance

    def _next_due(self, state: UpstreamState) -> float:
        now = time.time()
        due = [now + MAINTENANCE_IDLE]
        gen = state.current
        if gen is not None and state.config.strategy != "static":
            when = renew_at(gen.client_secret_expires_at, gen.received_at)
            if when is not None:
                if state.last_renewal is not None:
                    margin = renewal_margin(gen.client_secret_expires_at, gen.received_at)
                    when = max(when, now + margin - (time.monotonic() - state.last_renewal))
                due.append(when)
        if state.previous_until:
            due.append(state.previous_until)
        due.extend(self._cimd_due(state, now))
        if self.store.shared and state.current is not None:
            due.append(now + REREAD_AT * self.max_record_age - self._record_age(state))
        if state.discovery is not None and state.discovery.ttl != float("inf"):
            refresh_in = state.metadata_expires - time.monotonic() - 0.1 * state.discovery.ttl
            due.append(now + refresh_in)
        return min(due)

    async def _maintenance_pass(self, state: UpstreamState) -> None:
        if state.credentials is None or time.monotonic() < state.backoff_until:
            return
        now = time.time()
        if state.discovery is not None and state.discovery.ttl != float("inf") and (
                time.monotonic() >= state.metadata_expires - 0.1 * state.discovery.ttl):
            await self._shared(state, "metadata", self._metadata)
        if state.config.strategy == "static":
            return
        if state.mechanism == "cimd":
            await self._cimd_maintenance(state)
            return
        reread = self._record_age(state) >= REREAD_AT * self.max_record_age
        if reread or (state.current is not None
                      and self._renewal_due(state, state.current, now)):
            await self._shared(state, "credentials", self._resolve)
        if state.previous_until and now >= state.previous_until:
            await self._shared(state, "janitor", self._delete_superseded)

    def _cimd_due(self, state: UpstreamState, now: float) -> list[float]:
        """CIMD upkeep times: the key set's re-read bound and a scheduled rotation."""
        config, record = state.config, self.cimd_keys.held(state.config.name)
        if state.mechanism != "cimd" or config.cimd.auth_method != "private_key_jwt" \
                or record is None:
            return []
        due = []
        if self.store.shared:
            age = self.cimd_keys.read_age(config.name)
            due.append(now + REREAD_AT * self.max_record_age - age)
        keys = schedule(record)
        if config.cimd.key_rotation is not None:
            newest = max((k.published_at for k in keys), default=now)
            due.append(newest + config.cimd.key_rotation)
        change = cimd_rules.next_change(keys, now)
        if change is not None:
            due.append(change)
        return due

    async def _cimd_maintenance(self, state: UpstreamState) -> None:
        config = state.config
        if config.cimd.auth_method != "private_key_jwt":
            return
        name = config.name
        rotation = config.cimd.key_rotation
        rotated = rotation is not None and await self.cimd_keys.rotate_if_due(
            name, rotation, config.cimd.overlap)
        reread = self.store.shared and self.cimd_keys.read_age(name) >= REREAD_AT * \
            self.max_record_age
        if rotated or reread:
            await self._shared(state, "credentials", self._resolve)

    async def _delete_superseded(self, state: UpstreamState) -> None:
        if state.key is None:
            return
        async with self._locked(state, state.key):
            record = await self._read(state, state.key)
            for gen in record.due_for_deletion(state.config.generation_grace, time.time()):
                record = await self._delete_generation(state, record, gen, "grace ended")
        state.previous, state.previous_until = None, 0.0

    async def _delete_own(self, state: UpstreamState) -> None:
        assert state.key is not None
        async with self._locked(state, state.key):
            record = await self._read(state, state.key)
            for number in sorted(state.registered_here):
                gen = record.get(number)
                if gen is not None:
                    record = await self._delete_generation(state, record, gen,
                                                           "ephemeral store shutdown")
        state.registered_here.clear()

    async def _delete_generation(self, state: UpstreamState, record: Record, gen: Generation,
                                 why: str) -> Record:
        deleted = False
        if Rfc7592.manageable(gen):
            state.step = "renew"
            deleted = await self.rfc7592.delete(state.config, gen)
        record = record.without(gen.generation)
        await self._write(state, record)
        state.stats["deletions"] += 1
        audit.info("client_deleted" if deleted else "client_forgotten",
                   upstream=state.config.name, client_id=gen.client_id,
                   generation=gen.generation, reason=why)
        return record

    # ------------------------------------------------------------------ reload and admin

    def reload(self, settings: Settings) -> list[str]:
        """Apply a reloaded configuration (design.md §3.10); returns the upstreams whose state is
        new (added or changed), which need their own maintenance.

        Unchanged upstreams keep their state (metadata, cached credentials, backoff); new or
        changed ones start afresh (they resolve from the store, so a changed upstream whose
        registration is unaffected does not register again); removed ones are dropped from
        memory only: their credentials stay in the store.
        """
        states: dict[str, UpstreamState] = {}
        fresh: list[str] = []
        for upstream in settings.upstreams:
            old = self._states.get(upstream.name)
            if old is not None and old.config == upstream:
                states[upstream.name] = old
            else:
                states[upstream.name] = UpstreamState(
                    upstream, last_served=old.last_served if old is not None else None)
                fresh.append(upstream.name)
        self.settings = settings
        self._states = states
        for old_state in self._states.values():
            old_state.wake.set()
        return fresh

    def _dynamic_state(self, name: str, action: str) -> UpstreamState:
        """The state of a dynamic upstream; admin actions on a static client are a conflict."""
        state = self._state(name)
        if state.config.strategy == "static":
            raise errors.Conflict(f"upstream {name!r} uses a static client; nothing to {action}")
        return state

    async def rotate(self, name: str) -> Credentials:
        """Register a new client generation now, superseding the current one (admin API); for a
        CIMD client, start a key rotation instead (design.md §3.11)."""
        state = self._dynamic_state(name, "rotate")
        if state.mechanism == "cimd" or state.config.registration == "cimd":
            return await self._rotate_cimd(state)

        async def work(state: UpstreamState) -> Credentials:
            metadata = await self._fresh_metadata(state)
            key = RecordKey(metadata.issuer, name)
            wanted = self._fingerprint(state.config)
            async with self._locked(state, key):
                record = await self._read(state, key)
                current, record = await self._register(state, metadata, record, wanted)
            audit.info("client_rotated", upstream=name, client_id=current.client_id,
                       generation=current.generation)
            self._adopt(state, metadata, key, record, current)
            assert state.credentials is not None
            return state.credentials

        return await self._shared(state, "credentials", work)

    async def _rotate_cimd(self, state: UpstreamState) -> Credentials:
        config = state.config
        if config.cimd.auth_method != "private_key_jwt":
            raise errors.Conflict(f"upstream {config.name!r} is a public CIMD client: it has "
                                  "no keys to rotate")
        await self.cimd_keys.rotate(config.name, config.cimd.overlap)
        return await self._shared(state, "credentials", self._resolve)

    async def delete_registration(self, name: str) -> int:
        """RFC 7592 §2.3 DELETE of the current generation, then forget it (admin API).

        Returns the deleted generation's number. The next request registers anew.
        """
        state = self._dynamic_state(name, "delete")
        if state.mechanism == "cimd" or state.config.registration == "cimd":
            raise errors.Conflict(f"upstream {name!r} uses a Client ID Metadata Document: "
                                  "nothing is registered at the AS")

        async def work(state: UpstreamState) -> int:
            metadata = await self._fresh_metadata(state)
            key = RecordKey(metadata.issuer, name)
            async with self._locked(state, key):
                record = await self._read(state, key)
                current = record.current(self._fingerprint(state.config), time.time())
                if current is None:
                    raise errors.Conflict(f"upstream {name!r} has no registered client to "
                                          "delete")
                await self._delete_generation(state, record, current, "admin request")
            state.credentials = state.current = None
            return current.generation

        return await self._shared(state, "delete", work)

    def _write_client_id_file(self, state: UpstreamState, client_id: str) -> None:
        """Write the file in a thread, never on the event loop (write_atomic fsyncs the file and
        its directory); one upstream's writes run in order."""
        config = state.config
        if not config.client_id_file:
            return
        before = state.client_id_file_write

        async def write() -> None:
            if before is not None:
                await before
            await asyncio.to_thread(_write_client_id_file, config, client_id)

        state.client_id_file_write = asyncio.get_running_loop().create_task(write())


def _write_client_id_file(config: Upstream, client_id: str) -> None:
    assert config.client_id_file is not None
    try:
        write_atomic(Path(config.client_id_file), client_id + "\n", mode=0o644)
    except OSError as exc:
        log.error("client_id_file_failed", upstream=config.name, path=config.client_id_file,
                  detail=exc.strerror)
        return
    log.info("client_id_file_written", upstream=config.name, path=config.client_id_file,
             client_id=client_id)


def _expired(creds: Credentials) -> bool:
    return creds.expires_at != 0 and creds.expires_at <= time.time()


def _extended(gen: Generation, margin: float) -> bool:
    """The expiry now lies beyond now + margin (or the secret never expires)."""
    return gen.client_secret_expires_at == 0 or gen.client_secret_expires_at > time.time() + margin


def _credentials(config: Upstream, metadata: Metadata, gen: Generation) -> Credentials:
    remember_secret(gen.client_secret)
    return Credentials(
        upstream=config.name, metadata=metadata, client_id=gen.client_id,
        method=gen.token_endpoint_auth_method, generation=gen.generation,
        expires_at=gen.client_secret_expires_at, static=False,
        auth=client_credentials(gen, config, metadata))


def _wall(monotonic_deadline: float) -> float | None:
    """A monotonic deadline as wall clock; None when it has passed (or was never set)."""
    remaining = monotonic_deadline - time.monotonic()
    return time.time() + remaining if remaining > 0 else None
