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


def test_configured_endpoints_are_url_members() -> None:
    """config.Endpoints and oauth/metadata.URL_MEMBERS once diverged: every endpoint an
    operator may configure is a URL member checked like a discovered one."""
    from dcr_sidecar.config import ENDPOINT_URL_FIELDS, Endpoints
    from dcr_sidecar.oauth.metadata import URL_MEMBERS

    assert ENDPOINT_URL_FIELDS is URL_MEMBERS
    configured = {name for name in Endpoints.model_fields if name.endswith("_endpoint")}
    assert configured <= set(URL_MEMBERS)


def test_test_servers_are_started_by_the_one_fake_server() -> None:
    """Fault-injecting servers in tests are tests/support/fakes.FakeServer (the demo e2e test
    serves the product's own demo app)."""
    tests = Path(__file__).parent
    starters = sorted(str(path.relative_to(tests)) for path in tests.rglob("*.py")
                      if "node_modules" not in path.parts
                      and "web." + "TCPSite(" in path.read_text(encoding="utf-8"))
    assert starters == ["support/fakes.py", "test_demo_e2e.py"]
