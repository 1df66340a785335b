"""The resolver's machinery: one shared flight per (kind, upstream), failures typed and backed
off, the store read and written under the step it names, and discovery. What the other parts
of the package build on; nothing outside the package uses it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import structlog

from dcr_sidecar import errors
from dcr_sidecar.cimd import CimdKeys
from dcr_sidecar.client_keys import KeySources
from dcr_sidecar.clock import Clock, SystemClock
from dcr_sidecar.config import LiveSettings, Settings, Upstream
from dcr_sidecar.discovery import Discoverer
from dcr_sidecar.metrics import Metrics
from dcr_sidecar.net import Outbound
from dcr_sidecar.oauth.lifetime import renew_at, renewal_margin
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.oauth.registration import fingerprint
from dcr_sidecar.observability import Redactor
from dcr_sidecar.registrar import Registrar, profile_of
from dcr_sidecar.resolver import backoff, migration
from dcr_sidecar.resolver.face import Credentials
from dcr_sidecar.resolver.state import MAX_RECORD_AGE, UpstreamState, _expired
from dcr_sidecar.rfc7592 import Rfc7592
from dcr_sidecar.singleflight import SingleFlight
from dcr_sidecar.store import CredentialStore
from dcr_sidecar.store import errors as store_errors
from dcr_sidecar.store.records import Generation, Record, RecordKey

log = structlog.get_logger("dcr_sidecar.resolver")  # one logger name for the package
audit = structlog.get_logger("dcr_sidecar.audit")
T = TypeVar("T")


class Core:
    """State per upstream, the shared flights, the store, the clock. Everything here is
    private to the package: what is given is given to the constructor, never patched on."""

    def __init__(self, live: LiveSettings, outbound: Outbound, store: CredentialStore, *,
                 redactor: Redactor, metrics: Metrics | None = None, clock: Clock | None = None,
                 max_record_age: float = MAX_RECORD_AGE) -> None:
        """`live` is the process's one settings reference (read, never assigned here);
        `redactor` is told of each generation's secrets, and of each one gone;
        `max_record_age`: on a shared store, the oldest record a replica serves from (seconds;
        design.md §3.4). Tests lower it; the service keeps the default."""
        self._live = live
        settings = live.current
        self._redactor = redactor
        self._metrics = metrics or Metrics(None)
        self._clock: Clock = clock or SystemClock()
        self._store = store
        self._max_record_age = max_record_age
        self._discoverer = Discoverer(outbound)
        self._registrar = Registrar(outbound, redactor)
        self._rfc7592 = Rfc7592(outbound)
        self._cimd_keys = CimdKeys(store, max_record_age, redactor, self._clock)
        self._states = {u.name: UpstreamState(u) for u in settings.upstreams}
        self._flight: SingleFlight[tuple[str, str], object] = SingleFlight()
        self._key_sources: KeySources = {}  # static clients' key and assertion file readers

    @property
    def settings(self) -> Settings:
        return self._live.current

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
                # Shielded: a cancelled resolution (shutdown) leaves the write to finish.
                await asyncio.shield(state.client_id_file_write)
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
        hinted = exc.retry_hint if isinstance(exc, errors.Unavailable) else None
        delay = backoff.after_failure(state.failures, self.settings.backoff, hinted)
        state.backoff_until = self._clock.monotonic() + delay
        if isinstance(exc, errors.Unavailable):
            exc.retry_hint = delay  # the first caller hears the same wait as the others
        state.last_error, state.last_error_step = exc.description, exc.step
        exc.accounted = True
        log.warning("resolution_failed", upstream=state.config.name, step=exc.step,
                    error=exc.error, detail=exc.description, failures=state.failures,
                    backoff_s=round(delay, 3))
        self._metrics.resolution_failed(state.config.name, exc.step)

    def _check_backoff(self, state: UpstreamState) -> None:
        remaining = state.backoff_until - self._clock.monotonic()
        if remaining > 0:
            raise errors.BackingOff(
                f"upstream {state.config.name!r} is backing off after a failure "
                f"({state.last_error_step}: {state.last_error})", step="discover",
                upstream=state.config.name, retry_after=remaining)

    def _stale(self, state: UpstreamState, creds: Credentials) -> bool:
        """Must this request wait for a resolution? Renewal before expiry never makes it wait:
        the maintenance loop renews in the background while the current secret stays valid;
        nor does a shared record older than the bound (:meth:`_aged`): it is re-read behind
        the request (:meth:`_reread_behind`)."""
        keys_stale = (creds.mechanism == "cimd" and self._store.shared
                      and creds.method == "private_key_jwt"
                      and self._cimd_keys.read_age(state.config.name) >= self._max_record_age)
        moved = state.discovery is not None and creds.issuer != state.discovery.metadata.issuer
        return (self._clock.monotonic() >= state.metadata_expires
                or _expired(creds, self._clock.time()) or keys_stale or moved)

    def _aged(self, state: UpstreamState) -> bool:
        """The held shared record is older than the staleness bound (design.md §3.4)."""
        return self._record_age(state) >= self._max_record_age

    def _reread_behind(self, state: UpstreamState,
                       work: Callable[[UpstreamState], Awaitable[object]]) -> None:
        """Start `work` (the re-read) in the background, shared with the maintenance loop's
        (one flight), unless one is running or the upstream is backing off. The request that
        found the record old goes on with the credentials held, which are still valid: a
        store failing over (a re-read retried up to `store.lease.wait`) never stalls it. A
        failure is accounted (logged, backed off) by the flight; nobody awaits it."""
        running = state.reread
        if running is not None and not running.done():
            return
        if self._clock.monotonic() < state.backoff_until:
            return

        async def reread() -> None:
            with contextlib.suppress(errors.SidecarError):
                await self._shared(state, "credentials", work)

        state.reread = asyncio.get_running_loop().create_task(reread())

    def _record_age(self, state: UpstreamState) -> float:
        """Seconds since the held record was read; 0 for stores no other process writes to
        behind the lock (file, memory): what this process holds is what they hold."""
        if not self._store.shared or state.current is None:
            return 0.0
        return self._clock.monotonic() - state.record_read_at

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
        return self._clock.monotonic() - state.last_renewal >= margin  # one renewal per margin

    @contextlib.asynccontextmanager
    async def _store_errors(self, state: UpstreamState,
                            step: errors.Step) -> AsyncIterator[None]:
        state.step = step
        with store_errors.map_store_errors(step, upstream=state.config.name,
                                           count=self._metrics.store_error):
            yield

    async def _read(self, state: UpstreamState, key: RecordKey) -> Record:
        async with self._store_errors(state, "store_read"):
            return await self._store.get(key) or Record(key)

    async def _write(self, state: UpstreamState, record: Record) -> None:
        async with self._store_errors(state, "store_write"):
            await self._store.put(record)

    @contextlib.asynccontextmanager
    async def _locked(self, state: UpstreamState, key: RecordKey) -> AsyncIterator[None]:
        async with self._store_errors(state, "lease"), self._store.lock(key):
            yield

    async def _metadata(self, state: UpstreamState) -> Metadata:
        state.step = "discover"
        try:
            result = await self._discoverer.discover(
                state.config, need_registration=state.config.strategy == "dcr")
        except errors.UpstreamError:
            if state.discovery is None:
                raise
            # A failed refresh keeps serving the stale document (design.md §2.2 discovery).
            state.metadata_expires = self._clock.monotonic() + self.settings.discovery.min_ttl
            log.warning("metadata_refresh_failed", upstream=state.config.name)
            self._metrics.discovery(state.config.name, "failure")
            return state.discovery.metadata
        previous, state.discovery = state.discovery, result
        state.metadata_expires = self._clock.monotonic() + result.ttl
        # may keep `previous` (a static client's AS)
        migration.discovered(state, previous, self._clock)
        state.stats["discoveries"] += 1
        log.info("metadata_discovered", upstream=state.config.name, issuer=result.metadata.issuer,
                 url=result.source_url or "(endpoints from config)")
        self._metrics.discovery(state.config.name, "success")
        return state.discovery.metadata

    async def _fresh_metadata(self, state: UpstreamState) -> Metadata:
        if state.discovery is None or self._clock.monotonic() >= state.metadata_expires:
            return await self._shared(state, "metadata", self._metadata)
        return state.discovery.metadata

    def _state(self, name: str) -> UpstreamState:
        state = self._states.get(name)
        if state is None:
            raise errors.NotFound(f"no upstream named {name!r} is configured")
        return state

    def _wall(self, monotonic_deadline: float) -> float | None:
        """A monotonic deadline as wall clock; None when it has passed (or was never set)."""
        remaining = monotonic_deadline - self._clock.monotonic()
        return self._clock.time() + remaining if remaining > 0 else None
