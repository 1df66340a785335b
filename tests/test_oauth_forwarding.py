"""The token-like hop's pure parts (dcr_sidecar.oauth.forwarding): the outbound form and headers,
the AS's error code, and the decision after the AS answered, as tables."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcr_sidecar.oauth.client_auth import (
    AuthParts,
    ClientCredentials,
    Freshness,
    auth_parts,
    strip_client_auth,
)
from dcr_sidecar.oauth.forwarding import (
    Next,
    accepted,
    build_form,
    build_headers,
    encode_auth_form,
    grant_type,
    oauth_error,
    relayed_headers,
    retry_decision,
)
from dcr_sidecar.oauth.secret import Secret

NO_DB = settings(database=None, deadline=None)
FRESH = Freshness(1_700_000_000, "jti-1")


def creds(method: str) -> ClientCredentials:
    return ClientCredentials("cid:1", Secret("s&cret=+"), method)


# ---------------------------------------------------------------- the outbound form

@pytest.mark.parametrize(("pairs", "method", "client_id", "expected"), [
    # the app's own client authentication is removed, the method's appended
    ([("grant_type", "client_credentials"), ("client_id", "app"), ("client_secret", "x")],
     "client_secret_post", None,
     [("grant_type", "client_credentials"), ("client_id", "cid:1"),
      ("client_secret", "s&cret=+")]),
    # Basic carries nothing in the form
    ([("grant_type", "client_credentials"), ("scope", "a b")], "client_secret_basic", None,
     [("grant_type", "client_credentials"), ("scope", "a b")]),
    # PAR: client_id as a request parameter when the method has none in the form ...
    ([("response_type", "code")], "client_secret_basic", "cid:1",
     [("response_type", "code"), ("client_id", "cid:1")]),
    # ... and not twice when it has
    ([("response_type", "code")], "none", "cid:1",
     [("response_type", "code"), ("client_id", "cid:1")]),
    # an empty app form: only the method's pairs
    ([], "client_secret_post", None, [("client_id", "cid:1"), ("client_secret", "s&cret=+")]),
    # nothing at all
    ([], "client_secret_basic", None, []),
    # assertion parameters the app sent are stripped too
    ([("client_assertion", "a"), ("client_assertion_type", "t"), ("x", "1")], "none", None,
     [("x", "1"), ("client_id", "cid:1")]),
])
def test_build_form(pairs: list[tuple[str, str]], method: str, client_id: str | None,
                    expected: list[tuple[str, str]]) -> None:
    auth = auth_parts(creds(method), FRESH)
    body = build_form(pairs, encode_auth_form(auth.form, client_id))
    assert parse_qsl(body.decode("ascii"), keep_blank_values=True) == expected
    assert body == urlencode(expected).encode("ascii")


pair = st.tuples(st.sampled_from(["grant_type", "client_id", "client_secret", "scope", "x", "é"]),
                 st.text(max_size=8))


@NO_DB
@given(pairs=st.lists(pair, max_size=6), tail=st.lists(pair, max_size=3),
       client_id=st.none() | st.text(max_size=5))
def test_build_form_is_the_whole_form_encoded_at_once(
        pairs: list[tuple[str, str]], tail: list[tuple[str, str]],
        client_id: str | None) -> None:
    """Encoding the tail once per plan and joining gives exactly the bytes of one urlencode."""
    whole = [*strip_client_auth(pairs), *tail]
    if client_id is not None and not any(k == "client_id" for k, _ in tail):
        whole.append(("client_id", client_id))
    assert build_form(pairs, encode_auth_form(tail, client_id)) == \
        urlencode(whole).encode("ascii")


# ---------------------------------------------------------------- the outbound headers

@pytest.mark.parametrize(("incoming", "auth", "expected"), [
    ({"Accept": "application/json", "Cookie": "c=1", "Authorization": "Basic app",
      "User-Agent": "app/1", "X-Forwarded-For": "127.0.0.2"},
     AuthParts(headers={"Authorization": "Basic sidecar"}),
     {"Accept": "application/json", "User-Agent": "app/1", "X-Request-Id": "rid",
      "Content-Type": "application/x-www-form-urlencoded", "Authorization": "Basic sidecar"}),
    # the app's Authorization never passes, even when the method sends none
    ({"Authorization": "Basic app", "Content-Type": "text/plain"}, AuthParts(),
     {"X-Request-Id": "rid", "Content-Type": "application/x-www-form-urlencoded"}),
])
def test_build_headers(incoming: dict[str, str], auth: AuthParts,
                       expected: dict[str, str]) -> None:
    assert build_headers(incoming, "rid", auth.headers) == expected


def test_relayed_headers_are_an_allow_list() -> None:
    given_ = {"Content-Type": "application/json", "Set-Cookie": "s=1", "Retry-After": "3",
              "Cache-Control": "no-store", "Server": "as", "WWW-Authenticate": "Basic"}
    assert relayed_headers(given_) == {"Content-Type": "application/json", "Retry-After": "3",
                                       "Cache-Control": "no-store",
                                       "WWW-Authenticate": "Basic"}


# ---------------------------------------------------------------- reading the answer

@pytest.mark.parametrize(("status", "body", "expected"), [
    (400, b'{"error":"invalid_grant"}', "invalid_grant"),
    (401, b'{"error":"invalid_client","error_description":"x"}', "invalid_client"),
    (200, b'{"error":"invalid_client"}', None),  # only 400/401 carry an OAuth error
    (500, b'{"error":"invalid_client"}', None),
    (400, b"not json", None),
    (400, b"\xff\xfe", None),
    (400, b'["invalid_client"]', None),
    (400, b'{"error": 7}', None),
    (400, b"[" * 100_000, None),  # nesting too deep for the parser is no error code
])
def test_oauth_error(status: int, body: bytes, expected: str | None) -> None:
    assert oauth_error(status, body) == expected


@pytest.mark.parametrize(("status", "error", "expected"), [
    (200, None, True), (201, None, True), (400, "invalid_grant", True),
    (400, "invalid_scope", True), (401, "invalid_client", False), (400, None, False),
    (500, None, False), (302, None, False),
])
def test_accepted(status: int, error: str | None, expected: bool) -> None:
    assert accepted(status, error) is expected


def test_grant_type_is_the_first() -> None:
    assert grant_type([("scope", "a"), ("grant_type", "refresh_token"),
                       ("grant_type", "x")]) == "refresh_token"
    assert grant_type([]) is None


# ---------------------------------------------------------------- the decision

RECOVER, RETRY, SUPERSEDED, RELAY = (Next.RECOVER, Next.RECOVER_AND_RETRY,
                                     Next.RETRY_SUPERSEDED, Next.RELAY)


# (error, route, grant, static, mediated) -> decision
@pytest.mark.parametrize(("case", "expected"), [
    # invalid_client, dynamic client: recover; replay only client_credentials
    (("invalid_client", "token", "client_credentials", False, False), RETRY),
    (("invalid_client", "token", "client_credentials", False, True), RETRY),
    (("invalid_client", "token", "authorization_code", False, False), RECOVER),
    (("invalid_client", "token", "refresh_token", False, False), RECOVER),
    (("invalid_client", "par", None, False, False), RECOVER),
    (("invalid_client", "revoke", "client_credentials", False, False), RECOVER),  # not a grant
    (("invalid_client", "introspect", None, False, False), RECOVER),
    # a static client is never recovered
    (("invalid_client", "token", "client_credentials", True, False), RELAY),
    # invalid_grant on a code or refresh grant: the superseded generation, not when mediated
    (("invalid_grant", "token", "authorization_code", False, False), SUPERSEDED),
    (("invalid_grant", "token", "refresh_token", False, False), SUPERSEDED),
    (("invalid_grant", "token", "refresh_token", True, False), SUPERSEDED),
    (("invalid_grant", "token", "authorization_code", False, True), RELAY),
    (("invalid_grant", "token", "client_credentials", False, False), RELAY),
    (("invalid_grant", "token", None, False, False), RELAY),
    (("invalid_grant", "device_authorization", "refresh_token", False, False), RELAY),
    # anything else is relayed
    (("invalid_scope", "token", "client_credentials", False, False), RELAY),
    ((None, "token", "client_credentials", False, False), RELAY),
])
def test_retry_decision(case: tuple[str | None, str, str | None, bool, bool],
                        expected: Next) -> None:
    error, route, grant, static, mediated = case
    assert retry_decision(error, route=route, grant=grant, static=static,
                          mediated=mediated) is expected
