"""Recovery after invalid_client (design.md §3.5): find out why (RFC 7592 read) and, when the
client is gone or its secret expired, register a new generation — at most one per window, the
window doubling while new generations never serve; a refused or pointless recovery holds off.
Under the store's per-key lock, after a fresh read, like every change of a generation."""

from __future__ import annotations

import structlog

from dcr_sidecar import errors
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.resolver import backoff
from dcr_sidecar.resolver.face import Credentials
from dcr_sidecar.resolver.generations import Generations
from dcr_sidecar.resolver.state import UpstreamState
from dcr_sidecar.rfc7592 import Rfc7592
from dcr_sidecar.store.records import RecordKey

log = structlog.get_logger("dcr_sidecar.resolver")  # one logger name for the package
audit = structlog.get_logger("dcr_sidecar.audit")


class Recovery(Generations):
    """A dynamic client the AS refused (see the module docstring)."""

    async def _recover(self, state: UpstreamState, failed: Credentials) -> Credentials | None:
        metadata = await self._fresh_metadata(state)
        key = RecordKey(metadata.issuer, state.config.name)
        wanted = self._fingerprint(state.config)
        try:
            return await self._recover_locked(state, metadata, key, wanted, failed)
        except errors.LeaseLost as exc:
            record, current = await self._winner(state, metadata, key, wanted, exc)
        self._adopt(state, metadata, key, record, current)
        return state.credentials

    async def _recover_locked(self, state: UpstreamState, metadata: Metadata, key: RecordKey,
                              wanted: str, failed: Credentials) -> Credentials | None:
        config = state.config
        async with self._locked(state, key):
            record = await self._read(state, key)
            now = self._clock.time()
            current = record.current(wanted, now)
            if current is not None and current.generation != failed.generation:
                self._adopt(state, metadata, key, record, current)  # another process recovered
                return state.credentials
            gen = record.get(failed.generation)
            if gen is not None and Rfc7592.manageable(gen):
                state.step = "renew"
                answer = await self._rfc7592.read(config, gen)
                if answer.forbidden:
                    self._hold_off_recovery(state, "registration management is not permitted")
                    return None
                if answer.document is not None:
                    before = gen.client_secret
                    gen, record = await self._apply_management(state, record, gen,
                                                               answer.document)
                    if not gen.expired(now):
                        if gen.client_secret != before:  # the AS rotated the secret
                            self._adopt(state, metadata, key, record, gen)
                            return state.credentials
                        self._hold_off_recovery(state, "the client exists and its secret is "
                                                       "valid: the error is not the sidecar's")
                        return None
                # gone (401/404), or an expired secret the AS did not renew: re-register.
            state.stats["recoveries"] += 1
            audit.info("client_invalidated", upstream=config.name, client_id=failed.client_id,
                       generation=failed.generation)
            current, record = await self._register(state, metadata, record, wanted)
            self._recovery_window(state)
        self._adopt(state, metadata, key, record, current)
        return state.credentials

    def _recovery_window(self, state: UpstreamState) -> None:
        """At most one re-registration per window: `backoff.base`, doubling up to `backoff.cap`
        for each recovery in a row whose generation never served a request. Inside it an
        invalid_client is relayed to the app, registering nothing."""
        state.recoveries_unserved += 1
        window = backoff.recovery_window(state.recoveries_unserved, self.settings.backoff)
        state.recover_until = self._clock.monotonic() + window
        log.info("recovery_window_started", upstream=state.config.name, window_s=window,
                 recoveries_unserved=state.recoveries_unserved)

    def _hold_off_recovery(self, state: UpstreamState, why: str) -> None:
        state.recover_until = self._clock.monotonic() + backoff.recovery_hold_off(
            state.failures, self.settings.backoff)
        log.warning("invalid_client_not_recovered", upstream=state.config.name, reason=why)
