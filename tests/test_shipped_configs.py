"""The configuration files shipped in config/ stay valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcr_sidecar.config import parse_settings

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


@pytest.mark.parametrize("name", ["example.yaml", "dev.yaml", "container.yaml"])
def test_shipped_config_is_valid(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    path = CONFIG_DIR / name
    # `{env: NAME}` secrets read the process environment (the `env` mapping only feeds ${VAR}).
    monkeypatch.setenv("PARTNER_CLIENT_SECRET", "placeholder-secret")
    settings = parse_settings(path.read_text(), str(path))
    assert settings.upstreams or name == "container.yaml"  # the image's default has none


def test_example_documents_every_top_level_key() -> None:
    """Every top-level key of the schema appears in config/example.yaml."""
    from dcr_sidecar.config import Settings

    text = (CONFIG_DIR / "example.yaml").read_text()
    missing = [key for key in Settings.model_fields if f"\n{key}:" not in text]
    assert not missing
