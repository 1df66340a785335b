"""Property tests for every parser fed by the network: whatever arrives, the only exceptions
are the typed ones the callers handle (ProtocolError, SidecarError), never a crash."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from dcr_sidecar import errors
from dcr_sidecar.config import Inbound, parse_settings
from dcr_sidecar.dial import authority
from dcr_sidecar.net import Response
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.client_auth import parse_basic
from dcr_sidecar.oauth.metadata import (
    LIST_MEMBERS,
    URL_MEMBERS,
    Metadata,
    cache_lifetime,
    validate_metadata,
)
from dcr_sidecar.oauth.registration import (
    RegisteredClient,
    RegistrationProfile,
    build_request,
    check_response,
    parse_error_response,
)
from dcr_sidecar.oauth.retry import parse_retry_after
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.oauth.text import clean_text, safe_url
from dcr_sidecar.observability import Redactor
from dcr_sidecar.proxy.forms import parse_form, parse_urlencoded
from dcr_sidecar.proxy.inbound import check as check_inbound
from dcr_sidecar.proxy.metadata import rewrite

T = TypeVar("T")
ISSUER = "https://as.test/realm"
SETTINGS = parse_settings(
    "version: 1\npublic_base_url: https://p.test\nbackchannel_base_url: http://b.test\n"
    f"upstreams:\n- {{name: acme, issuer: '{ISSUER}', grant_types: [client_credentials]}}\n",
    "fuzz.yaml")
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12)
urlish = st.one_of(st.text(), st.sampled_from([
    "https://as.test/token", "http://127.0.0.1:1/x", "https://[::1]/x", "https:///x",
    "https://as.test:99999/x", "https://as.test:0/x", "javascript:alert(1)",
    "https://as.test/x#frag", "https://u:p@as.test/x?q=1", "https://xn--/x", "//as.test/x",
    "https://bücher.test/x", "https://[fe80::1%25eth0]/x", "https://as.test:-1/x"]))
# Documents shaped like metadata: known members with arbitrary values, the issuer often right.
metadata_documents = st.fixed_dictionaries(
    {},
    optional={
        "issuer": st.just(ISSUER) | json_values,
        **dict.fromkeys(URL_MEMBERS, urlish | json_values),
        **{member: st.lists(st.text(), max_size=3) | json_values for member in LIST_MEMBERS},
    },
) | json_values
PROFILE = RegistrationProfile(
    redirect_uris=("https://app.test/cb",), grant_types=("authorization_code", "refresh_token"),
    response_types=("code",), scopes=("openid",), auth_methods=("client_secret_basic",))
REQUEST = build_request(PROFILE, "client_secret_basic")
registration_answers = st.fixed_dictionaries(
    {},
    optional={
        "client_id": st.text() | json_values,
        "client_secret": st.text() | json_values,
        "token_endpoint_auth_method": st.sampled_from(
            ["client_secret_basic", "client_secret_post", "none", "private_key_jwt", ""])
        | json_values,
        "redirect_uris": st.just(["https://app.test/cb"]) | json_values,
        "grant_types": st.just(["authorization_code", "refresh_token"]) | json_values,
        "client_secret_expires_at": st.integers() | st.floats() | json_values,
        "client_id_issued_at": st.integers() | json_values,
        "registration_access_token": st.text() | json_values,
        "registration_client_uri": urlish | json_values,
        "scope": st.text() | json_values,
    },
) | json_values


def outcome(call: Callable[[], T], *expected: type[Exception]) -> T | Exception:
    """The result, or the exception when it is one of `expected` (anything else propagates
    and fails the test)."""
    try:
        return call()
    except expected as exc:
        return exc


@given(metadata_documents)
def test_metadata_validation_raises_only_protocol_errors(document: Any) -> None:
    meta = outcome(lambda: validate_metadata(document, ISSUER, source="https://as.test/w"),
                   ProtocolError)
    if isinstance(meta, ProtocolError):
        assert meta.reason == clean_text(meta.reason, 10**6)
        return
    assert isinstance(meta, Metadata)
    for member in URL_MEMBERS:
        assert meta.get_url(member) is None or isinstance(meta.get_url(member), str)
    rewritten = rewrite(meta.document, upstream=SETTINGS.upstreams[0], settings=SETTINGS)
    assert "registration_endpoint" not in rewritten


@given(registration_answers)
def test_registration_answers_raise_only_protocol_errors(document: Any) -> None:
    client = outcome(lambda: check_response(document, REQUEST,
                                            registration_endpoint="https://as.test/reg"),
                     ProtocolError)
    if isinstance(client, ProtocolError):
        assert client.reason == clean_text(client.reason, 10**6)
        return
    assert isinstance(client, RegisteredClient)
    assert client.client_id.isprintable()
    assert client.client_id.isascii()
    assert client.token_endpoint_auth_method in {"client_secret_basic", "client_secret_post",
                                                 "none"}
    assert isinstance(client.client_secret_expires_at, int)


@given(st.integers(min_value=100, max_value=599), json_values)
def test_registration_errors_always_parse(status: int, document: Any) -> None:
    parsed = parse_error_response(status, document)
    assert parsed.reason == clean_text(parsed.reason, 10**6)


@given(st.binary())
def test_response_json_raises_only_protocol_errors(body: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        Response(200, None, body, "https://as.test/x").json()  # type: ignore[arg-type]


def test_deeply_nested_json_is_a_protocol_error() -> None:
    try:
        Response(200, None, b"[" * 100000, "https://as.test/x").json()  # type: ignore[arg-type]
    except ProtocolError:
        return
    raise AssertionError("expected a ProtocolError")


@given(st.text() | st.sampled_from(["Basic", "Basic ", "basic Og==", "Basic Og==",
                                    "Basic YTpi", "Basic YTpi\n", "Basic ==", "Basic w4Y6w4Y="]))
def test_basic_header_parsing_never_raises(header: str) -> None:
    parsed = parse_basic(header)
    assert parsed is None or (isinstance(parsed[0], str) and isinstance(parsed[1], str))


form_pairs = st.lists(st.tuples(
    st.sampled_from(["client_id", "client_secret", "grant_type", "client_assertion"])
    | st.text(max_size=8), st.text(max_size=20)), max_size=6)


@given(st.dictionaries(st.sampled_from(["Authorization", "authorization", "X"]), st.text(),
                       max_size=2), form_pairs,
       st.sampled_from([None, "app"]))
def test_inbound_check_raises_only_sidecar_errors(headers: dict[str, str],
                                                  form: list[tuple[str, str]],
                                                  client_id: str | None) -> None:
    inbound = Inbound(client_id=client_id, client_secret=Secret("inbound-secret-x"))
    with contextlib.suppress(errors.InboundUnauthorized, errors.BadRequest):
        check_inbound(inbound, headers, form)


@given(st.binary())
def test_form_bodies_raise_only_bad_request(body: bytes) -> None:
    pairs = outcome(lambda: parse_form(body), errors.BadRequest)
    if isinstance(pairs, Exception):
        assert isinstance(pairs, errors.BadRequest)
        assert pairs.status == 400
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in pairs)


@given(st.text())
def test_queries_raise_only_bad_request(text: str) -> None:
    with contextlib.suppress(errors.BadRequest):
        parse_urlencoded(text, "query")


@given(st.text() | st.sampled_from(["max-age=10", "no-store", "max-age=\"5\", private",
                                    "max-age=99999999999999999999"]))
def test_cache_control_parsing_stays_within_bounds(header: str) -> None:
    ttl = cache_lifetime(header, min_ttl=60, max_ttl=3600)
    assert 60 <= ttl <= 3600


@given(st.text() | st.sampled_from(["120", "-1", "1e9", "Wed, 21 Oct 2015 07:28:00 GMT",
                                    "Mon, 99 Foo 9999 99:99:99 GMT", "999999999999999999999"]))
def test_retry_after_parsing_never_raises(header: str) -> None:
    wait = parse_retry_after(header, 1_700_000_000.0)
    assert wait is None or (math.isfinite(wait) and wait >= 0)


@settings(max_examples=300)
@given(urlish | st.text())
def test_authority_raises_only_value_error(url: str) -> None:
    found = outcome(lambda: authority(url), ValueError)
    if isinstance(found, tuple):
        _, host, port = found
        assert host == host.lower()
        assert isinstance(port, int)


@given(st.text())
def test_log_and_message_sanitisers_remove_control_characters(text: str) -> None:
    for out in (clean_text(text), safe_url(text)):
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in out)
    assert isinstance(Redactor().scrub(text), str)
