"""RFC 7591 registration: fingerprint, request body and the §3.2.1 response rules (design §3.2)."""

from __future__ import annotations

import contextlib
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.lifetime import MAX_TIMESTAMP, management_fields, renew_at
from dcr_sidecar.oauth.registration import (
    InsufficientResponse,
    RegisteredClient,
    RegistrationErrorResponse,
    RegistrationProfile,
    build_request,
    check_response,
    fingerprint,
    management_of,
    parse_error_response,
)
from dcr_sidecar.oauth.secret import Secret

REG = "https://as.test/realms/main/clients-registrations/openid-connect"
REDIRECT = "https://app.test/callback"
NO_DB = settings(database=None, deadline=None)

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
# JSON values as json.loads produces them (NaN/Infinity included: Python's parser accepts them).
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


def _profile(**changes: Any) -> RegistrationProfile:
    base = RegistrationProfile(
        redirect_uris=(REDIRECT,),
        grant_types=("authorization_code", "refresh_token"),
        response_types=("code",),
        scopes=("openid", "profile"),
        auth_methods=("client_secret_basic", "client_secret_post", "none"),
        client_metadata={"client_name": "demo"},
    )
    return dataclasses.replace(base, **changes)


def _request(method: str = "client_secret_basic", **changes: Any) -> dict[str, Any]:
    return build_request(_profile(**changes), method)


