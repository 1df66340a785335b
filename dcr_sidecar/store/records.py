"""The stored shape of credentials: records of client generations, and their one serializer.

The format carries its own schema version (``SCHEMA``), independent of the program's version,
so an upgrade or a rollback reads what the previous version wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dcr_sidecar.oauth.secret import Secret

SCHEMA = 1


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

    def expired(self, now: float) -> bool:
        return self.client_secret_expires_at != 0 and self.client_secret_expires_at <= now

    def __repr__(self) -> str:
        return (f"Generation({self.generation}, client_id={self.client_id!r}, "
                f"method={self.token_endpoint_auth_method})")


@dataclass(frozen=True)
class Record:
    key: RecordKey
    generations: tuple[Generation, ...] = field(default_factory=tuple)

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
        """The newest superseded generation still within its grace period (DESIGN §3.4)."""
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
        return Record(self.key, tuple(updated if g.generation == updated.generation else g
                                      for g in self.generations))

    def without(self, number: int) -> Record:
        return Record(self.key, tuple(g for g in self.generations if g.generation != number))

    def next_number(self) -> int:
        return max((g.generation for g in self.generations), default=0) + 1

    def with_generation(self, new: Generation, now: float) -> Record:
        """Append `new`; every other live generation of the same fingerprint is superseded."""
        kept = tuple(
            replace(g, superseded_at=now) if g.superseded_at is None else g
            for g in self.generations
        )
        return Record(self.key, (*kept, new))


# ---------------------------------------------------------------------------- serializer

_SECRET_FIELDS = ("client_secret", "registration_access_token", "private_key")


def generation_to_json(gen: Generation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in Generation.__dataclass_fields__:
        value = getattr(gen, name)
        out[name] = value.reveal() if isinstance(value, Secret) else value
    return out


def generation_from_json(data: Mapping[str, Any]) -> Generation:
    values: dict[str, Any] = {k: data[k] for k in Generation.__dataclass_fields__ if k in data}
    for name in _SECRET_FIELDS:
        raw = values.get(name)
        values[name] = Secret(raw) if isinstance(raw, str) else None
    return Generation(**values)


def record_to_json(record: Record) -> dict[str, Any]:
    return {
        "issuer": record.key.issuer,
        "upstream": record.key.upstream,
        "generations": [generation_to_json(g) for g in record.generations],
    }


def record_from_json(data: Mapping[str, Any]) -> Record:
    key = RecordKey(issuer=str(data["issuer"]), upstream=str(data["upstream"]))
    gens = tuple(generation_from_json(g) for g in data.get("generations", []))
    return Record(key, gens)
