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
  ``max_record_age`` seconds old (30): the maintenance loop re-reads it before that; a request
  finding it older starts the re-read (one at a time) and is served the held, still-valid
  credentials meanwhile, so a store failing over never stalls a request. So a renewal,
  rotation or new generation written by one replica is served by the others within the bound.
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

The package, by job: :mod:`.face` (what others read: :class:`Credentials`, the frozen
:class:`Snapshot`, :class:`StoreHealth`), :mod:`.state` (the mutable state per upstream;
private to the package), :mod:`.backoff` (the waiting schedule, pure), :mod:`.core` (shared
flights, typed failures, store I/O, discovery), :mod:`.generations` (register, renew, delete),
:mod:`.recovery` (after invalid_client), :mod:`.maintenance` (renewal timers, re-reads, grace
deletion), :mod:`.migration` (a resource moving to another AS); this module: the verbs.
Everything it uses is given to the constructor (the clock: :mod:`dcr_sidecar.clock`).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import MappingProxyType

import structlog

from dcr_sidecar import errors
from dcr_sidecar.cimd import Published, jwks_of, schedule
from dcr_sidecar.config import Settings
from dcr_sidecar.oauth.cimd import ScheduledKey
from dcr_sidecar.oauth.lifetime import renew_at
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.resolver import migration
from dcr_sidecar.resolver.face import Credentials, Snapshot, StoreHealth
from dcr_sidecar.resolver.maintenance import Maintenance
from dcr_sidecar.resolver.state import MAX_RECORD_AGE, UpstreamState, _credentials, _expired
from dcr_sidecar.store.records import RecordKey

__all__ = ["MAX_RECORD_AGE", "Credentials", "Resolver", "Snapshot", "StoreHealth"]

log = structlog.get_logger("dcr_sidecar.resolver")  # one logger name for the package
audit = structlog.get_logger("dcr_sidecar.audit")


