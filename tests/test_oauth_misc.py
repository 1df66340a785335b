"""PKCE (RFC 7636), backoff and Retry-After (RFC 9110 §10.2.3), text sanitising, and the
outbound address table (design.md §3.8). Addresses are only classified; nothing connects."""

from __future__ import annotations

import ipaddress
import random
import re
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcr_sidecar.oauth.addresses import (
    BLOCKED_RANGES,
    METADATA_ADDRESSES,
    IPNetwork,
    classify,
    embedded_ipv4,
    nat64_readings,
    parse_address,
    refusal,
)
from dcr_sidecar.oauth.pkce import make_verifier, s256_challenge
from dcr_sidecar.oauth.retry import backoff_delay, parse_retry_after
from dcr_sidecar.oauth.text import clean_text, safe_url

NOW = 1_700_000_000.0
NO_DB = settings(database=None, deadline=None)

# ---------------------------------------------------------------- PKCE


def test_s256_rfc7636_appendix_b() -> None:
    """The RFC 7636 Appendix B example verifier gives the example challenge."""
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_make_verifier_length_charset_and_uniqueness() -> None:
    """43 characters of the unreserved set (RFC 7636 §4.1), fresh every time."""
    verifiers = {make_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    for verifier in verifiers:
        assert re.fullmatch(r"[A-Za-z0-9\-._~]{43}", verifier)
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", s256_challenge(verifier))


@pytest.mark.parametrize("verifier", ["a" * 43, "~._-" * 32, "Z9" * 64])
def test_s256_accepts_boundary_verifiers(verifier: str) -> None:
    """43 and 128 characters of [A-Za-z0-9-._~] are valid verifiers."""
    assert len(s256_challenge(verifier)) == 43


@pytest.mark.parametrize(
    "verifier",
    [
        pytest.param("a" * 42, id="too-short"),
        pytest.param("a" * 129, id="too-long"),
        pytest.param("a" * 42 + "+", id="plus"),
        pytest.param("a" * 42 + "=", id="padding"),
        pytest.param("a" * 42 + " ", id="space"),
        pytest.param("a" * 42 + "é", id="non-ascii"),
        pytest.param("a" * 43 + "\n", id="trailing-newline"),
        pytest.param("", id="empty"),
    ],
)
def test_s256_rejects_invalid_verifiers(verifier: str) -> None:
    """A verifier outside RFC 7636 §4.1 raises ValueError."""
    with pytest.raises(ValueError, match="code_verifier"):
        s256_challenge(verifier)


# ---------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("120", 120.0, id="seconds"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param(" 7 ", 7.0, id="whitespace"),
        pytest.param(formatdate(NOW + 30, usegmt=True), 30.0, id="http-date-future"),
        pytest.param(formatdate(NOW - 30, usegmt=True), 0.0, id="http-date-past"),
        pytest.param("Tue, 14 Nov 2023 22:13:50 GMT", 30.0, id="literal-http-date"),
    ],
)
def test_parse_retry_after(value: str, expected: float) -> None:
    """delay-seconds or an HTTP-date, as seconds from `now`; a past date means 0."""
    assert parse_retry_after(value, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "soon",
        "-5",
        "1.5",
        "1e3",
        "²",  # a latin-1 decoded header byte: str.isdigit() says yes, float() says no
        "١٢",
        "Tue, 14 Nov 2023 22:13:50",  # no zone
        "Tue, 99 Nov 2023 99:99:99 GMT",
    ],
)
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    """Anything but delay-seconds or a valid zoned HTTP-date gives None."""
    assert parse_retry_after(value, NOW) is None


@NO_DB
@given(
    value=st.text()
    | st.text(alphabet=st.characters(categories=("Nd", "No")), min_size=1)
    | st.text(alphabet="0123456789\u00b2\u00b3\u00b9", min_size=1)  # latin-1 superscripts
    | st.from_regex(r"\A[0-9]{1,400}\Z")
)
def test_parse_retry_after_never_raises(value: str) -> None:
    """Any header text gives None or a non-negative number of seconds."""
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0


# ---------------------------------------------------------------- backoff


@pytest.mark.parametrize(("base", "cap"), [(1.0, 300.0), (0.5, 10.0), (2.0, 2.0)])
def test_backoff_delay_bounded_and_never_negative(base: float, cap: float) -> None:
    """0 ≤ delay ≤ min(cap, base * 2**(n-1)) for any failure count."""
    rng = random.Random(1234)
    for failures in [*range(0, 40), 100, 10_000]:
        # Python floats cannot hold 2**9999; past 2**64 the cap has long been reached.
        ceiling = cap if failures > 64 else min(cap, base * 2 ** max(0, failures - 1))
        for _ in range(20):
            delay = backoff_delay(failures, base=base, cap=cap, rng=rng)
            assert 0 <= delay <= ceiling


