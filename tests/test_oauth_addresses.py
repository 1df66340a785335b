"""The address matrix of DESIGN §3.8, by pure classification (no connection is made)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcr_sidecar.oauth.addresses import (
    BLOCKED_RANGES,
    METADATA_ADDRESSES,
    classify,
    embedded_ipv4,
    nat64_readings,
    parse_address,
    refusal,
)

LOOPBACK_ONLY = [ipaddress.ip_network("127.0.0.1/32")]

# (address, expected category); every range of DESIGN §3.8 in IPv4 and IPv6 forms.
MATRIX = [
    ("0.0.0.0", "this network"),  # noqa: S104 - an address under test, not a bind
    ("0.1.2.3", "this network"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.1.1", "link-local"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.0.2.1", "TEST-NET-1"),
    ("192.88.99.1", "6to4 relay anycast (deprecated)"),
    ("192.168.1.1", "private"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.255", "benchmarking"),
    ("198.51.100.7", "TEST-NET-2"),
    ("203.0.113.9", "TEST-NET-3"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::127.0.0.1", "IPv4-compatible (deprecated)"),
    ("::ffff:127.0.0.1", "IPv4-mapped"),
    ("::ffff:10.0.0.1", "IPv4-mapped"),
    ("::ffff:8.8.8.8", "IPv4-mapped"),
    ("::ffff:0:10.0.0.1", "IPv4-translated"),
    ("100::1", "discard-only"),
    ("2001:2::1", "IETF protocol assignments"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2002:c000:0201::1", "6to4"),
    ("2002:0808:0808::1", "6to4"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local (deprecated)"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("1000::1", "outside global unicast"),
    ("5f00::1", "outside global unicast"),
    ("8000::1", "outside global unicast"),
    ("fd00:ec2::254", "cloud metadata"),
    # Cloud metadata written inside IPv6 forms: always blocked.
    ("::ffff:169.254.169.254", "cloud metadata (IPv4-mapped)"),
    ("::169.254.169.254", "cloud metadata (IPv4-compatible)"),
    ("::ffff:0:169.254.169.254", "cloud metadata (IPv4-translated)"),
    ("2002:a9fe:a9fe::1", "cloud metadata (6to4)"),
    ("2001:0:a9fe:a9fe::1", "cloud metadata (Teredo server)"),
    ("2001:0:4136:e378:8000:63bf:5601:5601", "cloud metadata (Teredo client)"),
    ("64:ff9b::169.254.169.254", "cloud metadata (NAT64)"),
    ("64:ff9b::100.100.100.200", "cloud metadata (NAT64)"),
    # NAT64: judged by the embedded IPv4 address.
    ("64:ff9b::127.0.0.1", "NAT64 of loopback"),
    ("64:ff9b::10.1.2.3", "NAT64 of private"),
    ("64:ff9b::192.168.0.1", "NAT64 of private"),
    ("64:ff9b::100.64.0.1", "NAT64 of carrier-grade NAT"),
    ("64:ff9b::8.8.8.8", None),
    ("64:ff9b:1::8.8.8.8", None),          # local-use prefix deployed at /96
    ("64:ff9b:1::10.0.0.1", "NAT64 of private"),
    ("64:ff9b:1:a00:0:100::", "NAT64 of private"),   # 10.0.0.1 at /48 (RFC 6052 §2.2)
    ("64:ff9b:1:a9fe:a9:fe00::", "cloud metadata (NAT64)"),  # 169.254.169.254 at /48
    ("64:ff9b:1::", "NAT64 of this network"),
    # Public.
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("93.184.216.34", None),
    ("100.63.255.255", None),
    ("100.128.0.0", None),
    ("172.32.0.1", None),
    ("192.0.3.1", None),
    ("198.17.255.255", None),
    ("223.255.255.255", None),
    ("2606:4700:4700::1111", None),
    ("2001:4860:4860::8888", None),
    ("2a00:1450::1", None),
]


@pytest.mark.parametrize(("address", "category"), MATRIX)
def test_address_matrix(address: str, category: str | None) -> None:
    assert classify(parse_address(address)) == category


@pytest.mark.parametrize("address", [a for a, c in MATRIX if c is not None])
def test_blocked_addresses_are_refused_without_an_allow_list(address: str) -> None:
    assert refusal(parse_address(address), []) is not None


@pytest.mark.parametrize("address", METADATA_ADDRESSES)
def test_cloud_metadata_is_refused_even_when_allow_listed(address: str) -> None:
    parsed = parse_address(address)
    everything = [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]
    assert refusal(parsed, everything) is not None
    if parsed.version == 4:
        for form in (f"::ffff:{address}", f"64:ff9b::{address}"):
            assert refusal(parse_address(form), everything) is not None


def test_allow_list_lifts_the_block_for_its_networks_only() -> None:
    assert refusal(parse_address("127.0.0.1"), LOOPBACK_ONLY) is None
    assert refusal(parse_address("127.0.0.2"), LOOPBACK_ONLY) == "loopback"
    assert refusal(parse_address("::1"), LOOPBACK_ONLY) == "loopback"
    assert refusal(parse_address("10.0.0.1"), [ipaddress.ip_network("10.0.0.0/8")]) is None


def test_mapped_and_nat64_forms_follow_the_allow_list_of_their_ipv4_address() -> None:
    assert refusal(parse_address("::ffff:127.0.0.1"), LOOPBACK_ONLY) is None
    assert refusal(parse_address("::ffff:127.0.0.2"), LOOPBACK_ONLY) == "IPv4-mapped"
    assert refusal(parse_address("64:ff9b::127.0.0.1"), LOOPBACK_ONLY) is None
    assert refusal(parse_address("64:ff9b::127.0.0.2"), LOOPBACK_ONLY) == "NAT64 of loopback"
    # 6to4 and Teredo are blocked as such; only an IPv6 allow-list entry lifts them.
    assert refusal(parse_address("2002:7f00:1::1"), LOOPBACK_ONLY) == "6to4"
    assert refusal(parse_address("2002:7f00:1::1"),
                   [ipaddress.ip_network("2002::/16")]) is None


def test_local_use_nat64_is_read_at_every_rfc6052_length() -> None:
    """64:ff9b:1::/48 may carry the IPv4 address at /48, /56, /64 or /96."""
    address = ipaddress.IPv6Address("64:ff9b:1:a00:0:100::")
    assert ipaddress.IPv4Address("10.0.0.1") in nat64_readings(address)
    assert nat64_readings(ipaddress.IPv6Address("64:ff9b::8.8.8.8")) == (
        ipaddress.IPv4Address("8.8.8.8"),)
    assert nat64_readings(ipaddress.IPv6Address("2001:db8::1")) == ()


def test_embedded_ipv4_forms() -> None:
    forms = dict(embedded_ipv4(ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2")))
    assert forms == {"Teredo server": ipaddress.IPv4Address("65.54.227.120"),
                     "Teredo client": ipaddress.IPv4Address("192.0.2.45")}  # RFC 4380 §4
    assert dict(embedded_ipv4(ipaddress.IPv6Address("2002:c000:0201::1"))) == {
        "6to4": ipaddress.IPv4Address("192.0.2.1")}
    assert list(embedded_ipv4(ipaddress.IPv6Address("::1"))) == []


def test_every_table_range_classifies_as_its_row_at_both_ends() -> None:
    """The most specific row wins, so each row's own ends classify as that row unless a more
    specific row (or a metadata address) holds them."""
    networks = [ipaddress.ip_network(net) for net, _ in BLOCKED_RANGES]
    for (net, category), network in zip(BLOCKED_RANGES, networks, strict=True):
        for address in (network[0], network[-1]):
            inner = [n for n in networks if n != network and n.version == network.version
                     and address in n and n.prefixlen > network.prefixlen]
            got = classify(address)
            if not inner and got is not None and not got.startswith(("cloud", "NAT64")):
                assert got == category, (net, str(address))


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_non_global_ipv4_address_is_blocked(value: int) -> None:
    """Anything the standard library does not consider global is blocked (and multicast)."""
    address = ipaddress.IPv4Address(value)
    if not address.is_global or address.is_multicast:
        assert classify(address) is not None


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_ipv6_outside_global_unicast_is_blocked(value: int) -> None:
    address = ipaddress.IPv6Address(value)
    if address not in ipaddress.ip_network("2000::/3") and not nat64_readings(address):
        assert classify(address) is not None


# RFC 6052 §2.4's examples of 192.0.2.33, moved under the local-use prefix 64:ff9b:1::/48.
@pytest.mark.parametrize("address", [
    "64:ff9b:1:c000:2:2100::",     # /48
    "64:ff9b:1:c0:0:221::",        # /56
    "64:ff9b:1:0:c0:2:2100:0",     # /64
    "64:ff9b:1::c000:221",         # /96
])
def test_rfc6052_examples_read_back_their_ipv4_address(address: str) -> None:
    parsed = ipaddress.IPv6Address(address)
    assert ipaddress.IPv4Address("192.0.2.33") in nat64_readings(parsed)
    assert classify(parsed) == "NAT64 of TEST-NET-1"