def _answer(request: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A compliant 201 body: every requested field echoed, plus the issued credentials."""
    answer: dict[str, Any] = {
        **request,
        "client_id": "client-1",
        "client_secret": "s3cret",
        "client_secret_expires_at": 0,
        "client_id_issued_at": 1_700_000_000,
    }
    answer.update(changes)
    return {k: v for k, v in answer.items() if v is not None}


def _check(answer: object, request: dict[str, Any], **kwargs: Any) -> RegisteredClient:
    return check_response(answer, request, registration_endpoint=REG, **kwargs)


# ---------------------------------------------------------------- fingerprint


@pytest.mark.parametrize(
    "scopes",
    [
        ("profile", "openid"),
        ("openid", "profile", "openid"),
        ("profile", "profile", "openid", "openid"),
    ],
)
def test_fingerprint_ignores_scope_order_and_duplicates(scopes: tuple[str, ...]) -> None:
    """Scopes are canonicalised (sorted, de-duplicated) before hashing."""
    assert fingerprint(_profile(scopes=scopes)) == fingerprint(_profile())


def test_fingerprint_is_a_sha256_hex_digest_and_stable() -> None:
    """The same profile gives the same 64-hex-digit fingerprint."""
    value = fingerprint(_profile())
    assert value == fingerprint(_profile())
    assert len(value) == 64
    int(value, 16)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"scopes": ("openid",)}, id="scope-removed"),
        pytest.param({"scopes": ()}, id="no-scope"),
        pytest.param({"redirect_uris": ("https://app.test/other",)}, id="redirect-changed"),
        pytest.param({"redirect_uris": (REDIRECT, "https://app.test/2")}, id="redirect-added"),
        pytest.param({"grant_types": ("authorization_code",)}, id="grant-removed"),
        pytest.param(
            {"grant_types": ("authorization_code", "refresh_token", "client_credentials")},
            id="grant-added",
        ),
        pytest.param({"response_types": ()}, id="response-types"),
        pytest.param(
            {"auth_methods": ("client_secret_post", "client_secret_basic", "none")},
            id="auth-method-preference-order",
        ),
        pytest.param({"auth_methods": ("client_secret_basic",)}, id="auth-method-removed"),
        pytest.param({"client_profile": "confidential"}, id="client-profile"),
        pytest.param({"client_metadata": {"client_name": "other"}}, id="client-metadata-value"),
        pytest.param(
            {"client_metadata": {"client_name": "demo", "tos_uri": "https://app.test/tos"}},
            id="client-metadata-key",
        ),
        pytest.param({"client_metadata": {}}, id="client-metadata-empty"),
        pytest.param({"software_statement": Secret("eyJ.a.b")}, id="software-statement-added"),
        pytest.param({"application_type": "native"}, id="application-type"),
    ],
)
def test_fingerprint_changes_with_the_registration(changes: dict[str, Any]) -> None:
    """Any change of what would be registered gives a new fingerprint (design.md §3.4)."""
    assert fingerprint(_profile(**changes)) != fingerprint(_profile())


def test_fingerprint_distinguishes_software_statements() -> None:
    """Two different software statements give two fingerprints."""
    one = _profile(software_statement=Secret("eyJ.one.sig"))
    two = _profile(software_statement=Secret("eyJ.two.sig"))
    assert fingerprint(one) != fingerprint(two)


def test_fingerprint_profile_has_no_jwks() -> None:
    """The jwks is never part of the fingerprint: the profile has no field for it."""
    names = {f.name for f in dataclasses.fields(RegistrationProfile)}
    assert not {"jwks", "jwks_uri"} & names


# ---------------------------------------------------------------- build_request


def test_build_request_sorts_and_deduplicates_scope() -> None:
    """`scope` is one space-separated string, sorted and de-duplicated."""
    body = _request(scopes=("profile", "openid", "profile", "email"))
    assert body["scope"] == "email openid profile"


def test_build_request_without_scopes_sends_no_scope() -> None:
    """No configured scope → no `scope` member at all (never "all of scopes_supported")."""
    assert "scope" not in _request(scopes=())


def test_build_request_carries_the_owned_fields() -> None:
    """Redirect URIs, grant and response types, the chosen auth method and application_type."""
    body = _request("client_secret_post")
    assert body == {
        "client_name": "demo",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_post",
        "application_type": "web",
        "scope": "openid profile",
    }


def test_build_request_owned_keys_win_over_client_metadata() -> None:
    """client_metadata cannot override what the sidecar derives itself."""
    sneaky = {
        "client_name": "demo",
        "redirect_uris": ["https://evil.test/cb"],
        "grant_types": ["implicit"],
        "token_endpoint_auth_method": "none",
        "application_type": "native",
    }
    body = _request("client_secret_basic", client_metadata=sneaky)
    assert body["redirect_uris"] == [REDIRECT]
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["application_type"] == "web"
    assert body["client_name"] == "demo"


def test_build_request_sends_the_software_statement_revealed() -> None:
    """The software statement is sent as its JWT string, not the masked form."""
    body = _request(software_statement=Secret("eyJ.payload.sig"))
    assert body["software_statement"] == "eyJ.payload.sig"
    assert "software_statement" not in _request()


@pytest.mark.parametrize(
    ("redirect_uris", "expected"),
    [
        pytest.param(("https://app.test/cb",), "web", id="https"),
        pytest.param(("http://app.test/cb",), "web", id="http-non-loopback"),
        pytest.param(("http://127.0.0.1:8080/cb",), "native", id="loopback-v4"),
        pytest.param(("http://127.0.0.2/cb",), "native", id="loopback-v4-range"),
        pytest.param(("http://[::1]:8080/cb",), "native", id="loopback-v6"),
        pytest.param(("http://localhost:3000/cb",), "native", id="localhost"),
        pytest.param(("com.example.app:/oauth2redirect",), "native", id="custom-scheme"),
        pytest.param((), "web", id="none"),
    ],
)
def test_build_request_derives_application_type(
    redirect_uris: tuple[str, ...], expected: str
) -> None:
    """native for loopback or custom-scheme redirects, web otherwise (OIDC Registration §2)."""
    assert _request(redirect_uris=redirect_uris)["application_type"] == expected


def test_build_request_explicit_application_type_wins() -> None:
    """A configured application_type is sent as is, not derived."""
    body = _request(redirect_uris=("http://127.0.0.1/cb",), application_type="web")
    assert body["application_type"] == "web"


# ---------------------------------------------------------------- check_response: passes


def test_check_response_accepts_a_compliant_answer() -> None:
    """All rules pass: credentials are returned, secrets wrapped, no warnings."""
    request = _request()
    client = _check(
        _answer(
            request,
            registration_access_token="rat",
            registration_client_uri=f"{REG}/client-1",
            client_secret_expires_at=1_800_000_000,
        ),
        request,
    )
    assert client.client_id == "client-1"
    assert client.client_secret == Secret("s3cret")
    assert client.token_endpoint_auth_method == "client_secret_basic"
    assert client.client_secret_expires_at == 1_800_000_000
    assert client.client_id_issued_at == 1_700_000_000
    assert client.registration_access_token == Secret("rat")
    assert client.registration_client_uri == f"{REG}/client-1"
    assert client.warnings == ()


# ---------------------------------------------------------------- check_response: one rule each


@pytest.mark.parametrize("client_id", [None, "", 42])
def test_rule_client_id_required(client_id: object) -> None:
    """client_id missing, empty or not a string → InsufficientResponse."""
    request = _request()
    answer = _answer(request)
    answer["client_id"] = client_id
    with pytest.raises(InsufficientResponse, match="client_id"):
        _check(answer, request)


@pytest.mark.parametrize(
    "method", ["tls_client_auth", "self_signed_tls_client_auth", "client_secret_jwt"]
)
def test_rule_echoed_method_must_be_performable(method: str) -> None:
    """An auth method the sidecar cannot perform → fail, naming the method."""
    request = _request()
    with pytest.raises(InsufficientResponse, match=method):
        _check(_answer(request, token_endpoint_auth_method=method), request)


def test_rule_omitted_method_means_client_secret_basic() -> None:
    """No method echoed → client_secret_basic (RFC 7591 §2), which needs a secret."""
    request = _request("none")
    answer = _answer(request, client_secret=None)
    del answer["token_endpoint_auth_method"]
    with pytest.raises(InsufficientResponse, match="client_secret_basic"):
        _check(answer, request)
    answer["client_secret"] = "s3cret"
    assert _check(answer, request).token_endpoint_auth_method == "client_secret_basic"


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
@pytest.mark.parametrize("secret", [None, ""])
def test_rule_secret_required_for_client_secret_methods(method: str, secret: str | None) -> None:
    """client_secret_* without a client_secret → fail."""
    request = _request(method)
    answer = _answer(request, token_endpoint_auth_method=method)
    answer["client_secret"] = secret
    with pytest.raises(InsufficientResponse, match="no client_secret"):
        _check(answer, request)


def test_rule_public_client_needs_no_secret() -> None:
    """`none` passes without a secret and keeps none."""
    request = _request("none")
    client = _check(_answer(request, client_secret=None, client_secret_expires_at=None), request)
    assert client.client_secret is None
    assert client.token_endpoint_auth_method == "none"
    assert client.warnings == ()


@pytest.mark.parametrize(
    "echoed",
    [
        pytest.param(None, id="absent"),
        pytest.param([], id="empty"),
        pytest.param(["https://app.test/other"], id="replaced"),
        pytest.param(REDIRECT, id="not-a-list"),
    ],
)
def test_rule_every_registered_redirect_uri_echoed(echoed: object) -> None:
    """A registered redirect URI missing from the answer → fail, naming it."""
    request = _request(redirect_uris=(REDIRECT, "https://app.test/second"))
    answer = _answer(request)
    answer["redirect_uris"] = echoed
    with pytest.raises(InsufficientResponse, match="redirect URIs"):
        _check(answer, request)


def test_rule_partially_echoed_redirect_uris_fail() -> None:
    """One of two redirect URIs dropped → fail naming the dropped one only."""
    request = _request(redirect_uris=(REDIRECT, "https://app.test/second"))
    answer = _answer(request, redirect_uris=[REDIRECT])
    with pytest.raises(InsufficientResponse) as info:
        _check(answer, request)
    assert "https://app.test/second" in str(info.value)
    assert REDIRECT not in str(info.value)


def test_rule_grant_types_echoed_without_a_requested_one() -> None:
    """grant_types echoed but missing refresh_token → fail."""
    request = _request()
    with pytest.raises(InsufficientResponse, match="refresh_token"):
        _check(_answer(request, grant_types=["authorization_code"]), request)


def test_rule_grant_types_not_a_list() -> None:
    """grant_types echoed as a non-list → fail."""
    request = _request()
    with pytest.raises(InsufficientResponse, match="grant_types"):
        _check(_answer(request, grant_types="authorization_code refresh_token"), request)


def test_rule_grant_types_omitted_is_only_a_warning() -> None:
    """grant_types not echoed at all → not a failure (the rule applies when echoed)."""
    request = _request()
    answer = _answer(request)
    del answer["grant_types"]
    client = _check(answer, request)
    assert client.client_id == "client-1"


def test_rule_secret_expiry_absent_means_never_with_a_warning() -> None:
    """client_secret_expires_at absent with a secret → 0 and a warning."""
    request = _request()
    client = _check(_answer(request, client_secret_expires_at=None), request)
    assert client.client_secret_expires_at == 0
    assert any("client_secret_expires_at" in w for w in client.warnings)


@pytest.mark.parametrize("expires", [float("inf"), float("nan"), "soon", True, [1]])
def test_rule_secret_expiry_must_be_a_finite_number(expires: object) -> None:
    """A non-numeric or non-finite expiry (json.loads accepts Infinity/NaN) → fail, no crash."""
    request = _request()
    with pytest.raises(InsufficientResponse, match="client_secret_expires_at"):
        _check(_answer(request, client_secret_expires_at=expires), request)


@pytest.mark.parametrize(
    ("uri", "allow_http"),
    [
        pytest.param("https://other.test/reg/client-1", (), id="other-host"),
        pytest.param("https://as.test:8443/reg/client-1", (), id="other-port"),
        pytest.param("http://as.test/reg/client-1", (), id="plain-http"),
        pytest.param("http://as.test/reg/client-1", ("other.test",), id="http-other-allowed"),
        pytest.param("not a url", (), id="garbage"),
        pytest.param("https://as.test:99999/reg", (), id="bad-port"),
    ],
)
def test_rule_management_uri_on_another_origin_is_dropped(
    uri: str, allow_http: tuple[str, ...]
) -> None:
    """registration_client_uri not https on the endpoint's origin → RFC 7592 fields dropped."""
    request = _request()
    answer = _answer(request, registration_access_token="rat", registration_client_uri=uri)
    client = _check(answer, request, allow_http_hosts=allow_http)
    assert client.registration_access_token is None
    assert client.registration_client_uri is None
    assert any("registration_client_uri" in w for w in client.warnings)
    assert client.client_id == "client-1"


@pytest.mark.parametrize(
    ("endpoint", "uri", "allow_http"),
    [
        pytest.param(REG, f"{REG}/client-1", (), id="same-origin"),
        pytest.param(REG, "https://as.test:443/reg/client-1", (), id="explicit-default-port"),
        pytest.param(
            "http://127.0.0.1:8080/reg",
            "http://127.0.0.1:8080/reg/client-1",
            ("127.0.0.1",),
            id="allow-listed-http",
        ),
    ],
)
def test_rule_management_uri_kept_on_the_same_secure_origin(
    endpoint: str, uri: str, allow_http: tuple[str, ...]
) -> None:
    """Same origin (default ports equal) and https or allow-listed http → fields kept."""
    request = _request()
    answer = _answer(request, registration_access_token="rat", registration_client_uri=uri)
    client = check_response(
        answer, request, registration_endpoint=endpoint, allow_http_hosts=allow_http
    )
    assert client.registration_client_uri == uri
    assert client.registration_access_token == Secret("rat")
    assert client.warnings == ()


def test_rule_management_needs_both_token_and_uri() -> None:
    """A registration_client_uri without an access token gives no management."""
    request = _request()
    client = _check(_answer(request, registration_client_uri=f"{REG}/client-1"), request)
    assert client.registration_client_uri is None
    assert client.registration_access_token is None


@pytest.mark.parametrize("field", ["client_name", "application_type", "response_types", "scope"])
def test_rule_dropped_optional_field_is_a_warning(field: str) -> None:
    """A requested field the AS dropped → a warning naming it, not a failure."""
    request = _request()
    answer = _answer(request)
    del answer[field]
    client = _check(answer, request)
    assert client.client_id == "client-1"
    assert any(field in w for w in client.warnings)


def test_rule_changed_scope_is_a_warning() -> None:
    """A different registered scope → a warning; the same set in another order → none."""
    request = _request()
    assert _check(_answer(request, scope="profile openid"), request).warnings == ()
    client = _check(_answer(request, scope="openid"), request)
    assert any("scope" in w for w in client.warnings)


@pytest.mark.parametrize("document", [None, [], "ok", 201])
def test_check_response_requires_an_object(document: object) -> None:
    """A non-object answer → InsufficientResponse."""
    with pytest.raises(InsufficientResponse, match="not a JSON object"):
        _check(document, _request())


def test_registered_client_repr_hides_secrets() -> None:
    """The secret and the registration access token are masked in repr."""
    request = _request()
    client = _check(
        _answer(request, registration_access_token="rat-value", registration_client_uri=f"{REG}/c"),
        request,
    )
    assert "s3cret" not in repr(client)
    assert "rat-value" not in repr(client)


@NO_DB
@given(document=JSON)
def test_check_response_on_any_json_raises_only_protocol_errors(document: object) -> None:
    """Arbitrary JSON answers never raise TypeError/KeyError/AttributeError and the like."""
    with contextlib.suppress(ProtocolError):
        check_response(document, _request(), registration_endpoint=REG)


# Values that break naive code: non-finite and huge numbers, empty containers, wrong types.
EDGE_VALUES: list[object] = [
    float("inf"),
    float("-inf"),
    float("nan"),
    1e308,
    -0.0,
    2**64,
    -1,
    True,
    "",
    [],
    {},
    None,
]
EDGE = st.sampled_from(EDGE_VALUES)
ANSWER_KEYS = [
    "client_id",
    "client_secret",
    "token_endpoint_auth_method",
    "client_secret_expires_at",
    "client_id_issued_at",
    "redirect_uris",
    "grant_types",
    "scope",
    "registration_access_token",
    "registration_client_uri",
]
_KEYS = st.sampled_from(ANSWER_KEYS)


@pytest.mark.parametrize("value", EDGE_VALUES, ids=repr)
@pytest.mark.parametrize("key", ANSWER_KEYS)
def test_check_response_edge_value_in_any_member(key: str, value: object) -> None:
    """Each member of a compliant answer replaced by an edge value: a result or a refusal."""
    request = _request()
    document = {
        **_answer(request, registration_access_token="rat", registration_client_uri=f"{REG}/c"),
        key: value,
    }
    try:
        client = check_response(document, request, registration_endpoint=REG)
    except InsufficientResponse:
        return
    assert isinstance(client.client_secret_expires_at, int)
    assert isinstance(client.client_id_issued_at, int | None)


@NO_DB
@given(members=st.dictionaries(_KEYS, EDGE | SCALARS | JSON), base=st.booleans())
def test_check_response_on_mutated_answers_raises_only_protocol_errors(
    members: dict[str, Any], base: bool
) -> None:
    """Known members with arbitrary JSON values: a result or an InsufficientResponse."""
    request = _request()
    document = {**(_answer(request) if base else {}), **members}
    try:
        client = check_response(document, request, registration_endpoint=REG)
    except InsufficientResponse:
        return
    assert isinstance(client.client_id, str)
    assert client.client_id
    assert isinstance(client.client_secret_expires_at, int)


# ---------------------------------------------------------------- parse_error_response


@pytest.mark.parametrize(
    ("status", "document", "error", "description"),
    [
        pytest.param(
            400,
            {"error": "invalid_redirect_uri", "error_description": "bad redirect"},
            "invalid_redirect_uri",
            "bad redirect",
            id="invalid-redirect-uri",
        ),
        pytest.param(
            400,
            {"error": "invalid_client_metadata"},
            "invalid_client_metadata",
            None,
            id="no-description",
        ),
        pytest.param(
            400,
            {"error": "invalid_software_statement", "error_description": "expired"},
            "invalid_software_statement",
            "expired",
            id="invalid-software-statement",
        ),
        pytest.param(
            403,
            {"error": "unapproved_software_statement"},
            "unapproved_software_statement",
            None,
            id="unapproved-software-statement",
        ),
        pytest.param(401, {"error": "invalid_token"}, "invalid_token", None, id="bad-iat"),
        pytest.param(400, {"error": 7, "error_description": ["x"]}, None, None, id="wrong-types"),
        pytest.param(500, "<html>oops</html>", None, None, id="non-json"),
        pytest.param(502, None, None, None, id="empty-body"),
        pytest.param(400, ["error"], None, None, id="json-array"),
    ],
)
def test_parse_error_response(
    status: int, document: object, error: str | None, description: str | None
) -> None:
    """RFC 7591 §3.2.2 shapes become a typed error carrying error and error_description."""
    result = parse_error_response(status, document)
    assert isinstance(result, RegistrationErrorResponse)
    assert isinstance(result, ProtocolError)
    assert result.status == status
    assert result.error == error
    assert result.error_description == description
    assert f"HTTP {status}" in str(result)
    if error:
        assert error in str(result)


def test_parse_error_response_strips_control_characters() -> None:
    """error and error_description lose control and bidi characters before display."""
    result = parse_error_response(
        400,
        {
            "error": "invalid_client_metadata\r\nX-Injected: 1",
            "error_description": "bad\x1b[31m value\u202e\x00",
        },
    )
    assert result.error == "invalid_client_metadataX-Injected: 1"
    assert result.error_description == "bad[31m value"
    for ch in ("\r", "\n", "\x1b", "\u202e", "\x00"):
        assert ch not in str(result)


def test_parse_error_response_caps_the_length() -> None:
    """An AS cannot flood the message: the error code and description are length-capped."""
    result = parse_error_response(400, {"error": "e" * 500, "error_description": "d" * 5000})
    assert result.error is not None
    assert result.error_description is not None
    assert len(result.error) <= 65
    assert len(result.error_description) <= 201


# ------------------------------------------------ far-future timestamps (issue 11 #7)


@pytest.mark.parametrize("huge", [2**63 - 1, 10**400, 1e300], ids=["int64-max", "1e400", "1e300"])
def test_far_future_expiry_is_clamped_at_parse_time(huge: int | float) -> None:
    """A far-future or huge client_secret_expires_at / client_id_issued_at is clamped to
    MAX_TIMESTAMP (9999-12-31T23:59:59Z) at parse time: no OverflowError, and every later
    use (datetime, renewal arithmetic) stays in range."""
    request = _request()
    client = _check(_answer(request, client_secret_expires_at=huge, client_id_issued_at=huge),
                    request)
    assert client.client_secret_expires_at == MAX_TIMESTAMP
    assert client.client_id_issued_at == MAX_TIMESTAMP
    when = renew_at(client.client_secret_expires_at, 1_700_000_000)
    assert when is not None
    datetime.fromtimestamp(when, UTC)  # representable


@pytest.mark.parametrize("huge", [2**63 - 1, 10**400, 1e300], ids=["int64-max", "1e400", "1e300"])
def test_rfc7592_answer_expiry_is_clamped(huge: int | float) -> None:
    """The same clamp applies to the expiry of an RFC 7592 read/update answer."""
    _, _, expires = management_fields({"client_secret_expires_at": huge})
    assert expires == MAX_TIMESTAMP


def test_management_of_a_refused_answer() -> None:
    """What an RFC 7592 DELETE of a refused registration needs: the registration_client_uri
    and access token, only when the URI passes the same origin rule as for accepted clients."""
    uri = f"{REG}/client-1"
    ok = _answer(_request(), registration_access_token="rat", registration_client_uri=uri)
    assert management_of(ok, REG) == (uri, Secret("rat"))
    assert management_of(dict(ok, registration_client_uri="https://other.test/x"), REG) is None
    assert management_of(dict(ok, registration_access_token=None), REG) is None
    assert management_of(dict(ok, registration_access_token=7), REG) is None
    assert management_of("not an object", REG) is None
