"""docs/configuration.md is generated from the configuration model and cannot drift from it."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, Field

from dcr_sidecar import docgen
from dcr_sidecar.config import Settings


def test_configuration_reference_is_up_to_date() -> None:
    """Adding or changing a config key without regenerating the reference fails here."""
    current = docgen.TARGET.read_text(encoding="utf-8")
    assert current == docgen.render(), (
        f"docs/configuration.md is out of date: run `{docgen.COMMAND}` and commit the result")


def test_every_key_of_the_model_is_in_the_reference() -> None:
    text = docgen.render()

    def paths(model: type[BaseModel], prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            out.append(f"{prefix}{name}")
            nested, many = docgen._nested(field.annotation)
            if nested is not None:
                out += paths(nested, f"{prefix}{name}{'[]' if many else ''}.")
        return out

    for path in paths(Settings):
        assert f"| `{path}` |" in text, path


def test_every_key_says_what_it_means() -> None:
    """Failed before the fix: front.tls.cert_file, upstreams[].endpoints.*, upstreams[].cimd.*
    and others had an empty meaning column."""
    empty = [row.path for row in docgen.rows(Settings) if not row.meaning.strip()]
    assert not empty, (
        f"no meaning for {empty}: give the field a Field(description=...) or add a row to "
        f"docgen.DESCRIPTIONS, then run `{docgen.COMMAND}`")


def test_rows_come_from_any_model() -> None:
    """A model added later is described without touching docgen: type, default, nesting."""

    class Inner(BaseModel):
        mode: Literal["a", "b"] = "a"

    class Outer(BaseModel):
        count: int = Field(default=3, description="how many")
        inner: Inner = Inner()
        items: list[Inner] = Field(default_factory=list)
        name: str

    found = {r.path: r for r in docgen.rows(Outer)}
    assert list(found) == ["count", "inner", "inner.mode", "items", "items[].mode", "name"]
    assert (found["count"].type, found["count"].default, found["count"].meaning) == (
        "integer", "`3`", "how many")
    assert found["inner.mode"].type == r"`a` \| `b`"
    assert found["name"].default == "**required**"


@pytest.mark.parametrize("argv", [["--check"]])
def test_check_mode_passes_on_the_committed_file(argv: list[str]) -> None:
    assert docgen.main(argv) == 0
