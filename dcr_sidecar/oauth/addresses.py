"""Outbound address classification (DESIGN §3.8): which destination addresses are blocked.

Pure: a table of ranges, each with the reason it is blocked. NAT64 addresses are judged by the
IPv4 address they embed; cloud metadata addresses are blocked even when allow-listed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (network, category) — every range blocked unless allow-listed. docs/SECURITY.md shows this
# table and a test compares the two.
BLOCKED_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "TEST-NET-1"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "TEST-NET-2"),
    ("203.0.113.0/24", "TEST-NET-3"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("100::/64", "discard-only"),
    ("2001::/32", "Teredo"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
)
NAT64_PREFIXES: tuple[str, ...] = ("64:ff9b::/96", "64:ff9b:1::/48")
METADATA_ADDRESSES: tuple[str, ...] = ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")

_BLOCKED = tuple((ipaddress.ip_network(net), why) for net, why in BLOCKED_RANGES)
_NAT64 = tuple(ipaddress.IPv6Network(net) for net in NAT64_PREFIXES)
_METADATA = frozenset(ipaddress.ip_address(a) for a in METADATA_ADDRESSES)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    for prefix in _NAT64:
        if address in prefix:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def classify(address: IPAddress) -> str | None:
    """The reason `address` is blocked by default, or None for a public address."""
    if address in _METADATA or (
        isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped in _METADATA
    ):
        return "cloud metadata"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = classify(embedded)
            return f"NAT64 of {reason}" if reason else None
    # The most specific range names the reason (255.255.255.255 is "broadcast", not "reserved").
    matches = [
        (network, why)
        for network, why in _BLOCKED
        if address.version == network.version and address in network
    ]
    return max(matches, key=lambda match: match[0].prefixlen)[1] if matches else None


def refusal(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why a connection to `address` is refused, or None when it may proceed.

    Allow-listed networks lift the block, except for cloud metadata addresses (always blocked).
    A NAT64 address is allowed when the IPv4 address it embeds is.
    """
    reason = classify(address)
    if reason is None:
        return None
    if reason in {"cloud metadata", "NAT64 of cloud metadata"}:
        return reason
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            candidates.append(embedded)
    for candidate in candidates:
        if any(candidate.version == net.version and candidate in net for net in allowed):
            return None
    return reason
