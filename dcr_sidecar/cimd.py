"""CIMD key sets and documents (design.md §3.11): what `/{name}/client-metadata.json` and
`/{name}/jwks.json` serve, and the signer a CIMD client authenticates with.

Guarantees:
- The key set of an upstream is one record in the credential store, under the key
  (``KEYS_ISSUER``, name) — independent of the AS, so the document and JWKS are served from the
  store without resolving anything upstream. Private keys are sealed like every stored secret.
- A key is made (or a rotation scheduled) only under the store's lock for that record (file
  lock; Redis lease across a fleet), after re-reading it: replicas sharing a store make one key
  set, and so serve byte-identical JWKS.
- What a replica serves is a record at most ``max_record_age`` seconds old on a shared store.
- Rotation never makes a request fail: the next key is published ``overlap`` seconds before it
  signs, and the old one stays published ``overlap`` seconds after it stops signing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import structlog

from dcr_sidecar import errors
from dcr_sidecar.client_keys import CryptoSigner, generate, load
from dcr_sidecar.clock import Clock, SystemClock
from dcr_sidecar.config import Settings, Upstream
from dcr_sidecar.oauth import cimd
from dcr_sidecar.oauth.cimd import ScheduledKey
from dcr_sidecar.oauth.jose import Signer
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.observability import Redactor
from dcr_sidecar.store import CredentialStore
from dcr_sidecar.store import errors as store_errors
from dcr_sidecar.store.records import Generation, Record, RecordKey

log = structlog.get_logger(__name__)
audit = structlog.get_logger("dcr_sidecar.audit")
KEYS_ISSUER = "urn:dcr-sidecar:cimd-keys"  # never an AS issuer: those are https URLs
KEY_FINGERPRINT = "cimd-key"
_Work = Callable[[Record], Awaitable[Record]]


def keys_record_key(name: str) -> RecordKey:
    return RecordKey(KEYS_ISSUER, name)


def schedule(record: Record) -> list[ScheduledKey]:
    out = []
    for gen in record.generations:
        if gen.private_key is None:
            continue
        key = load(gen.private_key)
        signs_from = gen.signs_from if gen.signs_from is not None else gen.received_at
        out.append(ScheduledKey(gen.generation, key.kid, key.public, gen.received_at,
                                signs_from, gen.retires_at))
    return out


class KeyRingSigner:
    """A :class:`~dcr_sidecar.oauth.jose.Signer` source that picks, per assertion, the key the
    schedule says signs at that moment (``at``); "now" for callers that do not schedule is the
    injected clock's (the resolver's: :mod:`dcr_sidecar.clock`)."""

    def __init__(self, record: Record, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()
        self._keys = schedule(record)
        self._signers = {gen.generation: CryptoSigner(load(gen.private_key))
                         for gen in record.generations if gen.private_key is not None}

    def at(self, now: float) -> Signer:
        key = cimd.signing_key(self._keys, now)
        if key is None:
            raise ValueError("the CIMD key set has no key that signs now")
        return self._signers[key.number]

    # The Signer protocol, for callers that do not schedule: the key signing now.
    @property
    def alg(self) -> str:
        return self.at(self._clock.time()).alg

    @property
    def kid(self) -> str:
        return self.at(self._clock.time()).kid

    def compact_jws(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        return self.at(self._clock.time()).compact_jws(header, claims)

    def __repr__(self) -> str:
        return f"KeyRingSigner(keys={[k.kid for k in self._keys]})"


@dataclass(frozen=True)
class Published:
    """One public answer: exact bytes and their strong ETag."""

    body: bytes
    etag: str


@dataclass
class _Held:
    record: Record
    read_at: float  # monotonic


class CimdKeys:
    """The key sets of every CIMD upstream of one process (see the module docstring)."""

    def __init__(self, store: CredentialStore, max_record_age: float, redactor: Redactor,
                 clock: Clock | None = None) -> None:
        """`max_record_age`: the resolver's bound on a shared store (design.md §3.4);
        `redactor` is told of every private key held."""
        self.store = store
        self.redactor = redactor
        self._max_record_age = max_record_age
        self._clock: Clock = clock or SystemClock()
        self._held: dict[str, _Held] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def held(self, name: str) -> Record | None:
        held = self._held.get(name)
        return held.record if held else None

    def read_age(self, name: str) -> float:
        held = self._held.get(name)
        return float("inf") if held is None else self._clock.monotonic() - held.read_at

    async def record(self, name: str) -> Record:
        """The key set, made now if there is none (under the store lock)."""
        held = self._held.get(name)
        if held is not None and (not self.store.shared or self.read_age(name)
                                 < self._max_record_age) and self._usable(held.record):
            return held.record
        async with self._locks.setdefault(name, asyncio.Lock()):
            record = await self._read(name)
            if not self._usable(record):
                record = await self._change(name, self._ensure_key)
            return record

    async def rotate(self, name: str, overlap: float, *,
                     if_older_than: float | None = None) -> Record:
        """Schedule a rotation now: publish a new key, sign with it after `overlap`, drop the
        old one after another `overlap`. A rotation under way is a Conflict. With
        `if_older_than`, rotate only if the newest key is that old on the fresh read under the
        lock (another replica may have rotated meanwhile)."""
        await self.record(name)

        async def work(record: Record) -> Record:
            now = self._clock.time()
            keys = schedule(record)
            newest = max((k.published_at for k in keys), default=now)
            if if_older_than is not None and now - newest < if_older_than:
                return record
            if cimd.rotating(keys, now):
                until = cimd.next_change(keys, now)
                raise errors.Conflict(f"a key rotation of {name!r} is under way (next step at "
                                      f"{until and round(until)}); rotate again after it ends")
            current = cimd.signing_key(keys, now)
            new = await asyncio.to_thread(generate, cimd.CIMD_ALG)
            # Whole seconds, rounded so that each phase lasts at least `overlap`: assertions
            # pick their key by a whole-second time (see _whole_seconds).
            switch = float(math.ceil(now + overlap))
            retire = switch + math.ceil(overlap)
            kept = tuple(replace(g, retires_at=retire)
                         if current is not None and g.generation == current.number else g
                         for g in record.generations)
            gen = _generation(record.next_number(), new.private_jwk, new.kid,
                              self._whole_seconds(), signs_from=switch)
            audit.info("cimd_key_rotation_started", upstream=name, new_kid=new.kid,
                       old_kid=current.kid if current else None, signs_from=round(switch),
                       old_retires_at=round(retire))
            return replace(record, generations=(*kept, gen))

        async with self._locks.setdefault(name, asyncio.Lock()):
            return await self._change(name, work)

    async def rotate_if_due(self, name: str, every: float, overlap: float) -> bool:
        """`cimd.key_rotation`: rotate when the newest key is `every` seconds old; True when
        the key set changed."""
        record = await self.record(name)
        keys = schedule(record)
        now = self._clock.time()
        newest = max((k.published_at for k in keys), default=now)
        if cimd.rotating(keys, now) or now - newest < every:
            return False
        with contextlib.suppress(errors.Conflict):  # another replica started it meanwhile
            after = await self.rotate(name, overlap, if_older_than=every)
            return after.high_water != record.high_water  # the key set changed: re-adopt it
        return False

    def _usable(self, record: Record) -> bool:
        return cimd.signing_key(schedule(record), self._clock.time()) is not None

    async def _ensure_key(self, record: Record) -> Record:
        if self._usable(record):
            return record  # another replica made it while we waited for the lock
        key = await asyncio.to_thread(generate, cimd.CIMD_ALG)
        now = self._whole_seconds()
        audit.info("cimd_key_created", upstream=record.key.upstream, kid=key.kid)
        return replace(record, generations=(
            *record.generations,
            _generation(record.next_number(), key.private_jwk, key.kid, now, signs_from=now)))

    async def _change(self, name: str, work: _Work) -> Record:
        key = keys_record_key(name)
        async with self._errors(name, "lease"), self.store.lock(key):
            record = await self._read(name)
            changed = await work(record)
            if changed is not record:
                now = self._clock.time()
                pruned = replace(changed, generations=tuple(
                    g for g in changed.generations if g.retires_at is None or g.retires_at > now),
                    last_generation=changed.high_water)
                async with self._errors(name, "store_write"):
                    await self.store.put(pruned)
                changed = pruned
                self._hold(name, changed)
            return changed

    async def _read(self, name: str) -> Record:
        key = keys_record_key(name)
        async with self._errors(name, "store_read"):
            record = await self.store.get(key) or Record(key)
        self._hold(name, record)
        return record

    def _hold(self, name: str, record: Record) -> None:
        for gen in record.generations:
            self.redactor.remember(gen.private_key)
        self._held[name] = _Held(record, self._clock.monotonic())

    def _whole_seconds(self) -> float:
        """Schedule times are whole seconds: assertions are dated in whole seconds (RFC 7519
        NumericDate as the encoder writes it), so a key made now signs an assertion dated now."""
        return float(int(self._clock.time()))

    @contextlib.asynccontextmanager
    async def _errors(self, name: str, step: errors.Step) -> AsyncIterator[None]:
        with store_errors.map_store_errors(step, upstream=name, about=" for the CIMD keys"):
            yield


def _generation(number: int, private_jwk: Secret, kid: str, now: float, *,
                signs_from: float) -> Generation:
    return Generation(generation=number, fingerprint=KEY_FINGERPRINT, client_id=kid,
                      client_secret=None, token_endpoint_auth_method="private_key_jwt",  # noqa: S106
                      received_at=now, private_key=private_jwk, signs_from=signs_from)


# ---------------------------------------------------------------------------- the documents


def document_of(settings: Settings, upstream: Upstream) -> Published:
    """The CIMD document of `upstream`: everything comes from the configuration."""
    auth = upstream.cimd.auth_method
    doc = cimd.document(
        client_id=settings.cimd_document_url(upstream),
        client_name=f"dcr-sidecar {upstream.name}",
        redirect_uris=settings.registered_redirect_uris(upstream),
        grant_types=upstream.grant_types, response_types=upstream.response_types,
        scopes=upstream.scopes, auth_method=auth,
        jwks_uri=settings.cimd_jwks_url(upstream) if auth == "private_key_jwt" else None,
        extras=upstream.client_metadata)
    body = cimd.render(doc)
    return Published(body, cimd.strong_etag(body))


def jwks_of(record: Record, now: float | None = None) -> Published:
    keys: Sequence[ScheduledKey] = schedule(record)
    body = cimd.render(cimd.jwks(keys, time.time() if now is None else now))
    return Published(body, cimd.strong_etag(body))