def test_backoff_delay_is_full_jitter() -> None:
    """Delays spread over the whole window, not clustered at its top (full jitter)."""
    rng = random.Random(42)
    delays = [backoff_delay(9, base=1, cap=300, rng=rng) for _ in range(500)]
    assert min(delays) < 256 * 0.1
    assert max(delays) > 256 * 0.9


def test_backoff_delay_deterministic_with_a_seed() -> None:
    """The same seed gives the same delays (the rng is the only randomness)."""
    one = [backoff_delay(n, base=1, cap=60, rng=random.Random(7)) for n in range(1, 10)]
    two = [backoff_delay(n, base=1, cap=60, rng=random.Random(7)) for n in range(1, 10)]
    assert one == two


# ---------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("plain text", "plain text", id="plain"),
        pytest.param("a\x00b\x07c\x1bd\x7fe", "abcde", id="c0-and-del"),
        pytest.param("line1\r\nline2\tx", "line1line2x", id="newlines-and-tab"),
        pytest.param("c1\x85\x9bx", "c1x", id="c1"),
        pytest.param("a\u2028b\u2029c", "abc", id="line-separators"),
        pytest.param("abc\u202edcba\u202c", "abcdcba", id="bidi-override"),
        pytest.param("\u202a\u202b\u202d", "", id="bidi-embeddings"),
        pytest.param("x\u2066y\u2067z\u2068w\u2069", "xyzw", id="bidi-isolates"),
        pytest.param("a\u200eb\u200fc\u061cd", "abcd", id="bidi-marks"),
        pytest.param("café 秘密", "café 秘密", id="non-ascii-kept"),
        pytest.param(None, "None", id="non-string"),
    ],
)
def test_clean_text_removes_control_and_bidi_characters(raw: object, expected: str) -> None:
    """Control, separator and bidi characters are removed; other text is kept."""
    assert clean_text(raw) == expected


def test_clean_text_caps_the_length() -> None:
    """Text over the limit is cut to the limit and marked with an ellipsis."""
    assert clean_text("x" * 200) == "x" * 200
    assert clean_text("x" * 201) == "x" * 200 + "…"
    assert clean_text("abcdef", 3) == "abc…"


def test_clean_text_caps_after_removing_controls() -> None:
    """The limit applies to the cleaned text, so controls cannot hide length."""
    assert clean_text("\x00" * 500 + "ok", 10) == "ok"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "https://user:pw@as.test/p/q?code=abc&client_secret=s#frag",
            "https://as.test/p/q",
            id="userinfo-query-fragment",
        ),
        pytest.param("https://as.test:8443/token?x=1", "https://as.test:8443/token", id="port"),
        pytest.param("http://tok@[::1]:8080/x?y#z", "http://[::1]:8080/x", id="ipv6"),
        pytest.param("https://AS.test/Path", "https://as.test/Path", id="host-lowercased"),
        pytest.param("http://[::1", "<unparseable url>", id="unparseable"),
    ],
)
def test_safe_url_drops_userinfo_query_and_fragment(url: str, expected: str) -> None:
    """URLs fit for logs: scheme, host, port and path only."""
    assert safe_url(url) == expected


def test_safe_url_strips_control_characters() -> None:
    """A path with control characters cannot forge log lines."""
    assert "\n" not in safe_url("https://as.test/a%0A\nforged")


# ---------------------------------------------------------------- addresses

# One address inside every BLOCKED_RANGES entry, chosen away from any nested entry and from the
# cloud metadata addresses, so each is classified with its own entry's reason.
SAMPLES: dict[str, str] = {
    "0.0.0.0/8": "0.1.2.3",
    "10.0.0.0/8": "10.20.30.40",
    "100.64.0.0/10": "100.64.0.1",
    "127.0.0.0/8": "127.0.0.1",
    "169.254.0.0/16": "169.254.1.1",
    "172.16.0.0/12": "172.31.255.254",
    "192.0.0.0/24": "192.0.0.8",
    "192.0.2.0/24": "192.0.2.1",
    "192.88.99.0/24": "192.88.99.1",
    "192.168.0.0/16": "192.168.1.1",
    "198.18.0.0/15": "198.19.0.1",
    "198.51.100.0/24": "198.51.100.7",
    "203.0.113.0/24": "203.0.113.9",
    "224.0.0.0/4": "239.255.255.250",
    "240.0.0.0/4": "240.0.0.1",
    "255.255.255.255/32": "255.255.255.255",
    "::/128": "::",
    "::1/128": "::1",
    "::ffff:0:0/96": "::ffff:8.8.8.8",
    "::ffff:0:0:0/96": "::ffff:0:10.0.0.1",
    "::/96": "::1.2.3.4",
    "100::/64": "100::1",
    "2001::/23": "2001:2::1",
    "2001::/32": "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "2001:db8::/32": "2001:db8::1",
    "2002::/16": "2002:c000:204::1",
    "3fff::/20": "3fff::1",
    "fc00::/7": "fd12:3456::1",
    "fe80::/10": "fe80::1",
    "fec0::/10": "fec0::1",
    "ff00::/8": "ff02::1",
    "::/3": "1000::1",
    "4000::/2": "5f00::1",
    "8000::/1": "8000::1",
}


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def _nets(*cidrs: str) -> list[IPNetwork]:
    return [ipaddress.ip_network(c) for c in cidrs]


