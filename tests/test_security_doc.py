"""docs/SECURITY.md's address tables are the code's tables: parsed and compared, so the
document cannot drift from BLOCKED_RANGES, METADATA_ADDRESSES, NAT64_PREFIXES and classify."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from dcr_sidecar.oauth.addresses import (
    BLOCKED_RANGES,
    METADATA,
    METADATA_ADDRESSES,
    NAT64_PREFIXES,
    classify,
    parse_address,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "SECURITY.md"


def table(name: str) -> list[list[str]]:
    """The body rows of the Markdown table between <!-- name:start --> and <!-- name:end -->,
    each cell stripped of surrounding backticks."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", text, re.DOTALL)
    assert match, f"no {name} table in {DOC}"
    lines = [line for line in match.group(1).splitlines() if line.startswith("|")]
    _header, rule, *rows = lines
    assert set(rule.replace("|", "").strip()) <= {"-", " "}, "second line must be the rule"
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]


def test_address_table_matches_blocked_ranges() -> None:
    rows = table("address-table")
    assert [(net, category) for net, category, _ in rows] == list(BLOCKED_RANGES)


def test_address_table_examples_classify_as_their_row() -> None:
    for net, category, example in table("address-table"):
        address = parse_address(example)
        assert address in ipaddress.ip_network(net), (net, example)
        assert classify(address) == category, (net, example)


def test_metadata_table_matches_the_always_blocked_addresses() -> None:
    rows = table("metadata-table")
    assert [address for address, _ in rows] == list(METADATA_ADDRESSES)
    for address, _ in rows:
        assert classify(parse_address(address)) == METADATA


def test_nat64_table_matches_the_prefixes() -> None:
    assert [prefix for prefix, _ in table("nat64-table")] == list(NAT64_PREFIXES)
