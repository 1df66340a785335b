"""Things the package defines in one place (issue 12, Deliver 6): the constant-time comparison
(`oauth/secret.py`), the upstream-name pattern and the reserved names (`config.py`). A second
copy elsewhere in `dcr_sidecar/` drifts; these tests find one by reading the source."""

from __future__ import annotations

import re
from pathlib import Path

import dcr_sidecar

PACKAGE = Path(dcr_sidecar.__file__).parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _holders(pattern: str) -> list[str]:
    found = re.compile(pattern)
    return sorted(str(path.relative_to(PACKAGE)) for path in SOURCES
                  if found.search(path.read_text(encoding="utf-8")))


def test_constant_time_comparison_is_defined_once() -> None:
    assert _holders(r"compare_digest") == ["oauth/secret.py"]


def test_upstream_name_pattern_is_defined_once() -> None:
    assert _holders(re.escape("[a-z0-9][a-z0-9-]{0,62}")) == ["config.py"]


def test_reserved_upstream_names_are_defined_once() -> None:
    assert _holders(r"\"well-known\"") == ["config.py"]


def test_the_rfc7592_module_is_not_called_management() -> None:
    """'management' means the management listener (management.py) only."""
    assert sorted(path.name for path in SOURCES if "management" in path.name) == [
        "management.py"]
