"""Callback mediation, the pure rules (design.md §3.6, RFC 9207 §2.4, RFC 9700 §4.4)."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.callback import (
    FlowRecord,
    app_response,
    check_binding,
    check_iss,
    check_mediable,
    code_key,
    is_par_reference,
    new_state,
    pushed_key,
    pushed_request_uri,
    rewrite_request,
)

RECORD = FlowRecord("https://app.example/cb", "app-state", "verifier-x", 3, upstream="acme",
                    issuer="https://as.example")


@pytest.mark.parametrize("pairs", [
    [("response_type", "code")],
    [("response_type", "code"), ("response_mode", "query"), ("scope", "a")],
])
def test_code_in_the_query_is_mediable(pairs: list[tuple[str, str]]) -> None:
    check_mediable(pairs)


@pytest.mark.parametrize(("pairs", "reason"), [
    ([("response_type", "token")], "response_type=code"),
    ([("response_type", "code id_token")], "response_type=code"),
    ([], "response_type=code"),
    ([("response_type", "code"), ("response_type", "code")], "response_type=code"),
    ([("response_type", "code"), ("response_mode", "form_post")], "query response mode"),
    ([("response_type", "code"), ("response_mode", "fragment")], "query response mode"),
    ([("response_type", "code"), ("response_mode", "query.jwt")], "query response mode"),
    ([("response_type", "code"), ("request", "eyJ...")], "request parameter"),
    ([("response_type", "code"), ("request_uri", "https://app.example/r")], "request_uri"),
])
def test_anything_else_is_refused(pairs: list[tuple[str, str]], reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        check_mediable(pairs)


def test_par_reference_is_recognised() -> None:
    assert is_par_reference([("request_uri", "urn:ietf:params:oauth:request_uri:abc")])
    assert not is_par_reference([("request_uri", "https://app.example/request.jwt")])


def test_state_has_at_least_128_bits_and_never_repeats() -> None:
    states = {new_state() for _ in range(1000)}
    assert len(states) == 1000
    assert all(len(base64.urlsafe_b64decode(s + "==")) * 8 >= 128 for s in states)


def test_codes_are_keyed_by_their_hash() -> None:
    assert "the-code" not in code_key("the-code")
    assert code_key("the-code") == code_key("the-code") != code_key("other")


def test_rewrite_swaps_redirect_uri_and_state_keeps_the_rest() -> None:
    pairs = [("response_type", "code"), ("redirect_uri", "https://app.example/cb"),
             ("state", "app"), ("scope", "a b"), ("nonce", "n")]
    out = rewrite_request(pairs, redirect_uri="https://side/u/callback", state="S",
                          code_challenge="C")
    assert dict(out) == {"response_type": "code", "scope": "a b", "nonce": "n",
                         "redirect_uri": "https://side/u/callback", "state": "S",
                         "code_challenge": "C", "code_challenge_method": "S256"}
    assert "code_challenge" not in dict(rewrite_request(pairs, redirect_uri="r", state="s",
                                                        code_challenge=None))


@pytest.mark.parametrize(("received", "required", "ok"), [
    ("https://as.example", True, True),
    ("https://as.example", False, True),
    (None, False, True),
    (None, True, False),                       # advertised but missing (RFC 9207 §2.4)
    ("https://evil.example", False, False),    # present: always compared
    ("https://as.example/", True, False),      # simple string comparison, no normalisation
    ("https://AS.example", True, False),
])
def test_iss_check(received: str | None, required: bool, ok: bool) -> None:
    if ok:
        check_iss(received, "https://as.example", required=required)
    else:
        with pytest.raises(ProtocolError):
            check_iss(received, "https://as.example", required=required)


def test_app_response_carries_code_app_state_and_the_apps_issuer() -> None:
    pairs = [("code", "c1"), ("state", "sidecar-state"), ("iss", "https://as"),
             ("session_state", "x")]
    assert app_response(pairs, RECORD, "https://side/u") == [
        ("code", "c1"), ("state", "app-state"), ("iss", "https://side/u")]


def test_app_response_passes_as_errors_on() -> None:
    pairs = [("error", "access_denied"), ("error_description", "no"), ("state", "s"),
             ("error_uri", "https://as/e")]
    assert app_response(pairs, replace(RECORD, app_state=None), "https://as") == [
        ("error", "access_denied"), ("error_description", "no"), ("error_uri", "https://as/e"),
        ("iss", "https://as")]


def test_app_response_without_code_or_error_is_refused() -> None:
    with pytest.raises(ProtocolError):
        app_response([("state", "s")], RECORD, "https://as")


def test_record_repr_hides_the_verifier() -> None:
    assert "verifier-x" not in repr(RECORD)


@pytest.mark.parametrize(("upstream", "issuer", "refusal"), [
    ("acme", "https://as.example", None),
    ("evil", "https://as.example", "another upstream"),  # another upstream's flow
    # the upstream moved to another AS since the flow started (design.md §3.1)
    ("acme", "https://other.example", "made at https://as.example, and upstream 'acme' has "
                                      "since moved to https://other.example"),
    ("", "", "another upstream"),
])
def test_a_record_is_honoured_only_by_the_upstream_and_issuer_it_was_made_for(
        upstream: str, issuer: str, refusal: str | None) -> None:
    if refusal is None:
        check_binding(RECORD, upstream, issuer, "state")
    else:
        with pytest.raises(ProtocolError, match=refusal):
            check_binding(RECORD, upstream, issuer, "state")


@pytest.mark.parametrize(("body", "expected"), [
    (b'{"request_uri": "urn:ietf:params:oauth:request_uri:abc", "expires_in": 60}',
     "urn:ietf:params:oauth:request_uri:abc"),
    (b'{"request_uri": "https://app.example/r"}', None),   # not a pushed request's reference
    (b'{"request_uri": 1}', None),
    (b'["urn:ietf:params:oauth:request_uri:abc"]', None),
    (b"\xff", None),
])
def test_the_request_uri_of_a_par_answer(body: bytes, expected: str | None) -> None:
    assert pushed_request_uri(body) == expected
    assert "abc" not in pushed_key("urn:ietf:params:oauth:request_uri:abc")
