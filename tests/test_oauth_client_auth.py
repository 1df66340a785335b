"""Client authentication encoders (RFC 6749 §2.3) and auth-method choice (design.md §3.3)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcr_sidecar.oauth.auth_method import NoCommonMethod, select_auth_method
from dcr_sidecar.oauth.client_auth import (
    CLIENT_AUTH_PARAMS,
    AuthParts,
    ClientCredentials,
    auth_parts,
    basic_authorization,
    parse_basic,
    strip_client_auth,
)
from dcr_sidecar.oauth.secret import Secret

DEFAULT_PREFERENCE = ("client_secret_basic", "client_secret_post", "none")
S256 = ["S256"]

# ---------------------------------------------------------------- basic_authorization


@pytest.mark.parametrize(
    ("client_id", "secret", "encoded_pair"),
    [
        pytest.param("abc", "xyz", "abc:xyz", id="plain"),
        pytest.param("my client", "pass word", "my+client:pass+word", id="space-is-plus"),
        pytest.param("urn:app:1", "a:b", "urn%3Aapp%3A1:a%3Ab", id="colon"),
        pytest.param("a+b", "c+d", "a%2Bb:c%2Bd", id="plus"),
        pytest.param("100%", "%41", "100%25:%2541", id="percent"),
        pytest.param("https://app.test/c", "x/y", "https%3A%2F%2Fapp.test%2Fc:x%2Fy", id="slash"),
        pytest.param("café", "秘密", "caf%C3%A9:%E7%A7%98%E5%AF%86", id="non-ascii"),
    ],
)
def test_basic_authorization_form_urlencodes_first(
    client_id: str, secret: str, encoded_pair: str
) -> None:
    """id and secret are form-urlencoded before base64 (RFC 6749 §2.3.1), unlike plain Basic."""
    expected = "Basic " + base64.b64encode(encoded_pair.encode("ascii")).decode("ascii")
    assert basic_authorization(client_id, secret) == expected


def test_basic_authorization_hand_computed_value() -> None:
    """A literal, hand-checked value for id and secret holding every special character."""
    # "my client:1/+%é" -> my+client%3A1%2F%2B%25%C3%A9
    # "p@ss w:rd+%/é"   -> p%40ss+w%3Ard%2B%25%2F%C3%A9
    assert basic_authorization("my client:1/+%é", "p@ss w:rd+%/é") == (
        "Basic bXkrY2xpZW50JTNBMSUyRiUyQiUyNSVDMyVBOTpwJTQwc3MrdyUzQXJkJTJCJTI1JTJGJUMzJUE5"
    )


@settings(database=None, deadline=None)
@given(client_id=st.text(), secret=st.text())
def test_basic_round_trip(client_id: str, secret: str) -> None:
    """parse_basic(basic_authorization(id, secret)) gives back id and secret exactly."""
    assert parse_basic(basic_authorization(client_id, secret)) == (client_id, secret)


def test_parse_basic_accepts_any_scheme_case() -> None:
    """The auth scheme is case-insensitive (RFC 9110 §11.1)."""
    value = basic_authorization("id", "s").split(" ", 1)[1]
    assert parse_basic(f"basic {value}") == ("id", "s")
    assert parse_basic(f"BASIC {value}") == ("id", "s")


def _b64(text: bytes) -> str:
    return base64.b64encode(text).decode("ascii")


@pytest.mark.parametrize(
    "header",
    [
        pytest.param("", id="empty"),
        pytest.param("Basic", id="no-credentials"),
        pytest.param("Basic ", id="blank-credentials"),
        pytest.param(f"Bearer {_b64(b'id:secret')}", id="other-scheme"),
        pytest.param("Basic !!!not-base64!!!", id="not-base64"),
        pytest.param("Basic aWQ6c2VjcmV0P", id="bad-padding"),
        pytest.param(f"Basic {_b64(b'no-colon-here')}", id="no-colon"),
        pytest.param(f"Basic {_b64(bytes([0xFF, 0xFE, 0x3A, 0x41]))}", id="not-utf8"),
    ],
)
def test_parse_basic_malformed_returns_none(header: str) -> None:
    """Malformed Authorization values give None, never an exception."""
    assert parse_basic(header) is None


@settings(database=None, deadline=None)
@given(header=st.text())
def test_parse_basic_never_raises(header: str) -> None:
    """Any header text gives a pair of strings or None."""
    result = parse_basic(header)
    assert result is None or all(isinstance(part, str) for part in result)


# ---------------------------------------------------------------- auth_parts


def test_auth_parts_basic_sets_only_the_header() -> None:
    """client_secret_basic: an Authorization header and nothing in the form."""
    parts = auth_parts(ClientCredentials("id 1", Secret("s:2"), "client_secret_basic"))
    assert parts.headers == {"Authorization": basic_authorization("id 1", "s:2")}
    assert parts.form == ()


def test_auth_parts_post_sets_only_the_form() -> None:
    """client_secret_post: client_id and client_secret in the form, no header."""
    parts = auth_parts(ClientCredentials("id", Secret("s"), "client_secret_post"))
    assert dict(parts.headers) == {}
    assert parts.form == (("client_id", "id"), ("client_secret", "s"))


def test_auth_parts_none_sends_only_client_id() -> None:
    """none: only client_id in the form; no header, no secret even when one is held."""
    parts = auth_parts(ClientCredentials("id", Secret("unused"), "none"))
    assert dict(parts.headers) == {}
    assert parts.form == (("client_id", "id"),)


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_auth_parts_secret_methods_need_a_secret(method: str) -> None:
    """A client_secret_* method without a secret is a programming error (ValueError)."""
    with pytest.raises(ValueError, match="needs a client secret"):
        auth_parts(ClientCredentials("id", None, method))


def test_auth_parts_unknown_method() -> None:
    """An unsupported method name raises ValueError naming it."""
    with pytest.raises(ValueError, match="tls_client_auth"):
        auth_parts(ClientCredentials("id", Secret("s"), "tls_client_auth"))


def test_auth_parts_repr_hides_secrets() -> None:
    """AuthParts repr lists names only, never the secret or the Basic value."""
    basic = auth_parts(ClientCredentials("id", Secret("topsecret"), "client_secret_basic"))
    post = auth_parts(ClientCredentials("id", Secret("topsecret"), "client_secret_post"))
    for parts in (basic, post):
        assert isinstance(parts, AuthParts)
        assert "topsecret" not in repr(parts)
    assert basic.headers["Authorization"].split(" ", 1)[1] not in repr(basic)


# ---------------------------------------------------------------- strip_client_auth


def test_strip_client_auth_removes_exactly_the_client_auth_parameters() -> None:
    """client_id, client_secret, client_assertion(_type) go; everything else stays, in order."""
    form = [
        ("grant_type", "authorization_code"),
        ("client_id", "app-placeholder"),
        ("code", "abc"),
        ("client_secret", "app-secret"),
        ("client_assertion", "eyJ.x.y"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("redirect_uri", "https://app.test/cb"),
        ("client_id", "duplicate"),
        ("code_verifier", "v"),
        ("resource", "https://api.test"),
        ("resource", "https://api2.test"),
        ("client_name", "not an auth parameter"),
    ]
    assert strip_client_auth(form) == [
        ("grant_type", "authorization_code"),
        ("code", "abc"),
        ("redirect_uri", "https://app.test/cb"),
        ("code_verifier", "v"),
        ("resource", "https://api.test"),
        ("resource", "https://api2.test"),
        ("client_name", "not an auth parameter"),
    ]


def test_client_auth_params_are_exactly_the_four() -> None:
    """The stripped set is the RFC 6749 §2.3 / RFC 7521 §4.2 parameters, nothing more."""
    assert (
        frozenset({"client_id", "client_secret", "client_assertion", "client_assertion_type"})
        == CLIENT_AUTH_PARAMS
    )


# ---------------------------------------------------------------- select_auth_method


@pytest.mark.parametrize(
    ("preference", "supported", "pkce", "profile", "expected"),
    [
        pytest.param(
            DEFAULT_PREFERENCE,
            None,
            None,
            "auto",
            "client_secret_basic",
            id="absent-list-means-basic",
        ),
        pytest.param(
            ("client_secret_post", "client_secret_basic"),
            None,
            None,
            "auto",
            "client_secret_basic",
            id="absent-list-skips-post",
        ),
        pytest.param(
            DEFAULT_PREFERENCE,
            ["client_secret_post", "client_secret_basic"],
            S256,
            "auto",
            "client_secret_basic",
            id="preference-order-not-as-order",
        ),
        pytest.param(
            ("client_secret_post", "client_secret_basic"),
            ["client_secret_basic", "client_secret_post"],
            None,
            "auto",
            "client_secret_post",
            id="operator-prefers-post",
        ),
        pytest.param(
            DEFAULT_PREFERENCE,
            ["client_secret_post", "none"],
            S256,
            "auto",
            "client_secret_post",
            id="first-supported",
        ),
        pytest.param(DEFAULT_PREFERENCE, ["none"], S256, "auto", "none", id="none-with-s256"),
        pytest.param(
            DEFAULT_PREFERENCE, ["none"], ["plain", "S256"], "public", "none", id="public-with-s256"
        ),
        pytest.param(
            ("none", "client_secret_basic"),
            ["none", "client_secret_basic"],
            None,
            "auto",
            "client_secret_basic",
            id="none-skipped-without-s256",
        ),
        pytest.param(
            ("none", "client_secret_basic"),
            ["none", "client_secret_basic"],
            ["plain"],
            "auto",
            "client_secret_basic",
            id="plain-pkce-is-not-enough",
        ),
        pytest.param(
            ("none", "client_secret_post"),
            ["none", "client_secret_post"],
            S256,
            "confidential",
            "client_secret_post",
            id="confidential-never-none",
        ),
    ],
)
def test_select_auth_method(
    preference: tuple[str, ...],
    supported: list[str] | None,
    pkce: list[str] | None,
    profile: str,
    expected: str,
) -> None:
    """The first preferred method the AS offers and the profile allows; none only with S256."""
    assert select_auth_method(preference, supported, pkce, profile) == expected


@pytest.mark.parametrize("pkce", [None, [], ["plain"]])
def test_select_public_profile_without_s256_fails(pkce: list[str] | None) -> None:
    """A public client without S256 PKCE at the AS is refused before anything is registered."""
    with pytest.raises(NoCommonMethod, match="S256"):
        select_auth_method(DEFAULT_PREFERENCE, ["client_secret_basic", "none"], pkce, "public")


def test_select_confidential_profile_with_only_none_fails() -> None:
    """confidential never falls back to none, even when it is all the AS offers."""
    with pytest.raises(NoCommonMethod, match="none"):
        select_auth_method(DEFAULT_PREFERENCE, ["none"], S256, "confidential")


def test_select_no_common_method_lists_what_the_as_offers() -> None:
    """The error names the AS's methods and why each preferred one was skipped."""
    with pytest.raises(NoCommonMethod) as info:
        select_auth_method(
            ("client_secret_basic", "client_secret_post"),
            ["private_key_jwt", "tls_client_auth"],
            S256,
        )
    message = str(info.value)
    assert "the AS offers private_key_jwt, tls_client_auth" in message
    assert "client_secret_basic (not offered by the AS)" in message
    assert "client_secret_post (not offered by the AS)" in message


def test_select_empty_as_list_says_nothing_offered() -> None:
    """An empty supported list is not 'absent': nothing is offered, and the message says so."""
    with pytest.raises(NoCommonMethod, match="offers nothing"):
        select_auth_method(DEFAULT_PREFERENCE, [], S256)
