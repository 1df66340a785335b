"""Client generations (design.md §3.4, §3.5, §3.11): choose the mechanism, adopt what the store
holds, register, renew (RFC 7592), delete (recovery after invalid_client: :mod:`.recovery`).
Every change happens under the store's per-key lock, after a fresh read."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import structlog

from dcr_sidecar import errors
from dcr_sidecar.cimd import KeyRingSigner
from dcr_sidecar.client_keys import registration_key, static_credentials
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth import cimd as cimd_rules
from dcr_sidecar.oauth.client_auth import ClientCredentials
from dcr_sidecar.oauth.lifetime import management_fields, renewal_margin
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.resolver.core import Core
from dcr_sidecar.resolver.face import Credentials
from dcr_sidecar.resolver.state import (
    UpstreamState,
    _credentials,
    _extended,
    write_client_id_file,
)
from dcr_sidecar.rfc7592 import Rfc7592
from dcr_sidecar.store.records import Generation, Record, RecordKey

log = structlog.get_logger("dcr_sidecar.resolver")  # one logger name for the package
audit = structlog.get_logger("dcr_sidecar.audit")


def _lapsed(record: Record, wanted: str, now: float) -> Generation | None:
    """The newest live generation of this configuration when its secret has expired and the
    AS gave RFC 7592 management for it: renewable before anything is registered."""
    for gen in sorted(record.generations, key=lambda g: g.generation, reverse=True):
        if gen.fingerprint == wanted and gen.superseded_at is None:
            return gen if gen.expired(now) and Rfc7592.manageable(gen) else None
    return None


class Generations(Core):
    """Obtaining and changing credentials (see the package docstring)."""

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
            record = await self._cimd_keys.record(config.name)
            signer = KeyRingSigner(record, self._clock)
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
        self._redactor.remember(config.client_secret)
        method = config.static_auth_method
        creds = Credentials(
            upstream=config.name, metadata=metadata, client_id=config.client_id, method=method,
            generation=0, expires_at=0, static=True, mechanism="static",
            auth=static_credentials(config, metadata, self._key_sources, self._redactor))
        self._switch(state, creds)

    async def _dynamic(self, state: UpstreamState, metadata: Metadata) -> None:
        config = state.config
        key = RecordKey(metadata.issuer, config.name)
        wanted = self._fingerprint(config)
        record = await self._read(state, key)  # serving needs no lock: only changes do
        current = record.current(wanted, self._clock.time())
        if current is None or self._renewal_due(state, current, self._clock.time()):
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
            now = self._clock.time()
            current = record.current(wanted, now)
            if current is not None and self._renewal_due(state, current, now):
                current, record = await self._renew(state, record, current)
            elif current is None and (lapsed := _lapsed(record, wanted, now)) is not None:
                # Its secret expired (an AS outage outlasted the renewal margin): RFC 7592
                # renews an expired secret too (§2.1, §2.2); only a client the AS says is
                # gone, or one it gives no management for, is registered anew.
                current, record = await self._renew(state, record, lapsed)
            if current is None:
                current, record = await self._register(state, metadata, record, wanted)
        return record, current

    async def _winner(self, state: UpstreamState, metadata: Metadata, key: RecordKey,
                      wanted: str, lost: errors.LeaseLost) -> tuple[Record, Generation]:
        """Our lease ran out mid-change (a pause, a failover) and another replica took over:
        its record wins. Adopt it; if it has not written yet, wait for its lease once."""
        log.warning("lease_lost", upstream=state.config.name, detail=lost.description)
        record = await self._read(state, key)
        current = record.current(wanted, self._clock.time())
        if current is None:
            return await self._change(state, metadata, key, wanted)
        return record, current

    def _adopt(self, state: UpstreamState, metadata: Metadata, key: RecordKey, record: Record,
               current: Generation) -> None:
        now = self._clock.time()
        # What the record holds may be logged or sent; what it no longer holds is gone.
        self._redactor.retain_generations(state.config.name,
                                          [gen.generation for gen in record.generations])
        for gen in record.generations:
            self._redactor.remember_generation(state.config.name, gen)
        previous = record.previous(current, state.config.generation_grace, now)
        state.key, state.current = key, current
        state.record_read_at = self._clock.monotonic()
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
            self._metrics.client_id_seen(creds.upstream, old, creds)
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
        registration = await self._registrar.register(
            config, metadata, signing_key.binding() if signing_key else None)
        client = registration.client
        now = self._clock.time()
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
        self._redactor.remember_generation(config.name, generation)
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
        self._metrics.registration(config.name, "success")
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
                deleted = await self._rfc7592.delete(state.config, gen)
            except errors.UpstreamError as exc:
                log.warning("orphan_delete_failed", upstream=state.config.name,
                            client_id=gen.client_id, detail=exc.description)
        if deleted:
            state.stats["deletions"] += 1
        audit.warning("orphan_deleted" if deleted else "orphan_left", upstream=state.config.name,
                      client_id=gen.client_id, cause_step=cause.step, cause=cause.description,
                      manageable=Rfc7592.manageable(gen))

    async def _renew(self, state: UpstreamState, record: Record,
                     gen: Generation) -> tuple[Generation | None, Record]:
        """RFC 7592 GET, then PUT when needed. None: register a new generation."""
        state.last_renewal = self._clock.monotonic()
        state.step = "renew"
        config = state.config
        if not Rfc7592.manageable(gen):
            log.info("renewal_needs_new_generation", upstream=config.name,
                     client_id=gen.client_id, reason="no registration access token")
            return None, record
        margin = renewal_margin(gen.client_secret_expires_at, gen.received_at)
        try:
            answer = await self._rfc7592.read(config, gen)
            if answer.document is not None:
                gen, record = await self._apply_management(state, record, gen, answer.document)
                if _extended(gen, margin, self._clock.time()):
                    return self._renewed(state, gen, "read"), record
                answer = await self._rfc7592.update(config, gen, answer.document)
                if answer.document is not None:
                    gen, record = await self._apply_management(state, record, gen,
                                                               answer.document)
                    if _extended(gen, margin, self._clock.time()):
                        return self._renewed(state, gen, "update"), record
        except errors.UpstreamError as exc:
            if gen.expired(self._clock.time()) or isinstance(exc, errors.LeaseLost):
                raise  # a lost lease: the replica that took over decides (see _winner)
            log.warning("renewal_failed", upstream=config.name, client_id=gen.client_id,
                        detail=exc.description, keeping_until=gen.client_secret_expires_at)
            self._metrics.renewal(config.name, "failure")
            return gen, record
        reason = ("gone" if answer.gone else "management forbidden" if answer.forbidden
                  else "expiry unchanged")
        log.info("renewal_needs_new_generation", upstream=config.name, client_id=gen.client_id,
                 reason=reason)
        return None, record

    def _renewed(self, state: UpstreamState, gen: Generation, via: str) -> Generation:
        state.stats["renewals"] += 1
        self._metrics.renewal(state.config.name, "success")
        audit.info("client_renewed", upstream=state.config.name, client_id=gen.client_id,
                   generation=gen.generation, via=via, expires_at=gen.client_secret_expires_at)
        return gen

    async def _apply_management(self, state: UpstreamState, record: Record, gen: Generation,
                                document: dict[str, object]) -> tuple[Generation, Record]:
        """RFC 7592 §2.1: a new secret or registration access token replaces the old at once;
        a moved expiry is adopted, the lifetime measured from now."""
        secret, token, expires = management_fields(document)
        now = self._clock.time()
        changes: dict[str, object] = {}
        if secret and (gen.client_secret is None or secret != gen.client_secret.reveal()):
            changes["client_secret"] = Secret(secret)
            self._redactor.remember(secret, (state.config.name, gen.generation))
        if token and (gen.registration_access_token is None
                      or token != gen.registration_access_token.reveal()):
            changes["registration_access_token"] = Secret(token)
            self._redactor.remember(token, (state.config.name, gen.generation))
        if expires is not None and expires != gen.client_secret_expires_at:
            changes["client_secret_expires_at"] = expires
            changes["received_at"] = now
        if not changes:
            return gen, record
        updated = replace(gen, **changes)  # type: ignore[arg-type]
        record = record.replace(updated)
        await self._write(state, record)
        return updated, record

    async def _delete_generation(self, state: UpstreamState, record: Record, gen: Generation,
                                 why: str) -> Record:
        deleted = False
        if Rfc7592.manageable(gen):
            state.step = "renew"
            deleted = await self._rfc7592.delete(state.config, gen)
        record = record.without(gen.generation)
        await self._write(state, record)
        self._redactor.forget_generation(state.config.name, gen.generation)
        state.stats["deletions"] += 1
        audit.info("client_deleted" if deleted else "client_forgotten",
                   upstream=state.config.name, client_id=gen.client_id,
                   generation=gen.generation, reason=why)
        return record

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
            await asyncio.to_thread(write_client_id_file, config, client_id)

        state.client_id_file_write = asyncio.get_running_loop().create_task(write())
