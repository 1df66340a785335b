"""The stateful resolver: per upstream, metadata and credentials, obtained once and kept.

Guarantees:
- In one process, at most one resolution per upstream is in flight (:class:`SingleFlight`):
  N concurrent first contacts cause one discovery and one registration, and every waiter gets
  the same result or the same typed error.
- With the file store, the store's per-key lock is held across read-register-write and the
  store is re-read after taking it, so processes sharing the file register at most once per key.
- Credentials are persisted before they are used.
- Every failure is typed and names its step; unexpected exceptions become ``BadUpstream``.
  A failed resolution backs off (full jitter, Retry-After honoured); callers during backoff get
  ``BackingOff`` (503 + Retry-After) at once. One upstream never delays another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import structlog

from dcr_sidecar import errors
from dcr_sidecar.client_keys import client_credentials, registration_key
from dcr_sidecar.config import Settings, Upstream
from dcr_sidecar.discovery import Discoverer, DiscoveryResult
from dcr_sidecar.net import Outbound
from dcr_sidecar.oauth.client_auth import ClientCredentials
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.oauth.registration import fingerprint
from dcr_sidecar.oauth.retry import backoff_delay
from dcr_sidecar.observability import remember_secret
from dcr_sidecar.registrar import Registrar, profile_of
from dcr_sidecar.singleflight import SingleFlight
from dcr_sidecar.store import CredentialStore
from dcr_sidecar.store.records import Generation, Record, RecordKey

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Credentials:
    """What the proxy needs to act as the client: ready-made authentication parts."""

    upstream: str
    metadata: Metadata
    client_id: str
    method: str
    generation: int
    expires_at: int
    static: bool
    auth: ClientCredentials  # encoded per request (oauth.client_auth.auth_parts)

    @property
    def issuer(self) -> str:
        return self.metadata.issuer

    def __repr__(self) -> str:
        return f"Credentials({self.upstream}, client_id={self.client_id!r}, gen={self.generation})"


@dataclass
class UpstreamState:
    config: Upstream
    discovery: DiscoveryResult | None = None
    metadata_expires: float = 0.0
    credentials: Credentials | None = None
    failures: int = 0
    backoff_until: float = 0.0
    last_error: str | None = None
    last_error_step: str | None = None
    step: errors.Step = "discover"
    stats: dict[str, int] = field(default_factory=lambda: {"registrations": 0,
                                                           "discoveries": 0})


class Resolver:
    def __init__(self, settings: Settings, outbound: Outbound, store: CredentialStore) -> None:
        self.settings = settings
        self.outbound = outbound
        self.store = store
        self.discoverer = Discoverer(outbound)
        self.registrar = Registrar(outbound)
        self._states = {u.name: UpstreamState(u) for u in settings.upstreams}
        self._flight: SingleFlight[tuple[str, str], object] = SingleFlight()

    # ------------------------------------------------------------------ public surface

    def names(self) -> list[str]:
        return list(self._states)

    def state(self, name: str) -> UpstreamState:
        state = self._states.get(name)
        if state is None:
            raise errors.NotFound(f"no upstream named {name!r} is configured")
        return state

    def cached(self, name: str) -> Credentials | None:
        state = self._states.get(name)
        return state.credentials if state else None

    async def metadata(self, name: str) -> Metadata:
        state = self.state(name)
        if state.discovery is not None and time.monotonic() < state.metadata_expires:
            return state.discovery.metadata
        if state.discovery is None:
            self._check_backoff(state)
        return await self._shared(state, "metadata", self._metadata)

    async def credentials(self, name: str) -> Credentials:
        state = self.state(name)
        creds = state.credentials
        if creds is not None and not self._stale(state, creds):
            return creds
        self._check_backoff(state)
        return await self._shared(state, "credentials", self._resolve)

    async def close(self) -> None:
        await self._flight.cancel_all()

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
        except errors.UpstreamError as exc:
            # Nested flights (credentials awaiting metadata) see one failure once.
            if not exc.accounted:
                self._failed(state, exc)
            raise
        except Exception as exc:  # parsers and bugs: typed, never a crash (DESIGN §3.7)
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
        state.last_error, state.last_error_step = exc.description, exc.step
        exc.accounted = True
        log.warning("resolution_failed", upstream=state.config.name, step=exc.step,
                    error=exc.error, detail=exc.description, failures=state.failures,
                    backoff_s=round(delay, 3))

    def _check_backoff(self, state: UpstreamState) -> None:
        remaining = state.backoff_until - time.monotonic()
        if remaining > 0:
            raise errors.BackingOff(
                f"upstream {state.config.name!r} is backing off after a failure "
                f"({state.last_error_step}: {state.last_error})", step="discover",
                upstream=state.config.name, retry_after=remaining)

    def _stale(self, state: UpstreamState, creds: Credentials) -> bool:
        if time.monotonic() >= state.metadata_expires:
            return True
        return creds.expires_at != 0 and creds.expires_at <= time.time()

    @contextlib.contextmanager
    def _step(self, state: UpstreamState, step: errors.Step) -> Iterator[None]:
        state.step = step
        yield

    # ------------------------------------------------------------------ discovery

    async def _metadata(self, state: UpstreamState) -> Metadata:
        with self._step(state, "discover"):
            try:
                result = await self.discoverer.discover(
                    state.config, need_registration=state.config.strategy == "dcr")
            except errors.UpstreamError:
                if state.discovery is None:
                    raise
                # A failed refresh keeps serving the stale document (DESIGN §2.2 discovery).
                state.metadata_expires = time.monotonic() + self.settings.discovery.min_ttl
                log.warning("metadata_refresh_failed", upstream=state.config.name)
                return state.discovery.metadata
        state.discovery = result
        state.metadata_expires = time.monotonic() + result.ttl
        state.stats["discoveries"] += 1
        log.info("metadata_discovered", upstream=state.config.name, issuer=result.metadata.issuer,
                 url=result.source_url or "(endpoints from config)")
        return result.metadata

    # ------------------------------------------------------------------ credentials

    async def _resolve(self, state: UpstreamState) -> Credentials:
        metadata = await self._shared(state, "metadata", self._metadata) if (
            state.discovery is None or time.monotonic() >= state.metadata_expires
        ) else state.discovery.metadata
        config = state.config
        if config.strategy == "static":
            creds = self._static(config, metadata)
        else:
            creds = await self._dynamic(state, metadata)
        previous = state.credentials
        state.credentials = creds
        if previous is None or previous.client_id != creds.client_id:
            self._write_client_id_file(config, creds.client_id)
        return creds

    def _static(self, config: Upstream, metadata: Metadata) -> Credentials:
        assert config.client_id is not None
        remember_secret(config.client_secret)
        method = config.static_auth_method
        return Credentials(
            upstream=config.name, metadata=metadata, client_id=config.client_id, method=method,
            generation=0, expires_at=0, static=True,
            auth=ClientCredentials(config.client_id, config.client_secret, method))

    async def _dynamic(self, state: UpstreamState, metadata: Metadata) -> Credentials:
        config = state.config
        key = RecordKey(metadata.issuer, config.name)
        wanted = fingerprint(profile_of(config, self.settings))
        with self._step(state, "lease"):
            lock = self.store.lock(key)
        async with self._store_errors(state, "lease"), lock:
            async with self._store_errors(state, "store_read"):
                record = await self.store.get(key)
            now = time.time()
            current = record.current(wanted, now) if record else None
            if current is None:
                current, record = await self._register(state, metadata, key, record, wanted)
            else:
                log.info("credentials_loaded", upstream=config.name, client_id=current.client_id,
                         generation=current.generation)
        remember_secret(current.client_secret)
        return Credentials(
            upstream=config.name, metadata=metadata, client_id=current.client_id,
            method=current.token_endpoint_auth_method, generation=current.generation,
            expires_at=current.client_secret_expires_at, static=False,
            auth=client_credentials(current, config, metadata))

    async def _register(self, state: UpstreamState, metadata: Metadata, key: RecordKey,
                        record: Record | None, wanted: str) -> tuple[Generation, Record]:
        config = state.config
        with self._step(state, "register"):
            signing_key = await registration_key(config, metadata, record)
            registration = await self.registrar.register(
                config, metadata, signing_key.binding() if signing_key else None)
        client = registration.client
        now = time.time()
        base = record or Record(key)
        generation = Generation(
            generation=base.next_number(), fingerprint=wanted, client_id=client.client_id,
            client_secret=client.client_secret,
            token_endpoint_auth_method=client.token_endpoint_auth_method,
            client_secret_expires_at=client.client_secret_expires_at,
            client_id_issued_at=client.client_id_issued_at,
            registration_access_token=client.registration_access_token,
            registration_client_uri=client.registration_client_uri,
            registration_endpoint=registration.endpoint, received_at=now,
            private_key=signing_key.private_jwk if signing_key else None)
        updated = base.with_generation(generation, now)
        async with self._store_errors(state, "store_write"):
            await self.store.put(updated)
        state.stats["registrations"] += 1
        log.info("client_registered", upstream=config.name, client_id=client.client_id,
                 generation=generation.generation, method=client.token_endpoint_auth_method,
                 expires_at=client.client_secret_expires_at, endpoint=registration.endpoint,
                 endpoint_source=registration.provenance)
        return generation, updated

    @contextlib.asynccontextmanager
    async def _store_errors(self, state: UpstreamState,
                            step: errors.Step) -> AsyncIterator[None]:
        state.step = step
        try:
            yield
        except errors.SidecarError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise errors.StoreUnavailable(
                f"the credential store failed ({step}): {type(exc).__name__}: {exc}",
                step=step, upstream=state.config.name, retry_after=5) from exc

    def _write_client_id_file(self, config: Upstream, client_id: str) -> None:
        if not config.client_id_file:
            return
        try:
            write_atomic(Path(config.client_id_file), client_id + "\n", mode=0o644)
        except OSError as exc:
            log.error("client_id_file_failed", upstream=config.name, path=config.client_id_file,
                      detail=exc.strerror)
            return
        log.info("client_id_file_written", upstream=config.name, path=config.client_id_file,
                 client_id=client_id)


def write_atomic(path: Path, content: str, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def wait_backoff(state: UpstreamState) -> None:
    await asyncio.sleep(max(0.05, state.backoff_until - time.monotonic()))
