"""The stored shape of credentials: records of client generations, and their one serializer.

Every backend (file, redis) stores what :func:`record_to_json` makes and reads it back with
:func:`record_from_json`; nothing else knows the format.

Invariants:
- Each record carries its own schema version, independent of the program's version, so an
  upgrade or a rollback reads what the other version wrote. Schema 1 is plaintext; schema 2
  adds sealed (encrypted) secret fields. A record is written with the lowest schema that
  describes it, so a store without encryption stays readable by versions that know only 1.
  A record of a newer schema than this version knows is refused, never guessed at.
- With ``store.encryption_keys`` (design.md §3.9) every secret field of a generation is sealed
  with Fernet under the newest key on every write (``{"fernet": token}``); older keys only
  decrypt. A plaintext secret is still read (encryption switched on for an existing store)
  and is sealed when its record is next written.
- A value that will not decrypt, or text that is not UTF-8, makes the whole record unreadable
  (:class:`StoreCorrupt`): the resolver then fails typed and never overwrites it.
- The key check is a Fernet token of a fixed text under the newest key, stored once per store:
  a key set that cannot open it is a startup error (:class:`KeyMismatch`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.store.errors import KeyMismatch, StoreCorrupt

SCHEMA = 2  # the newest record schema this version reads and writes
PLAIN_SCHEMA = 1  # no sealed fields: what versions before encryption read


@dataclass(frozen=True)
class RecordKey:
    issuer: str
    upstream: str

    def __str__(self) -> str:
        return f"{self.upstream}@{self.issuer}"


@dataclass(frozen=True)
class Generation:
    """One registered client. `generation` counts up per record."""

    generation: int
    fingerprint: str
    client_id: str
    client_secret: Secret | None
    token_endpoint_auth_method: str
    client_secret_expires_at: int = 0
    client_id_issued_at: int | None = None
    registration_access_token: Secret | None = None
    registration_client_uri: str | None = None
    registration_endpoint: str | None = None
    received_at: float = 0.0
    superseded_at: float | None = None
    # private_key_jwt: the upstream's key pair as a private JWK (JSON text), kept with the
    # credentials so a restart signs with the registered key.
    private_key: Secret | None = None
    # Has a request been served with it (the AS accepted it, or its client_id went to an app)?
    # A superseded generation that never served is deleted at once, not kept for the grace.
    # Records written before this field existed read as served: kept, as they always were.
    served: bool = True
    # CIMD key sets (design.md §3.11) store each key as a generation of their own record; these
    # place it in the rotation schedule (oauth.cimd.ScheduledKey). None elsewhere.
    signs_from: float | None = None
    retires_at: float | None = None

    def expired(self, now: float) -> bool:
        return self.client_secret_expires_at != 0 and self.client_secret_expires_at <= now

    def __repr__(self) -> str:
        return (f"Generation({self.generation}, client_id={self.client_id!r}, "
                f"method={self.token_endpoint_auth_method})")


@dataclass(frozen=True)
class Record:
    key: RecordKey
    generations: tuple[Generation, ...] = field(default_factory=tuple)
    # The highest generation number the record ever held, kept when that generation is
    # deleted (admin DELETE), so a number never names two clients.
    last_generation: int = 0

    @property
    def high_water(self) -> int:
        return max(self.last_generation, max((g.generation for g in self.generations), default=0))

    def current(self, fingerprint: str, now: float) -> Generation | None:
        """The newest live, unexpired generation produced by this configuration."""
        for gen in sorted(self.generations, key=lambda g: g.generation, reverse=True):
            if gen.fingerprint == fingerprint and gen.superseded_at is None and not gen.expired(
                    now):
                return gen
        return None

    def get(self, number: int) -> Generation | None:
        return next((g for g in self.generations if g.generation == number), None)

    def previous(self, current: Generation | None, grace: float, now: float) -> Generation | None:
        """The newest superseded generation still within its grace period (design.md §3.4)."""
        candidates = [
            g for g in self.generations
            if g.superseded_at is not None and g.superseded_at + grace > now
            and not g.expired(now) and (current is None or g.client_id != current.client_id)
        ]
        return max(candidates, key=lambda g: g.generation, default=None)

    def due_for_deletion(self, grace: float, now: float) -> list[Generation]:
        return [g for g in self.generations
                if g.superseded_at is not None and g.superseded_at + grace <= now]

    def replace(self, updated: Generation) -> Record:
        """The same generation with new values (a renewed secret, a new RAT)."""
        return replace(self, generations=tuple(
            updated if g.generation == updated.generation else g for g in self.generations))

    def without(self, number: int) -> Record:
        return replace(self, generations=tuple(g for g in self.generations
                                               if g.generation != number),
                       last_generation=self.high_water)

    def next_number(self) -> int:
        """Never a number the record held before, even one since deleted."""
        return self.high_water + 1

    def with_generation(self, new: Generation, now: float) -> Record:
        """Append `new`; every other live generation of the same fingerprint is superseded."""
        kept = tuple(
            replace(g, superseded_at=now) if g.superseded_at is None else g
            for g in self.generations
        )
        return Record(self.key, (*kept, new), max(self.high_water, new.generation))


# ---------------------------------------------------------------------------- serializer

_SECRET_FIELDS = ("client_secret", "registration_access_token", "private_key")
_KEY_CHECK_TEXT = b"dcr-sidecar key check"
KeyCheckState = Literal["current", "older_key", "absent"]


class Sealer:
    """Seals secret fields at rest with Fernet (AES-128-CBC + HMAC-SHA256), newest key first.

    Without keys it is the identity: values are stored as plain strings.
    """

    def __init__(self, keys: Sequence[Secret] = ()) -> None:
        fernets = [Fernet(key.reveal().encode()) for key in keys]
        self._newest = fernets[0] if fernets else None
        self._all = MultiFernet(fernets) if fernets else None

    @property
    def enabled(self) -> bool:
        return self._all is not None

    def seal(self, plaintext: str) -> str | dict[str, str]:
        if self._newest is None:
            return plaintext
        return {"fernet": self._newest.encrypt(plaintext.encode()).decode("ascii")}

    def unseal(self, stored: object, what: str) -> str:
        if isinstance(stored, str):
            return stored
        token = stored.get("fernet") if isinstance(stored, Mapping) else None
        if not isinstance(token, str):
            raise StoreCorrupt(f"{what} has an unknown stored form")
        if self._all is None:
            raise StoreCorrupt(f"{what} is encrypted and store.encryption_keys is empty")
        try:
            return self._all.decrypt(token.encode()).decode()
        except (InvalidToken, UnicodeDecodeError):
            raise StoreCorrupt(f"{what} does not decrypt with any of store.encryption_keys; "
                               "it is left untouched") from None

    def is_current(self, stored: object) -> bool:
        """Stored as this sealer would store it now (sealed under the newest key, or plain)."""
        if self._newest is None:
            return isinstance(stored, str)
        token = stored.get("fernet") if isinstance(stored, Mapping) else None
        if not isinstance(token, str):
            return False
        try:
            self._newest.decrypt(token.encode())
        except InvalidToken:
            return False
        return True

    # -- the key check

    def key_check(self) -> dict[str, Any]:
        assert self._newest is not None
        return {"schema": SCHEMA, "fernet": self._newest.encrypt(_KEY_CHECK_TEXT).decode()}

    def check_keys(self, stored: Mapping[str, Any] | None) -> KeyCheckState:
        """How the configured keys relate to the store's key check; KeyMismatch when they
        cannot open it (or the store is encrypted and no keys are configured)."""
        if stored is None:
            return "absent"
        if self._all is None or self._newest is None:
            raise KeyMismatch("the store is encrypted (it holds a key check) but "
                              "store.encryption_keys is empty; configure the keys it was "
                              "written with")
        token = stored.get("fernet")
        if not isinstance(token, str):
            raise KeyMismatch("the store's key check is not in a known form")
        try:
            self._newest.decrypt(token.encode())
            return "current"
        except InvalidToken:
            pass
        try:
            self._all.decrypt(token.encode())
        except InvalidToken:
            raise KeyMismatch(
                "none of the configured store.encryption_keys opens the store's key check: "
                "they are not the keys the store was encrypted with; nothing was changed"
            ) from None
        return "older_key"


PLAIN = Sealer()


def generation_to_json(gen: Generation, sealer: Sealer = PLAIN) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Generation.__dataclass_fields__:
        value = getattr(gen, name)
        out[name] = sealer.seal(value.reveal()) if isinstance(value, Secret) else value
    return out


def generation_from_json(data: Mapping[str, Any], sealer: Sealer = PLAIN,
                         what: str = "a generation") -> Generation:
    fields = Generation.__dataclass_fields__
    values: dict[str, Any] = {k: data[k] for k in fields if k in data}
    for name in _SECRET_FIELDS:
        if name in fields:
            raw = values.get(name)
            values[name] = None if raw is None else Secret(
                sealer.unseal(raw, f"{what}: {name}"))
    return Generation(**values)


def record_to_json(record: Record, sealer: Sealer = PLAIN) -> dict[str, Any]:
    return {
        "schema": SCHEMA if sealer.enabled else PLAIN_SCHEMA,
        "issuer": record.key.issuer,
        "upstream": record.key.upstream,
        "generations": [generation_to_json(g, sealer) for g in record.generations],
        "last_generation": record.high_water,
    }


def record_from_json(data: Mapping[str, Any], sealer: Sealer = PLAIN) -> Record:
    """The record, or StoreCorrupt naming what could not be read (never a secret)."""
    if _undecodable(data):
        raise StoreCorrupt("a stored record holds bytes that are not UTF-8; it is left "
                           "untouched")
    try:
        schema = data.get("schema", PLAIN_SCHEMA)
        if not isinstance(schema, int) or schema > SCHEMA:
            raise StoreCorrupt(f"a record was written with store schema {schema!r}; this "
                               f"version reads up to {SCHEMA}; it is left untouched")
        key = RecordKey(issuer=str(data["issuer"]), upstream=str(data["upstream"]))
        gens = tuple(generation_from_json(g, sealer, f"record {key} generation "
                                                     f"{g.get('generation')}")
                     for g in data.get("generations", []))
        last = data.get("last_generation", 0)  # absent in records written before it existed
        if isinstance(last, bool) or not isinstance(last, int):
            raise TypeError("last_generation")
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise StoreCorrupt(f"a stored record is malformed ({type(exc).__name__}); "
                           "it is left untouched") from None
    return Record(key, gens, last)


def _undecodable(value: object) -> bool:
    """Text holding lone surrogates: bytes that were not UTF-8 (read with surrogateescape) or
    an escape of half a surrogate pair. Neither is a value any AS sent."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, Mapping):
        return any(_undecodable(k) or _undecodable(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_undecodable(v) for v in value)
    return False


def resealed(data: Mapping[str, Any], sealer: Sealer) -> dict[str, Any] | None:
    """The record re-encoded for `sealer` when any secret is not stored as `sealer` would
    store it now (key rotation, encryption switched on); None when it is current."""
    schema = SCHEMA if sealer.enabled else PLAIN_SCHEMA
    try:
        current = data.get("schema", PLAIN_SCHEMA) == schema and all(
            sealer.is_current(g[name]) for g in data.get("generations", [])
            for name in _SECRET_FIELDS if g.get(name) is not None)
    except (TypeError, AttributeError):
        current = False  # malformed: record_from_json says so
    if current:
        return None
    return record_to_json(record_from_json(data, sealer), sealer)
