"""AS metadata: discovery URL candidates, issuer derivation, validation and caching
(RFC 8414 §3, §3.3; OIDC Discovery §4; design.md §3.1)."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.metadata import (
    LIST_MEMBERS,
    URL_MEMBERS,
    IssuerMismatch,
    Metadata,
    cache_lifetime,
    issuer_candidates,
    issuer_from_discovery_url,
    synthesized_registration_endpoint,
    validate_metadata,
)

ISSUER = "https://as.example.test/realms/main"
NO_DB = settings(database=None, deadline=None)

# JSON values as json.loads produces them (NaN/Infinity included: Python's parser accepts them).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


def _doc(**members: Any) -> dict[str, Any]:
    return {"issuer": ISSUER, "token_endpoint": f"{ISSUER}/token", **members}


# ---------------------------------------------------------------- issuer_candidates


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        pytest.param(
            "https://as.test",
            [
                "https://as.test/.well-known/oauth-authorization-server",
                "https://as.test/.well-known/openid-configuration",
            ],
            id="root",
        ),
        pytest.param(
            "https://as.test/",
            [
                "https://as.test/.well-known/oauth-authorization-server",
                "https://as.test/.well-known/openid-configuration",
            ],
            id="root-trailing-slash",
        ),
        pytest.param(
            "https://as.test/tenant",
            [
                "https://as.test/.well-known/oauth-authorization-server/tenant",
                "https://as.test/.well-known/openid-configuration/tenant",
                "https://as.test/tenant/.well-known/openid-configuration",
            ],
            id="path",
        ),
        pytest.param(
            "https://as.test/tenant/",
            [
                "https://as.test/.well-known/oauth-authorization-server/tenant",
                "https://as.test/.well-known/openid-configuration/tenant",
                "https://as.test/tenant/.well-known/openid-configuration",
            ],
            id="path-trailing-slash-stripped",
        ),
        pytest.param(
            "https://as.test:8443",
            [
                "https://as.test:8443/.well-known/oauth-authorization-server",
                "https://as.test:8443/.well-known/openid-configuration",
            ],
            id="port",
        ),
        pytest.param(
            "https://kc.test:8443/realms/main",
            [
                "https://kc.test:8443/.well-known/oauth-authorization-server/realms/main",
                "https://kc.test:8443/.well-known/openid-configuration/realms/main",
                "https://kc.test:8443/realms/main/.well-known/openid-configuration",
            ],
            id="keycloak-realm",
        ),
    ],
)
def test_issuer_candidates(issuer: str, expected: list[str]) -> None:
    """RFC 8414 insertion, OIDC insertion, then OIDC appending, in that order."""
    assert issuer_candidates(issuer) == expected


_SEGMENT = st.text(
    alphabet=st.sampled_from("abcXYZ019-._~%:@!$&'()*+,;=?#/ é"), min_size=0, max_size=12
)


@NO_DB
@given(
    scheme=st.sampled_from(["https", "http"]),
    host=st.sampled_from(["as.test", "127.0.0.1", "[::1]", "a-b.example.test"]),
    port=st.none() | st.integers(min_value=1, max_value=65535),
    segments=st.lists(_SEGMENT, max_size=4),
    trailing=st.booleans(),
)
def test_issuer_candidates_stay_on_the_issuer_origin(
    scheme: str, host: str, port: int | None, segments: list[str], trailing: bool
) -> None:
    """Whatever the path holds, every candidate has the issuer's scheme, host and port."""
    netloc = host if port is None else f"{host}:{port}"
    path = "".join("/" + s for s in segments) + ("/" if trailing else "")
    issuer = f"{scheme}://{netloc}{path}"
    origin = urlsplit(issuer)
    candidates = issuer_candidates(issuer)
    assert candidates
    for candidate in candidates:
        parts = urlsplit(candidate)
        assert (parts.scheme, parts.hostname, parts.port) == (
            origin.scheme,
            origin.hostname,
            origin.port,
        )
        assert "/.well-known/" in parts.path


# ---------------------------------------------------------------- issuer_from_discovery_url