def test_address_samples_cover_every_blocked_range() -> None:
    """The table below has one sample per BLOCKED_RANGES entry, and each lies inside it."""
    assert set(SAMPLES) == {net for net, _ in BLOCKED_RANGES}
    for net, address in SAMPLES.items():
        assert _ip(address) in ipaddress.ip_network(net)


@pytest.mark.parametrize(("network", "reason"), BLOCKED_RANGES)
def test_classify_every_blocked_range(network: str, reason: str) -> None:
    """An address inside each entry is blocked with that entry's reason."""
    address = _ip(SAMPLES[network])
    assert classify(address) == reason
    assert refusal(address, []) == reason


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "100.63.255.255",  # just below CGN
        "100.128.0.0",  # just above CGN
        "172.32.0.1",  # just above 172.16/12
        "198.20.0.1",  # just above 198.18/15
        "2606:4700:4700::1111",
        "2001:4860:4860::8888",
        "2a00:1450:4001:82b::200e",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    """Public IPv4 and IPv6 addresses are neither classified nor refused."""
    assert classify(_ip(address)) is None
    assert refusal(_ip(address), []) is None


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("64:ff9b::8.8.8.8", None),
        ("64:ff9b::127.0.0.1", "NAT64 of loopback"),
        ("64:ff9b::10.0.0.1", "NAT64 of private"),
        ("64:ff9b::169.254.169.254", "NAT64 of cloud metadata"),
        ("64:ff9b::100.100.100.200", "NAT64 of cloud metadata"),
        ("64:ff9b:1::8.8.8.8", None),  # local-use prefix deployed at /96
        ("64:ff9b:1::192.168.0.1", "NAT64 of private"),
        ("64:ff9b:1:a00:0:100::", "NAT64 of private"),  # 10.0.0.1 at /48 (RFC 6052 §2.2)
        ("64:ff9b:1:a9fe:a9:fe00::", "NAT64 of cloud metadata"),  # 169.254.169.254 at /48
        ("64:ff9b:1::", "NAT64 of this network"),
    ],
)
def test_nat64_judged_by_the_embedded_ipv4(address: str, reason: str | None) -> None:
    """64:ff9b::/96 and 64:ff9b:1::/48 take the verdict of the IPv4 address they embed."""
    assert classify(_ip(address)) == reason
    assert refusal(_ip(address), []) == reason


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("169.254.169.254", ("169.254.0.0/16",)),
        ("169.254.169.254", ("169.254.169.254/32", "0.0.0.0/0")),
        ("100.100.100.200", ("100.64.0.0/10",)),
        ("fd00:ec2::254", ("fc00::/7", "::/0")),
        ("64:ff9b::169.254.169.254", ("169.254.0.0/16", "64:ff9b::/96")),
        ("::ffff:169.254.169.254", ("::ffff:0:0/96", "169.254.0.0/16")),
        ("::169.254.169.254", ("::/96",)),
        ("::ffff:0:169.254.169.254", ("::ffff:0:0:0/96",)),
        ("2002:a9fe:a9fe::1", ("2002::/16",)),  # 6to4
        ("2001:0:a9fe:a9fe::1", ("2001::/32",)),  # Teredo server
        ("2001:0:4136:e378:8000:63bf:5601:5601", ("2001::/32",)),  # Teredo client (RFC 4380)
        ("64:ff9b:1:a9fe:a9:fe00::", ("::/0", "0.0.0.0/0")),  # NAT64 local-use at /48
        ("169.254.170.2", ("169.254.0.0/16",)),
        ("168.63.129.16", ("0.0.0.0/0",)),
    ],
)
def test_cloud_metadata_blocked_even_when_allow_listed(
    address: str, allowed: tuple[str, ...]
) -> None:
    """Metadata addresses (and their NAT64 / IPv4-mapped forms) are refused whatever is allowed."""
    assert refusal(_ip(address), _nets(*allowed)) is not None
    assert "cloud metadata" in (classify(_ip(address)) or "")


