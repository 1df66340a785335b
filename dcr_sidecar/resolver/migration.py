"""Authorization-server migration for `resource` sources (design.md §3.1, §3.4).

A protected resource may move to another authorization server: its metadata's
`authorization_servers` changes. The sidecar follows it:

- Each authorization start (GET /{name}/authorize, POST /{name}/par), once it holds credentials,
  re-checks the resource's metadata with a conditional request (If-None-Match /
  If-Modified-Since, RFC 9110 §13.1). The first start after a discovery uses what that discovery
  just read (the discovery may be its own); after it, at most one re-check per
  :data:`RECHECK_INTERVAL` seconds per upstream in a process (concurrent starts share one). A
  failed re-check keeps what is held (logged), never backs the upstream off.
- A changed `authorization_servers` that no longer lists the AS in use switches the upstream:
  the named AS is discovered under the same rules as at first contact, and the credentials held
  for the old AS are dropped at once. The next resolution reads or registers under the new
  issuer's record key — a new client, never the old AS's (records are keyed by issuer and
  upstream, §3.4), registered as the upstream's next generation number; the superseded
  generation of the old AS is never offered there.
- A background metadata refresh that finds another AS is the same change, reported the same way.
- Every change is an audit event (``authorization_server_changed``), kept for the admin API
  (``authorization_server_changes``) and counted in the upstream's stats.
- A pinned `issuer` never migrates (the operator chose it), nor does a static client (its
  credentials belong to one AS): the change is logged as ``authorization_server_change_ignored``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import structlog

from dcr_sidecar import errors
from dcr_sidecar.singleflight import SingleFlight

if TYPE_CHECKING:
    from dcr_sidecar.clock import Clock
    from dcr_sidecar.discovery import DiscoveryResult
    from dcr_sidecar.resolver import Resolver
    from dcr_sidecar.resolver.state import UpstreamState

log = structlog.get_logger(__name__)
audit = structlog.get_logger("dcr_sidecar.audit")
RECHECK_INTERVAL = 5.0  # seconds between re-checks of one upstream's resource metadata
KEPT_CHANGES = 10  # the admin API shows the last few


@dataclass(frozen=True)
class ServerChange:
    previous_issuer: str
    issuer: str
    at: float  # wall clock
    via: str  # recheck | refresh


@dataclass
class ResourceWatch:
    """Per upstream: when its resource metadata was last re-checked, and what changed."""

    fresh: bool = False  # a discovery just read the document: the next start need not ask
    checked_at: float | None = None  # monotonic, the last re-check started
    changes: list[ServerChange] = field(default_factory=list)
    # After a switch the new AS's first client continues the upstream's generation numbers
    # (its record, keyed by the new issuer, would start at 1 again).
    generation_floor: int = 0
    flight: SingleFlight[str, None] = field(default_factory=SingleFlight)  # concurrent starts


def discovered(state: UpstreamState, previous: DiscoveryResult | None, clock: Clock) -> None:
    """A (re)discovery finished: its document is fresh; a new AS is a change (via refresh),
    except for a static client, which keeps the AS it has (`previous` is put back)."""
    state.watch.fresh = True
    current = state.discovery
    if previous is None or current is None or \
            previous.metadata.issuer == current.metadata.issuer:
        return
    if state.config.strategy == "static":
        log.warning("authorization_server_change_ignored", upstream=state.config.name,
                    issuer=previous.metadata.issuer, named=current.metadata.issuer,
                    why="static client")
        state.discovery = previous
        return
    _continue_generations(state)
    _record(state, previous.metadata.issuer, current.metadata.issuer, "refresh", clock.time())


async def recheck(resolver: Resolver, state: UpstreamState) -> bool:
    """The authorization-start re-check (see the module docstring for the rules); True when
    the upstream moved to another AS (the credentials held were dropped)."""
    known = state.discovery.resource if state.discovery is not None else None
    if known is None or state.config.resource is None:
        return False
    watch, now = state.watch, resolver._clock.monotonic()
    if watch.fresh:  # what the discovery read moments ago; the interval counts re-checks only
        watch.fresh = False
        return False
    if watch.checked_at is not None and now < watch.checked_at + RECHECK_INTERVAL:
        return False
    watch.checked_at = now

    async def work() -> None:
        try:
            await _recheck(resolver, state)
        except Exception as exc:  # parsers and bugs: a login never fails over a re-check
            log.error("resource_recheck_crashed", upstream=state.config.name, exc_info=exc)

    issuer = state.discovery.metadata.issuer if state.discovery is not None else None
    await watch.flight.run("recheck", work)
    return state.discovery is not None and state.discovery.metadata.issuer != issuer


async def _recheck(resolver: Resolver, state: UpstreamState) -> None:
    config, discovery = state.config, state.discovery
    assert discovery is not None
    assert discovery.resource is not None
    try:
        fetch = await resolver._discoverer.recheck_resource(config, discovery.resource)
    except errors.UpstreamError as exc:
        log.warning("resource_recheck_failed", upstream=config.name, detail=exc.description)
        return
    if fetch is None:
        return  # 304: unchanged
    issuer = discovery.metadata.issuer
    if issuer in fetch.metadata.authorization_servers:
        discovery.resource = fetch  # the AS in use is still named: keep it, note the validators
        return
    if config.issuer is not None or config.strategy == "static":
        log.warning("authorization_server_change_ignored", upstream=config.name, issuer=issuer,
                    named=list(fetch.metadata.authorization_servers),
                    why="issuer pinned" if config.issuer is not None else "static client")
        discovery.resource = fetch
        return
    try:
        moved = await resolver._discoverer.via_resource_metadata(
            config, fetch, need_registration=config.strategy == "dcr")
    except errors.UpstreamError as exc:
        log.warning("resource_recheck_failed", upstream=config.name, detail=exc.description)
        return
    _continue_generations(state)
    state.discovery = moved
    state.metadata_expires = resolver._clock.monotonic() + moved.ttl
    # The old AS's credentials and superseded generation are never offered at the new one.
    state.credentials = state.previous = None
    state.current, state.key, state.previous_until = None, None, 0.0
    _record(state, issuer, moved.metadata.issuer, "recheck", resolver._clock.time())


def _continue_generations(state: UpstreamState) -> None:
    held = state.credentials.generation if state.credentials is not None else 0
    state.watch.generation_floor = max(state.watch.generation_floor, held)


def _record(state: UpstreamState, previous: str, issuer: str, via: str, now: float) -> None:
    change = ServerChange(previous, issuer, now, via)
    state.watch.changes = [*state.watch.changes, change][-KEPT_CHANGES:]
    state.stats["authorization_server_changes"] = \
        state.stats.get("authorization_server_changes", 0) + 1
    audit.warning("authorization_server_changed", upstream=state.config.name,
                  previous_issuer=previous, issuer=issuer, via=via,
                  resource=state.config.resource)
