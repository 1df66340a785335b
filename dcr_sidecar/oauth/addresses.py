"""Outbound address classification (design.md §3.8): which destination addresses are blocked.

Pure: a table of ranges, each with the reason it is blocked; ``docs/SECURITY.md`` shows the
same table and a test compares the two.

Invariants:
- Ranges overlap (``::/96`` holds ``::1``); an address takes the category of the most specific
  range that holds it, whatever the order of the table.
- Cloud metadata addresses are blocked whatever the allow-list says, also when written inside
  an IPv6 address (IPv4-mapped, -compatible, -translated, 6to4, Teredo, NAT64).
- IPv4-mapped and the other IPv6 transition forms are blocked as such; only an IPv6
  allow-list entry lifts them (an IPv4 entry lifts the NAT64 form, which a translator turns
  into that very IPv4 address).
- NAT64 addresses are judged by the IPv4 address they embed (RFC 6052). The well-known prefix
  64:ff9b::/96 embeds it in the last 32 bits. The local-use prefix 64:ff9b:1::/48 (RFC 8215)
  may be deployed at /48, /56, /64 or /96, and the sidecar cannot know which, so every reading
  counts and the address is blocked when any reading is; readings inside 0.0.0.0/8 are the
  other lengths' zero padding and are skipped (0.0.0.0/8 is never a destination) unless every
  reading is one.
- IPv6 outside global unicast (2000::/3) is blocked: IANA has allocated nothing else.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterator, Sequence

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (network, category): blocked unless allow-listed for a configured authority.
BLOCKED_RANGES: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "TEST-NET-1"),
    ("192.88.99.0/24", "6to4 relay anycast (deprecated)"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "TEST-NET-2"),
    ("203.0.113.0/24", "TEST-NET-3"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("::ffff:0:0:0/96", "IPv4-translated"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments"),
    ("2001::/32", "Teredo"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local (deprecated)"),
    ("ff00::/8", "multicast"),
    ("::/3", "outside global unicast"),
    ("4000::/2", "outside global unicast"),
    ("8000::/1", "outside global unicast"),
)
NAT64_PREFIXES: tuple[str, ...] = ("64:ff9b::/96", "64:ff9b:1::/48")
# AWS/GCP/Azure/Oracle/DigitalOcean IMDS, AWS ECS task metadata, AWS IMDS over IPv6, Alibaba,
# Azure WireServer (a public address, so only this row blocks it).
METADATA_ADDRESSES: tuple[str, ...] = (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "168.63.129.16",
)
METADATA = "cloud metadata"

_BLOCKED = sorted(((ipaddress.ip_network(net), why) for net, why in BLOCKED_RANGES),
                  key=lambda row: -row[0].prefixlen)
_WELL_KNOWN_NAT64, _LOCAL_NAT64 = (ipaddress.IPv6Network(net) for net in NAT64_PREFIXES)
_METADATA = frozenset(ipaddress.ip_address(a) for a in METADATA_ADDRESSES)
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
# RFC 6052 §2.2: the bit spans holding the IPv4 address for each prefix length (bits 64-71,
# the "u" octet, never carry address bits).
_RFC6052_SPANS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((48, 64), (72, 88)),
    ((56, 64), (72, 96)),
    ((72, 104),),
    ((96, 128),),
)


def _bits(value: int, start: int, end: int) -> int:
    """Bits [start, end) of a 128-bit value, counted from the most significant bit."""
    return (value >> (128 - end)) & ((1 << (end - start)) - 1)


def _reading(value: int, spans: tuple[tuple[int, int], ...]) -> ipaddress.IPv4Address:
    out = 0
    for start, end in spans:
        out = (out << (end - start)) | _bits(value, start, end)
    return ipaddress.IPv4Address(out)


def nat64_readings(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses a NAT64 address may stand for; () when it is not a NAT64 address."""
    value = int(address)
    if address in _WELL_KNOWN_NAT64:
        return (ipaddress.IPv4Address(value & 0xFFFFFFFF),)
    if address not in _LOCAL_NAT64:
        return ()
    readings = tuple(dict.fromkeys(_reading(value, spans) for spans in _RFC6052_SPANS))
    meaningful = tuple(r for r in readings if r not in _THIS_NETWORK)
    return meaningful or readings


def embedded_ipv4(address: ipaddress.IPv6Address) -> Iterator[tuple[str, ipaddress.IPv4Address]]:
    """Every (form, IPv4 address) written inside `address` by a transition mechanism."""
    value = int(address)
    low = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    if value >> 32 == 0xFFFF:
        yield "IPv4-mapped", low
    elif value >> 32 == 0xFFFF0000:
        yield "IPv4-translated", low
    elif value >> 32 == 0 and value > 1:
        yield "IPv4-compatible", low
    if _bits(value, 0, 16) == 0x2002:
        yield "6to4", ipaddress.IPv4Address(_bits(value, 16, 48))
    if _bits(value, 0, 32) == 0x20010000:
        yield "Teredo server", ipaddress.IPv4Address(_bits(value, 32, 64))
        yield "Teredo client", ipaddress.IPv4Address(~value & 0xFFFFFFFF)
    for reading in nat64_readings(address):
        yield "NAT64", reading


def _range_category(address: IPAddress) -> str | None:
    for network, why in _BLOCKED:
        if address.version == network.version and address in network:
            return why
    return None


@functools.lru_cache(maxsize=4096)  # pure, and the same few addresses are dialled again and again
def classify(address: IPAddress) -> str | None:
    """The reason `address` is blocked by default, or None for a public address."""
    if address in _METADATA:
        return METADATA
    if isinstance(address, ipaddress.IPv4Address):
        return _range_category(address)
    readings = nat64_readings(address)
    if readings:
        reasons = [r for r in map(classify, readings) if r is not None]
        return f"NAT64 of {_worst(reasons)}" if reasons else None
    for form, inner in embedded_ipv4(address):
        if inner in _METADATA:
            return f"{METADATA} ({form})"
    return _range_category(address)


def _worst(reasons: list[str]) -> str:
    return next((r for r in reasons if always_blocked(r)), reasons[0])


def always_blocked(reason: str) -> bool:
    """Reasons no allow-list lifts: cloud metadata, in any form."""
    return METADATA in reason


def _listed(address: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in allowed)


def refusal(address: IPAddress, allowed: Sequence[IPNetwork]) -> str | None:
    """Why a connection to `address` is refused, or None when it may proceed.

    Allow-listed networks lift the block, except for cloud metadata (always blocked). A NAT64
    address is also allowed when every blocked IPv4 reading of it is listed; every other IPv6
    form (IPv4-mapped included) only by an IPv6 entry.
    """
    reason = classify(address)
    if reason is None:
        return None
    if always_blocked(reason) or not allowed:
        return reason
    if _listed(address, allowed):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        blocked = [r for r in nat64_readings(address) if classify(r) is not None]
        if blocked and all(_listed(r, allowed) for r in blocked):
            return None
    return reason


def parse_address(text: str) -> IPAddress:
    """An address as a resolver or socket writes it; an IPv6 zone (``%eth0``) is dropped."""
    return ipaddress.ip_address(text.split("%", 1)[0])
