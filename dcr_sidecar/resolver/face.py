"""What the rest of the sidecar sees of the resolver: frozen values, never its mutable state.

- :class:`Credentials` is what the proxy acts with (one client generation, ready to send).
- :class:`Snapshot` is one upstream as admin, /readyz, /authorize, doctor, the metrics gauges
  and the /client endpoint read it: copied at the call, so it never changes under the reader.
  Every time in it is wall clock (seconds since the epoch); a deadline already past is None.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dcr_sidecar.config import Upstream
from dcr_sidecar.discovery import ResourceFetch
from dcr_sidecar.oauth.client_auth import ClientCredentials
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.resolver.migration import ServerChange
from dcr_sidecar.store.records import RecordKey


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
    mechanism: str = "dcr"  # static | cimd | dcr (design.md §3.11)

    @property
    def issuer(self) -> str:
        return self.metadata.issuer

    def __repr__(self) -> str:
        return f"Credentials({self.upstream}, client_id={self.client_id!r}, gen={self.generation})"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One upstream as the resolver holds it now (never a secret beyond `credentials`, whose
    repr is masked)."""

    config: Upstream
    # discovery
    metadata: Metadata | None  # None until discovered
    discovered_from: str | None  # the metadata URL; None for endpoints from config
    discovered_at: float | None
    metadata_expires_at: float | None
    resource: ResourceFetch | None  # `resource` sources: the document that named the AS
    authorization_server_changes: tuple[ServerChange, ...]
    # the client
    mechanism: str | None  # static | cimd | dcr, once resolved
    mechanism_reason: str | None
    credentials: Credentials | None
    record_key: RecordKey | None
    registered_at: float | None  # when the current generation was received (dynamic only)
    renew_at: float | None  # when its renewal is due (dynamic only, when its secret expires)
    previous_until: float | None  # the superseded generation's grace ends
    record_age: float  # seconds since the held record was read (0 for unshared stores)
    # trouble
    failures: int
    backoff_until: float | None
    last_error: str | None
    last_error_step: str | None
    recover_until: float | None  # no re-registration on invalid_client before it
    recoveries_unserved: int
    invalid_client: int  # CIMD: invalid_client answers relayed
    stats: Mapping[str, int]  # registrations, discoveries, renewals, recoveries, deletions...

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def discovered(self) -> bool:
        return self.metadata is not None

    @property
    def issuer(self) -> str | None:
        """The AS in use: the discovered one, else the pinned `issuer` (or None)."""
        return self.metadata.issuer if self.metadata is not None else self.config.issuer

    @property
    def backing_off(self) -> bool:
        return self.backoff_until is not None


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """The credential store as /readyz reports it."""

    backend: str  # file | memory | redis
    trouble: str | None  # what is wrong now (never a secret); None: fine
