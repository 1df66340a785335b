"""The resolver's mutable state per upstream. Private to the package: others read
:class:`.face.Snapshot` (the clock it reads is :mod:`dcr_sidecar.clock`, injected)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from dcr_sidecar import errors, files
from dcr_sidecar.client_keys import client_credentials
from dcr_sidecar.config import Upstream
from dcr_sidecar.discovery import DiscoveryResult
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.resolver import migration
from dcr_sidecar.resolver.face import Credentials
from dcr_sidecar.store.records import Generation, RecordKey

log = structlog.get_logger("dcr_sidecar.resolver")
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
    reread: asyncio.Task[None] | None = None  # a re-read started behind a request (core)
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


def _expired(creds: Credentials, now: float) -> bool:
    return creds.expires_at != 0 and creds.expires_at <= now


def _extended(gen: Generation, margin: float, now: float) -> bool:
    """The expiry now lies beyond now + margin (or the secret never expires)."""
    return gen.client_secret_expires_at == 0 or gen.client_secret_expires_at > now + margin


def _credentials(config: Upstream, metadata: Metadata, gen: Generation) -> Credentials:
    return Credentials(
        upstream=config.name, metadata=metadata, client_id=gen.client_id,
        method=gen.token_endpoint_auth_method, generation=gen.generation,
        expires_at=gen.client_secret_expires_at, static=False,
        auth=client_credentials(gen, config, metadata))


def write_client_id_file(config: Upstream, client_id: str) -> None:
    assert config.client_id_file is not None
    try:
        files.write_atomic(Path(config.client_id_file), client_id + "\n", mode=0o644)
    except OSError as exc:
        log.error("client_id_file_failed", upstream=config.name, path=config.client_id_file,
                  detail=exc.strerror)
        return
    log.info("client_id_file_written", upstream=config.name, path=config.client_id_file,
             client_id=client_id)
