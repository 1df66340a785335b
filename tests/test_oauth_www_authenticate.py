"""WWW-Authenticate (RFC 9110 §11) and RFC 9728 pure rules: tables and properties."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.resource import (
    is_parent_resource,
    resource_candidates,
    validate_resource_metadata,
)
from dcr_sidecar.oauth.www_authenticate import (
    Challenge,
    parse_www_authenticate,
    resource_metadata_url,
)


@pytest.mark.parametrize(("value", "expected"), [
    ("Basic", [Challenge("basic")]),
    ('Basic realm="x"', [Challenge("basic", {"realm": "x"})]),
    ("Negotiate abc==", [Challenge("negotiate", {}, "abc==")]),
    ('Bearer realm="a, b", error="invalid_token", Basic realm=y',
     [Challenge("bearer", {"realm": "a, b", "error": "invalid_token"}),
      Challenge("basic", {"realm": "y"})]),
    ('Bearer realm = "q\\"uote"', [Challenge("bearer", {"realm": 'q"uote'})]),
    ("Newauth realm=apps, type=1, title=\"Login\", Basic realm=\"simple\"",
     [Challenge("newauth", {"realm": "apps", "type": "1", "title": "Login"}),
      Challenge("basic", {"realm": "simple"})]),
    ("Bearer, Basic", [Challenge("bearer"), Challenge("basic")]),
    ("BEARER Resource_Metadata=x", [Challenge("bearer", {"resource_metadata": "x"})]),
    ("", []),
])
def test_parse_table(value: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(value) == expected


@pytest.mark.parametrize("value", ['Bearer realm="open', "Bearer realm=x y=", "= x"])
def test_malformed_values_raise_protocol_error(value: str) -> None:
    with pytest.raises(ProtocolError):
        parse_www_authenticate(value)


def test_resource_metadata_url_from_the_first_challenge_carrying_it() -> None:
    challenges = parse_www_authenticate(
        'Basic realm="r", Bearer error="invalid_token", resource_metadata="https://r/m"')
    assert resource_metadata_url(challenges) == "https://r/m"
    assert resource_metadata_url(parse_www_authenticate("Bearer")) is None


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_raises_protocol_error(value: str) -> None:
    try:
        result = parse_www_authenticate(value)
    except ProtocolError:
        return
    assert all(isinstance(c, Challenge) and c.scheme for c in result)


token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=10)
param_value = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(token, st.dictionaries(token, param_value, min_size=1, max_size=4)),
                min_size=1, max_size=4))
def test_rendered_challenges_round_trip(challenges: list[tuple[str, dict[str, str]]]) -> None:
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    rendered = ", ".join(
        f"{scheme} " + ", ".join(f"{k}={quote(v)}" for k, v in params.items())
        for scheme, params in challenges)
    assert parse_www_authenticate(rendered) == [Challenge(s, p) for s, p in challenges]


def test_resource_candidates_insert_before_the_path() -> None:
    assert resource_candidates("https://r.example/mcp/") == [
        "https://r.example/.well-known/oauth-protected-resource/mcp",
        "https://r.example/.well-known/oauth-protected-resource"]
    assert resource_candidates("https://r.example") == [
        "https://r.example/.well-known/oauth-protected-resource"]


@pytest.mark.parametrize(("doc", "configured", "ok"), [
    ("https://r/mcp", "https://r/mcp", True),
    ("https://r", "https://r/mcp", True),
    ("https://r/", "https://r/mcp", True),
    ("https://r/mc", "https://r/mcp", False),
    ("https://r:8443", "https://r/mcp", False),
    ("http://r", "https://r/mcp", False),
])
def test_parent_on_a_path_segment_boundary(doc: str, configured: str, ok: bool) -> None:
    assert is_parent_resource(doc, configured) is ok


def test_exact_documents_refuse_a_parent() -> None:
    doc = {"resource": "https://r", "authorization_servers": ["https://as"]}
    with pytest.raises(ProtocolError, match="RFC 9728"):
        validate_resource_metadata(doc, "https://r/mcp", exact=True)
    assert validate_resource_metadata(doc, "https://r/mcp", exact=False).authorization_servers \
        == ("https://as",)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10))
def test_resource_metadata_validation_raises_only_protocol_errors(document: object) -> None:
    with contextlib.suppress(ProtocolError):
        validate_resource_metadata(document, "https://r/mcp", exact=False)