def test_metadata_address_list() -> None:
    """The always-blocked list: the instance metadata services (AWS, GCP, Azure, Oracle,
    DigitalOcean, AWS over IPv6, Alibaba), AWS ECS task metadata and Azure WireServer."""
    assert set(METADATA_ADDRESSES) == {"169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                                       "169.254.170.2", "168.63.129.16"}
    for address in METADATA_ADDRESSES:
        assert classify(_ip(address)) == "cloud metadata"


def test_allow_listed_loopback_lifts_only_that_address() -> None:
    """127.0.0.1/32 allows 127.0.0.1 (and its NAT64 form) and nothing else."""
    allowed = _nets("127.0.0.1/32")
    assert refusal(_ip("127.0.0.1"), allowed) is None
    assert refusal(_ip("64:ff9b::127.0.0.1"), allowed) is None
    assert refusal(_ip("127.0.0.2"), allowed) == "loopback"
    assert refusal(_ip("::1"), allowed) == "loopback"
    assert refusal(_ip("10.0.0.1"), allowed) == "private"
    assert refusal(_ip("::ffff:127.0.0.1"), allowed) == "IPv4-mapped"


def test_local_use_nat64_is_read_at_every_rfc6052_length() -> None:
    """64:ff9b:1::/48 may carry the IPv4 address at /48, /56, /64 or /96."""
    assert ipaddress.IPv4Address("10.0.0.1") in nat64_readings(
        ipaddress.IPv6Address("64:ff9b:1:a00:0:100::"))
    assert nat64_readings(ipaddress.IPv6Address("64:ff9b::8.8.8.8")) == (
        ipaddress.IPv4Address("8.8.8.8"),)
    assert nat64_readings(ipaddress.IPv6Address("2001:db8::1")) == ()


# RFC 6052 §2.4's examples of 192.0.2.33, moved under the local-use prefix 64:ff9b:1::/48.
@pytest.mark.parametrize("address", [
    "64:ff9b:1:c000:2:2100::",  # /48
    "64:ff9b:1:c0:0:221::",  # /56
    "64:ff9b:1:0:c0:2:2100:0",  # /64
    "64:ff9b:1::c000:221",  # /96
])
def test_rfc6052_examples_read_back_their_ipv4_address(address: str) -> None:
    parsed = ipaddress.IPv6Address(address)
    assert ipaddress.IPv4Address("192.0.2.33") in nat64_readings(parsed)
    assert classify(parsed) == "NAT64 of TEST-NET-1"


def test_embedded_ipv4_forms() -> None:
    teredo = dict(embedded_ipv4(ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:3fff:fdd2")))
    assert teredo == {"Teredo server": ipaddress.IPv4Address("65.54.227.120"),
                      "Teredo client": ipaddress.IPv4Address("192.0.2.45")}  # RFC 4380 §4
    assert dict(embedded_ipv4(ipaddress.IPv6Address("2002:c000:0201::1"))) == {
        "6to4": ipaddress.IPv4Address("192.0.2.1")}
    assert list(embedded_ipv4(ipaddress.IPv6Address("::1"))) == []


def test_nat64_form_follows_the_allow_list_of_its_ipv4_address_other_forms_do_not() -> None:
    allowed = _nets("127.0.0.1/32")
    assert refusal(_ip("64:ff9b::127.0.0.2"), allowed) == "NAT64 of loopback"
    assert refusal(_ip("2002:7f00:1::1"), allowed) == "6to4"
    assert refusal(_ip("2002:7f00:1::1"), _nets("2002::/16")) is None
    assert refusal(_ip("::ffff:127.0.0.1"), _nets("::ffff:127.0.0.1/128")) is None


@NO_DB
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_non_global_ipv4_address_is_blocked(value: int) -> None:
    """Anything the standard library does not consider global is blocked (and multicast)."""
    address = ipaddress.IPv4Address(value)
    if not address.is_global or address.is_multicast:
        assert classify(address) is not None


@NO_DB
@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_ipv6_outside_global_unicast_is_blocked(value: int) -> None:
    address = ipaddress.IPv6Address(value)
    if address not in ipaddress.ip_network("2000::/3") and not nat64_readings(address):
        assert classify(address) is not None


def test_resolver_and_socket_addresses_parse_with_their_zone() -> None:
    assert classify(parse_address("fe80::1%eth0")) == "link-local"
    assert classify(parse_address("127.0.0.1")) == "loopback"


def test_allow_list_matches_by_ip_version() -> None:
    """An IPv4 allow-list entry never lifts an IPv6 block and vice versa."""
    assert refusal(_ip("fd00::1"), _nets("10.0.0.0/8")) == "unique local"
    assert refusal(_ip("10.0.0.1"), _nets("fc00::/7")) == "private"
    assert refusal(_ip("fd00::1"), _nets("fc00::/7")) is None