@pytest.mark.parametrize(
    ("url", "issuer"),
    [
        pytest.param(
            "https://as.test/.well-known/openid-configuration", "https://as.test", id="oidc-root"
        ),
        pytest.param(
            "https://as.test/.well-known/oauth-authorization-server",
            "https://as.test",
            id="oauth-root",
        ),
        pytest.param(
            "https://as.test/.well-known/oauth-authorization-server/realms/main",
            "https://as.test/realms/main",
            id="rfc8414-insertion",
        ),
        pytest.param(
            "https://as.test/.well-known/openid-configuration/tenant",
            "https://as.test/tenant",
            id="oidc-insertion",
        ),
        pytest.param(
            "https://kc.test:8443/realms/main/.well-known/openid-configuration",
            "https://kc.test:8443/realms/main",
            id="oidc-appended",
        ),
        pytest.param(
            "https://as.test/realms/main/.well-known/oauth-authorization-server",
            "https://as.test/realms/main",
            id="oauth-appended",
        ),
    ],
)
def test_issuer_from_discovery_url(url: str, issuer: str) -> None:
    """The well-known suffix or RFC 8414 insertion is removed; scheme, host and port kept."""
    assert issuer_from_discovery_url(url) == issuer


def test_issuer_from_discovery_url_inverts_issuer_candidates() -> None:
    """Every candidate built for an issuer leads back to that issuer."""
    for issuer in ("https://as.test", "https://kc.test:8443/realms/main"):
        for candidate in issuer_candidates(issuer):
            assert issuer_from_discovery_url(candidate) == issuer


# ---------------------------------------------------------------- validate_metadata


def test_validate_metadata_accepts_a_minimal_document() -> None:
    """A JSON object with the exact issuer and a token_endpoint is accepted as is."""
    doc = _doc(registration_endpoint=f"{ISSUER}/register", scopes_supported=["openid"])
    meta = validate_metadata(doc, ISSUER)
    assert isinstance(meta, Metadata)
    assert meta.issuer == ISSUER
    assert meta.token_endpoint == f"{ISSUER}/token"
    assert meta.registration_endpoint == f"{ISSUER}/register"
    assert meta.get_list("scopes_supported") == ["openid"]
    assert meta.get_list("code_challenge_methods_supported") is None


@pytest.mark.parametrize(
    ("received", "expected"),
    [
        pytest.param(ISSUER + "/", ISSUER, id="extra-trailing-slash"),
        pytest.param(ISSUER, ISSUER + "/", id="missing-trailing-slash"),
        pytest.param(ISSUER.upper(), ISSUER, id="case"),
        pytest.param("https://as.example.test:443/realms/main", ISSUER, id="default-port"),
    ],
)
def test_validate_metadata_requires_the_identical_issuer(received: str, expected: str) -> None:
    """RFC 8414 §3.3: no normalisation; the message shows both strings side by side."""
    with pytest.raises(IssuerMismatch) as info:
        validate_metadata({**_doc(), "issuer": received}, expected)
    message = str(info.value)
    assert repr(expected) in message
    assert repr(received) in message
    assert info.value.expected == expected
    assert info.value.received == received


def test_validate_metadata_missing_issuer_is_a_mismatch() -> None:
    """A document without issuer is refused as a mismatch against the configured one."""
    doc = _doc()
    del doc["issuer"]
    with pytest.raises(IssuerMismatch, match="expected"):
        validate_metadata(doc, ISSUER)


def test_issuer_mismatch_message_strips_control_characters() -> None:
    """The received issuer is AS-controlled: control characters never reach the message."""
    with pytest.raises(IssuerMismatch) as info:
        validate_metadata({**_doc(), "issuer": "https://evil.test/\x1b[2J\r\nlog: forged"}, ISSUER)
    assert "\x1b" not in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("document", "match"),
    [
        pytest.param(["not", "an", "object"], "not a JSON object", id="list"),
        pytest.param("a string", "not a JSON object", id="string"),
        pytest.param(None, "not a JSON object", id="null"),
        pytest.param({"issuer": ISSUER}, "no token_endpoint", id="missing-token-endpoint"),
        pytest.param(
            _doc(token_endpoint="/relative/token"), "token_endpoint", id="relative-token-endpoint"
        ),
        pytest.param(
            _doc(registration_endpoint="ftp://as.test/register"),
            "registration_endpoint is not an absolute http",
            id="non-http-url",
        ),
        pytest.param(
            _doc(authorization_endpoint=42), "authorization_endpoint", id="url-not-a-string"
        ),
        pytest.param(
            _doc(jwks_uri="https://as.test/jwks#frag"), "jwks_uri", id="url-with-fragment"
        ),
        pytest.param(
            _doc(token_endpoint_auth_methods_supported="client_secret_basic"),
            "token_endpoint_auth_methods_supported is not a list of strings",
            id="auth-methods-not-a-list",
        ),
        pytest.param(
            _doc(code_challenge_methods_supported=["S256", 1]),
            "code_challenge_methods_supported is not a list of strings",
            id="list-with-a-non-string",
        ),
    ],
)
def test_validate_metadata_rejects(document: object, match: str) -> None:
    """Malformed documents fail with a ProtocolError naming the problem."""
    with pytest.raises(ProtocolError, match=match):
        validate_metadata(document, ISSUER)


