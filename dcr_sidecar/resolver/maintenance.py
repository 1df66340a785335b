"""Maintenance (design.md §3.4, §3.5): per upstream, one loop renews before expiry, refreshes
metadata before it expires, re-reads a shared record within its bound, rotates CIMD keys, and
deletes superseded generations when their grace ends; on an ephemeral store's clean shutdown,
the clients this process registered are deleted."""

from __future__ import annotations

import contextlib

import structlog

from dcr_sidecar import errors
from dcr_sidecar.cimd import schedule
from dcr_sidecar.oauth import cimd as cimd_rules
from dcr_sidecar.oauth.lifetime import renew_at, renewal_margin
from dcr_sidecar.resolver.recovery import Recovery
from dcr_sidecar.resolver.state import (
    MAINTENANCE_IDLE,
    REREAD_AT,
    UpstreamState,
)

log = structlog.get_logger("dcr_sidecar.resolver")  # one logger name for the package
audit = structlog.get_logger("dcr_sidecar.audit")


class Maintenance(Recovery):
    """Background upkeep (see the module docstring)."""

    async def maintain(self, name: str) -> None:
        """Background upkeep of one upstream: renew before expiry, refresh metadata before it
        expires, delete superseded clients after their grace. Runs until cancelled."""
        state = self._state(name)
        while self._states.get(name) is state:  # a reload that replaces the state ends it
            delay = max(0.05, min(self._next_due(state) - self._clock.time(), MAINTENANCE_IDLE))
            state.wake.clear()
            await self._clock.sleep(delay, state.wake)
            try:
                await self._maintenance_pass(state)
            except errors.SidecarError:
                await self._clock.sleep(max(0.05, state.backoff_until - self._clock.monotonic()))

    async def delete_own_clients(self) -> None:
        """Ephemeral stores: on clean shutdown delete the clients this process registered."""
        for state in self._states.values():
            if state.registered_here and state.key is not None:
                with contextlib.suppress(errors.SidecarError):
                    await self._guarded(state, self._delete_own)

    def _next_due(self, state: UpstreamState) -> float:
        now = self._clock.time()
        due = [now + MAINTENANCE_IDLE]
        gen = state.current
        if gen is not None and state.config.strategy != "static":
            when = renew_at(gen.client_secret_expires_at, gen.received_at)
            if when is not None:
                if state.last_renewal is not None:
                    margin = renewal_margin(gen.client_secret_expires_at, gen.received_at)
                    when = max(when, now + margin - (self._clock.monotonic() - state.last_renewal))
                due.append(when)
        if state.previous_until:
            due.append(state.previous_until)
        due.extend(self._cimd_due(state, now))
        if self._store.shared and state.current is not None:
            due.append(now + REREAD_AT * self._max_record_age - self._record_age(state))
        if state.discovery is not None and state.discovery.ttl != float("inf"):
            refresh_in = state.metadata_expires - 0.1 * state.discovery.ttl
            due.append(now + refresh_in - self._clock.monotonic())
        return min(due)

    async def _maintenance_pass(self, state: UpstreamState) -> None:
        if state.credentials is None or self._clock.monotonic() < state.backoff_until:
            return
        now = self._clock.time()
        if state.discovery is not None and state.discovery.ttl != float("inf") and (
                self._clock.monotonic() >= state.metadata_expires - 0.1 * state.discovery.ttl):
            await self._shared(state, "metadata", self._metadata)
        if state.config.strategy == "static":
            return
        if state.mechanism == "cimd":
            await self._cimd_maintenance(state)
            return
        reread = self._record_age(state) >= REREAD_AT * self._max_record_age
        if reread or (state.current is not None
                      and self._renewal_due(state, state.current, now)):
            await self._shared(state, "credentials", self._resolve)
        if state.previous_until and now >= state.previous_until:
            await self._shared(state, "janitor", self._delete_superseded)

    def _cimd_due(self, state: UpstreamState, now: float) -> list[float]:
        """CIMD upkeep times: the key set's re-read bound and a scheduled rotation."""
        config, record = state.config, self._cimd_keys.held(state.config.name)
        if state.mechanism != "cimd" or config.cimd.auth_method != "private_key_jwt" \
                or record is None:
            return []
        due = []
        if self._store.shared:
            age = self._cimd_keys.read_age(config.name)
            due.append(now + REREAD_AT * self._max_record_age - age)
        keys = schedule(record)
        if config.cimd.key_rotation is not None:
            newest = max((k.published_at for k in keys), default=now)
            due.append(newest + config.cimd.key_rotation)
        change = cimd_rules.next_change(keys, now)
        if change is not None:
            due.append(change)
        return due

    async def _cimd_maintenance(self, state: UpstreamState) -> None:
        config = state.config
        if config.cimd.auth_method != "private_key_jwt":
            return
        name = config.name
        rotation = config.cimd.key_rotation
        rotated = rotation is not None and await self._cimd_keys.rotate_if_due(
            name, rotation, config.cimd.overlap)
        reread = self._store.shared and self._cimd_keys.read_age(name) >= REREAD_AT * \
            self._max_record_age
        if rotated or reread:
            await self._shared(state, "credentials", self._resolve)

    async def _delete_superseded(self, state: UpstreamState) -> None:
        if state.key is None:
            return
        async with self._locked(state, state.key):
            record = await self._read(state, state.key)
            for gen in record.due_for_deletion(state.config.generation_grace, self._clock.time()):
                record = await self._delete_generation(state, record, gen, "grace ended")
        state.previous, state.previous_until = None, 0.0

    async def _delete_own(self, state: UpstreamState) -> None:
        assert state.key is not None
        async with self._locked(state, state.key):
            record = await self._read(state, state.key)
            for number in sorted(state.registered_here):
                gen = record.get(number)
                if gen is not None:
                    record = await self._delete_generation(state, record, gen,
                                                           "ephemeral store shutdown")
        state.registered_here.clear()
