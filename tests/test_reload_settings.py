"""design.md §3.10: the settings in force are one reference (LiveSettings) that the Sidecar,
the Runtime, the resolver and the outbound client read; a reload swaps it once, and the
secrets of the new configuration are known to the process's redactor before it is in force."""

from __future__ import annotations

from pathlib import Path

import yaml

from dcr_sidecar.app import Sidecar
from dcr_sidecar.config import Settings, parse_settings
from tests.conftest import LeakGuard, SidecarFactory, sidecar_config


def readers(side: Sidecar) -> list[Settings]:
    """What each part that reads the settings sees now."""
    return [side.settings, side.runtime.settings, side.resolver.settings,
            side.outbound.settings]


async def test_every_part_reads_the_one_reference_and_a_reload_swaps_it(
        sidecar: SidecarFactory, tmp_path: Path, leak_guard: LeakGuard) -> None:
    side = await sidecar({"timeouts": {"total": 8}})
    assert side.runtime.live is side.live
    assert side.outbound.live is side.live
    before = side.live.current
    assert all(seen is before for seen in readers(side))
    leak_guard.add("reloaded-inbound-secret-1")
    changed = parse_settings(yaml.safe_dump(sidecar_config(tmp_path, {
        "timeouts": {"total": 7}, "inbound": {"client_secret": "reloaded-inbound-secret-1"}})),
        "reloaded.yaml")
    result = side.reload(changed)
    assert "timeouts" in result.changed
    after = side.live.current
    assert after is not before
    assert after.timeouts.total == 7
    assert all(seen is after for seen in readers(side))
    assert "reloaded-inbound-secret-1" in side.redactor.known
