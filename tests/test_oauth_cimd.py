"""The pure CIMD rules (dcr_sidecar/oauth/cimd.py): the choice static > CIMD > DCR, the
document's shape, canonical rendering, ETags and the key schedule of a rotation."""

from __future__ import annotations

from typing import Any

import pytest

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.cimd import (
    ScheduledKey,
    choose,
    document,
    etag_matches,
    jwks,
    next_change,
    render,
    rotating,
    signing_key,
    strong_etag,
    valid_client_id_url,
)

URL = "https://app.test/acme/client-metadata.json"
SUPPORTED = {"client_id_metadata_document_supported": True,
             "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
             "code_challenge_methods_supported": ["S256"]}


@pytest.mark.parametrize("case", [
    ("auto", True, SUPPORTED, URL, "private_key_jwt", "static"),
    ("auto", False, SUPPORTED, URL, "private_key_jwt", "cimd"),
    ("auto", False, SUPPORTED, URL, "none", "cimd"),
    ("auto", False, {}, URL, "private_key_jwt", "dcr"),
    ("auto", False, {**SUPPORTED, "client_id_metadata_document_supported": "true"}, URL,
     "private_key_jwt", "dcr"),  # a string is not true
    ("auto", False, SUPPORTED, "http://app.test/c.json", "private_key_jwt", "dcr"),
    ("auto", False, {**SUPPORTED, "token_endpoint_auth_methods_supported": ["none"]}, URL,
     "private_key_jwt", "dcr"),
    ("auto", False, {**SUPPORTED, "code_challenge_methods_supported": ["plain"]}, URL,
     "none", "dcr"),
    ("auto", False, {**SUPPORTED, "token_endpoint_auth_signing_alg_values_supported": ["RS256"]},
     URL, "private_key_jwt", "dcr"),
    ("dcr", False, SUPPORTED, URL, "private_key_jwt", "dcr"),
    ("cimd", False, SUPPORTED, URL, "private_key_jwt", "cimd"),
])
def test_choice(case: tuple[str, bool, dict[str, Any], str, str, str]) -> None:
    registration, client_id, metadata, url, method, want = case
    mechanism, why = choose(registration=registration, has_client_id=client_id,
                            metadata=metadata, metadata_url="https://as.test/.well-known/x",
                            client_id_url=url, auth_method=method)
    assert mechanism == want
    assert why


def test_forced_cimd_names_the_metadata_url_and_the_member() -> None:
    with pytest.raises(ProtocolError) as caught:
        choose(registration="cimd", has_client_id=False, metadata={},
               metadata_url="https://as.test/.well-known/openid-configuration",
               client_id_url=URL, auth_method="private_key_jwt")
    assert "https://as.test/.well-known/openid-configuration" in caught.value.reason
    assert "client_id_metadata_document_supported" in caught.value.reason


@pytest.mark.parametrize(("url", "ok"), [
    (URL, True), ("http://app.test/c.json", False), ("https://app.test/c.json#x", False),
    ("https://u:p@app.test/c.json", False), ("https://app.test/a/../c.json", False),
    ("https://app.test/./c.json", False), ("https:///c.json", False),
])
def test_client_id_url_rules(url: str, ok: bool) -> None:
    assert valid_client_id_url(url) is ok


def test_document_never_carries_a_secret_method_or_member() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        document(client_id=URL, client_name="x", redirect_uris=[], grant_types=[],
                 response_types=[], scopes=[], auth_method="client_secret_basic",
                 jwks_uri=None, extras={})
    doc = document(client_id=URL, client_name="x", redirect_uris=["https://app.test/cb"],
                   grant_types=["authorization_code"], response_types=["code"],
                   scopes=["b", "a", "a"], auth_method="none", jwks_uri=None,
                   extras={"client_secret": "s", "logo_uri": "https://app.test/l.png"})
    assert "client_secret" not in doc
    assert doc["scope"] == "a b"
    assert doc["logo_uri"] == "https://app.test/l.png"
    assert doc["client_id"] == URL


def test_rendering_is_canonical_and_the_etag_strong() -> None:
    assert render({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'
    tag = strong_etag(b"x")
    assert tag.startswith('"')
    assert not tag.startswith("W/")
    assert etag_matches(tag, tag)
    assert etag_matches(f'"other", W/{tag}', tag)
    assert etag_matches("*", tag)
    assert not etag_matches(None, tag)
    assert not etag_matches('"other"', tag)


def key(number: int, published: float, signs: float, retires: float | None) -> ScheduledKey:
    return ScheduledKey(number, f"k{number}", {"kid": f"k{number}"}, published, signs, retires)


def test_rotation_schedule_publishes_before_signing_and_after() -> None:
    """Rotation at t=100, overlap 10: k2 published at 100, signs from 110; k1 dropped at 120."""
    keys = [key(1, 0, 0, 120), key(2, 100, 110, None)]
    for now, signer, published in [(99, "k1", ["k1"]), (100, "k1", ["k1", "k2"]),
                                    (109.9, "k1", ["k1", "k2"]), (110, "k2", ["k1", "k2"]),
                                    (119.9, "k2", ["k1", "k2"]), (120, "k2", ["k2"])]:
        chosen = signing_key(keys, now)
        assert chosen is not None
        assert chosen.kid == signer, now
        assert [k["kid"] for k in jwks(keys, now)["keys"]] == published, now
    assert rotating(keys, 105)
    assert not rotating(keys, 121)
    assert next_change(keys, 100) == 110
    assert next_change(keys, 110) == 120
    assert next_change(keys, 120) is None