@pytest.mark.parametrize("member", URL_MEMBERS)
@pytest.mark.parametrize("char", ["\x00", "\x0b", "\x7f", "\x1b", "\x85", " ", "\t", "\n"])
def test_validate_metadata_rejects_control_and_space_characters_naming_the_member(
        member: str, char: str) -> None:
    """NUL, VT, DEL, ESC (any C0/C1 control) and whitespace have no place in a URL (RFC 3986
    §2); urlsplit keeps most of them, so they are refused here, naming the member."""
    document = _doc(**{member: f"{ISSUER}/end{char}point"})
    with pytest.raises(ProtocolError, match=f"metadata member {member} ") as caught:
        validate_metadata(document, ISSUER)
    assert char == " " or char not in str(caught.value)


@NO_DB
@given(document=JSON)
def test_validate_metadata_on_any_json_raises_only_protocol_error(document: object) -> None:
    """Arbitrary JSON (wrong issuer included) is accepted or refused, never crashes."""
    with contextlib.suppress(ProtocolError):
        validate_metadata(document, ISSUER)


@NO_DB
@given(
    members=st.dictionaries(
        st.sampled_from([*URL_MEMBERS, *LIST_MEMBERS, "other"]), JSON, max_size=6
    ),
    url_like=st.dictionaries(
        st.sampled_from(URL_MEMBERS),
        st.text(alphabet=st.sampled_from("htps:/[]@%#?.a1é\x00 "), max_size=30),
        max_size=4,
    ),
)
def test_validate_metadata_with_the_right_issuer_raises_only_protocol_error(
    members: dict[str, Any], url_like: dict[str, str]
) -> None:
    """Past the issuer check, any member values are accepted or refused, never crash."""
    document = {**members, **url_like, "issuer": ISSUER}
    try:
        meta = validate_metadata(document, ISSUER)
    except ProtocolError:
        return
    assert isinstance(meta.token_endpoint, str)


# ---------------------------------------------------------------- cache_lifetime


@pytest.mark.parametrize(
    ("cache_control", "expected"),
    [
        pytest.param(None, 3600, id="absent"),
        pytest.param("", 3600, id="empty"),
        pytest.param("public", 3600, id="no-max-age"),
        pytest.param("max-age=600", 600, id="within-bounds"),
        pytest.param("public, max-age=600", 600, id="with-other-directives"),
        pytest.param('max-age="600"', 600, id="quoted"),
        pytest.param("MAX-AGE=600", 600, id="case-insensitive"),
        pytest.param("max-age=5", 60, id="clamped-to-min"),
        pytest.param("max-age=0", 60, id="zero-clamped-to-min"),
        pytest.param("max-age=999999", 3600, id="clamped-to-max"),
        pytest.param("s-maxage=600", 3600, id="s-maxage-is-not-max-age"),
        pytest.param("no-store", 60, id="no-store"),
        pytest.param("max-age=600, no-store", 60, id="no-store-wins"),
        pytest.param("no-cache", 60, id="no-cache"),
        pytest.param("max-age=abc", 3600, id="garbage-max-age"),
    ],
)
def test_cache_lifetime(cache_control: str | None, expected: float) -> None:
    """Cache-Control max-age clamped to [min_ttl, max_ttl]; no-store → min; absent → max."""
    assert cache_lifetime(cache_control, min_ttl=60, max_ttl=3600) == expected


# ---------------------------------------------------------------- synthesized registration


@pytest.mark.parametrize(
    ("issuer", "expected"),
    [
        pytest.param("https://as.test", "https://as.test/register", id="root"),
        pytest.param("https://as.test/", "https://as.test/register", id="root-slash"),
        pytest.param(
            "https://kc.test:8443/realms/main",
            "https://kc.test:8443/realms/main/register",
            id="path-kept",
        ),
        pytest.param("https://as.test/tenant/", "https://as.test/tenant/register", id="path-slash"),
    ],
)
def test_synthesized_registration_endpoint_keeps_the_issuer_path(
    issuer: str, expected: str
) -> None:
    """`{issuer}/register` with the issuer's path (design.md §3.1), no doubled slash."""
    assert synthesized_registration_endpoint(issuer) == expected
