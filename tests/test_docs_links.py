"""The README and docs/ link only to files in this repository that exist (no document outside
it is cited), and the README's five-minute configuration is valid as printed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dcr_sidecar.config import parse_settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    for target in LINK.findall(doc.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} cites {target}, outside the repository"
        assert path.exists(), f"{doc.name} links to {target}, which does not exist"


def test_readme_five_minute_config_is_valid_and_ten_lines() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```yaml\n(version: 1\n.*?)```", text, re.DOTALL)
    assert block is not None
    assert len(block.group(1).splitlines()) == 10
    settings = parse_settings(block.group(1), "README.md", env={})
    assert [u.name for u in settings.upstreams] == ["acme"]


def test_readme_fits_one_screen_before_the_reference() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text[: text.index("## Reference")].splitlines()) <= 70