class Resolver(Maintenance):
    """At most one registration per key per process; across processes, one per file lock or
    Redis lease (see the module docstring for every guarantee)."""

    def names(self) -> list[str]:
        return list(self._states)

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
            metadata_expires_at=self._wall(state.metadata_expires) if found else None,
            resource=found.resource if found else None,
            authorization_server_changes=tuple(state.watch.changes),
            mechanism=state.mechanism, mechanism_reason=state.mechanism_reason,
            credentials=state.credentials, record_key=state.key,
            registered_at=gen.received_at if gen else None,
            renew_at=float(due) if due else None,
            previous_until=(state.previous_until
                            if state.previous is not None and state.previous_until else None),
            record_age=self._record_age(state),
            failures=state.failures, backoff_until=self._wall(state.backoff_until),
            last_error=state.last_error, last_error_step=state.last_error_step,
            recover_until=self._wall(state.recover_until),
            recoveries_unserved=state.recoveries_unserved,
            invalid_client=state.invalid_client,
            stats=MappingProxyType(dict(state.stats)))

    async def generation(self, name: str, number: int) -> Credentials | None:
        """The credentials of client generation `number` as the store holds it now, while it
        may still be used: the current one, or a superseded one within `generation_grace`
        whose secret has not expired (design.md §3.4: a mediated flow finishes with the client
        it started with). None when it is gone, or nothing dynamic is held. A store failure is
        a typed 503 naming `store_read`."""
        state = self._state(name)
        held = state.credentials
        if held is None or held.static or state.key is None:
            return None
        if held.generation == number:
            return held
        gen = (await self._read(state, state.key)).get(number)
        now = self._clock.time()
        if gen is None or gen.expired(now) or (
                gen.superseded_at is not None
                and gen.superseded_at + state.config.generation_grace <= now):
            return None
        self._redactor.remember_generation(name, gen)  # it may be sent, so logged masked
        return _credentials(state.config, held.metadata, gen)

    def previous(self, name: str) -> Credentials | None:
        """The superseded generation still within its grace, as held in memory (no I/O): what
        the invalid_grant retry of a code or refresh grant sends with (design.md §3.4)."""
        state = self._state(name)
        if state.previous is not None and self._clock.time() < state.previous_until:
            return state.previous
        return None

    async def check_store(self) -> StoreHealth:
        """The credential store as /readyz reports it (its backend, trouble now or None)."""
        return StoreHealth(self._store.name, await self._store.check())

    def cimd_keys(self, name: str) -> tuple[ScheduledKey, ...] | None:
        """The CIMD key set held for `name` (public parts and schedule; no I/O), None when none
        was read yet."""
        record = self._cimd_keys.held(name)
        return tuple(schedule(record)) if record is not None else None

    async def cimd_jwks(self, name: str) -> Published:
        """The JWKS `/{name}/jwks.json` serves: the key set, made now under the store's lock if
        there is none (design.md §3.11). A store failure is a typed 503."""
        record = await self._cimd_keys.record(name)
        return jwks_of(record, self._clock.time())

    def forget(self, name: str) -> None:
        """Drop the credentials held in memory (the store keeps them): the next request
        resolves again, from the store first."""
        self._state(name).credentials = None

    async def wait_backoff(self, name: str) -> None:
        """Return when the upstream's backoff ends (at once when it is not backing off)."""
        state = self._state(name)
        await self._clock.sleep(max(0.05, state.backoff_until - self._clock.monotonic()))

    def cached(self, name: str) -> Credentials | None:
        state = self._states.get(name)
        return state.credentials if state else None

    async def metadata(self, name: str) -> Metadata:
        state = self._state(name)
        if state.discovery is not None and self._clock.monotonic() < state.metadata_expires:
            return state.discovery.metadata
        if state.discovery is None:
            self._check_backoff(state)
        return await self._shared(state, "metadata", self._metadata)

    async def credentials(self, name: str) -> Credentials:
        state = self._state(name)
        creds = state.credentials
        if creds is not None and not self._stale(state, creds):
            if self._aged(state):  # shared record past the bound: re-read, serve held
                self._reread_behind(state, self._resolve)
            return creds
        if creds is not None and self._clock.monotonic() < state.backoff_until \
                and not _expired(creds, self._clock.time()):
            return creds  # renewal or refresh is failing; what we hold is still valid
        self._check_backoff(state)
        try:
            return await self._shared(state, "credentials", self._resolve)
        except errors.UpstreamError:
            held = state.credentials
            if held is not None and not _expired(held, self._clock.time()):
                return held  # a re-read or refresh failed (logged, backing off): still valid
            raise

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
            self._metrics.cimd_invalid_client(name)
            log.warning("cimd_invalid_client", upstream=name, client_id=failed.client_id)
            return None
        held = state.credentials
        if held is not None and held.generation != failed.generation:
            return held  # already recovered (by another request or another process)
        if self._clock.monotonic() < state.recover_until:
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

    async def recheck_resource(self, name: str) -> bool:
        """An authorization start: has the resource moved to another AS? True when it has, and
        the credentials held were dropped (:mod:`.migration`)."""
        return await migration.recheck(self, self._state(name))

    async def close(self) -> None:
        await self._flight.cancel_all()
        for state in self._states.values():
            if state.reread is not None:
                state.reread.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await state.reread
            await state.watch.flight.cancel_all()
            if state.client_id_file_write is not None:
                # A write in progress finishes; its failure was the resolution's to report.
                await asyncio.gather(state.client_id_file_write, return_exceptions=True)

    def reload(self, settings: Settings) -> list[str]:
        """Apply a reloaded configuration (design.md §3.10), about to be put in force (the
        caller swaps the settings reference right after); returns the upstreams whose state is
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
        await self._cimd_keys.rotate(config.name, config.cimd.overlap)
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
                current = record.current(self._fingerprint(state.config), self._clock.time())
                if current is None:
                    raise errors.Conflict(f"upstream {name!r} has no registered client to "
                                          "delete")
                await self._delete_generation(state, record, current, "admin request")
            state.credentials = state.current = None
            return current.generation

        return await self._shared(state, "delete", work)
