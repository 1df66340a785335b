"""The configuration files shipped in config/ stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcr_sidecar.config import parse_settings

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


@pytest.mark.parametrize("name", ["example.yaml", "dev.yaml"])
def test_shipped_config_is_valid(name: str) -> None:
    path = CONFIG_DIR / name
    settings = parse_settings(path.read_text(), str(path),
                              env={"PARTNER_CLIENT_SECRET": "placeholder-secret"})
    assert settings.upstreams


def test_example_documents_every_top_level_key() -> None:
    """Every top-level key of the schema appears in config/example.yaml."""
    from dcr_sidecar.config import Settings

    text = (CONFIG_DIR / "example.yaml").read_text()
    # front and admin are rejected by this build (not yet available), so not shown.
    not_yet = {"front", "admin"}
    missing = [key for key in Settings.model_fields
               if f"\n{key}:" not in text and key not in not_yet]
    assert not missing
