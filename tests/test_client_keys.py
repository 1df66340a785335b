"""private_key_jwt keys (RFC 7523, design.md §3.3): algorithm choice, key type, JWK shapes, and
assertions that a JOSE library other than ours verifies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from dcr_sidecar.client_keys import (
    CryptoSigner,
    generate,
    load,
    public_jwk,
    registration_key,
    thumbprint,
)
from dcr_sidecar.config import Upstream
from dcr_sidecar.oauth.auth_method import NoCommonMethod, select_auth_method
from dcr_sidecar.oauth.jose import (
    assertion_claims,
    choose_signing_alg,
    client_assertion,
)
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.store.records import (
    Generation,
    Record,
    RecordKey,
    record_from_json,
    record_to_json,
)


@pytest.mark.parametrize(("supported", "expected"), [
    (None, "RS256"),
    (["RS256", "PS256", "ES256"], "ES256"),
    (["RS256", "PS256"], "PS256"),
    (["HS256", "RS256"], "RS256"),
    (["HS256", "EdDSA"], None),
    ([], None),
])
def test_signing_algorithm_preference(supported: list[str] | None, expected: str | None) -> None:
    assert choose_signing_alg(supported) == expected


def test_private_key_jwt_is_skipped_without_a_common_algorithm() -> None:
    preference = ["private_key_jwt", "client_secret_basic"]
    supported = ["private_key_jwt", "client_secret_basic"]
    assert select_auth_method(preference, supported, None, signing_algs=["EdDSA"]) == \
        "client_secret_basic"
    assert select_auth_method(preference, supported, None, signing_algs=None) == "private_key_jwt"
    with pytest.raises(NoCommonMethod, match="signs with none"):
        select_auth_method(["private_key_jwt"], supported, None, signing_algs=["HS256"])


def test_rfc7638_thumbprint_example() -> None:
    """RFC 7638 §3.1's example key and thumbprint."""
    key = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
           "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L"
                "6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ"
                "5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbIS"
                "D08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kE"
                "gU8awapJzKnqDKgw"}
    assert thumbprint(key) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.mark.parametrize(("alg", "kty"), [("ES256", "EC"), ("PS256", "RSA"), ("RS256", "RSA")])
def test_generated_key_signs_assertions_another_library_verifies(alg: str, kty: str) -> None:
    key = generate(alg)
    assert key.public["kty"] == kty
    assert key.public["alg"] == alg
    assert key.kid == thumbprint(key.public)
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key.public)
    assertion = client_assertion(CryptoSigner(key), client_id="c-1",
                                 audience="https://as.example", now=1_700_000_000, jti="j-1")
    token = jwt.decode(assertion, KeySet.import_key_set({"keys": [dict(key.public)]}),
                       algorithms=[alg])
    assert token.header["kid"] == key.kid
    assert token.claims == {"iss": "c-1", "sub": "c-1", "aud": "https://as.example",
                            "jti": "j-1", "iat": 1_700_000_000, "exp": 1_700_000_060}


def test_stored_key_survives_serialisation() -> None:
    """The private JWK is a Secret field of the generation and its serializer."""
    key = generate("ES256")
    gen = Generation(1, "fp", "c-1", None, "private_key_jwt", private_key=key.private_jwk)
    text = json.dumps(record_to_json(Record(RecordKey("https://as", "u"), (gen,))))
    restored = record_from_json(json.loads(text)).generations[0]
    private_d = json.loads(key.private_jwk.reveal())["d"]
    assert private_d not in repr(restored)
    assert private_d not in repr(restored.private_key)
    assert restored.private_key is not None
    again = load(restored.private_key)
    assert (again.kid, again.alg, dict(again.public)) == (key.kid, key.alg, dict(key.public))


def test_assertion_lifetime_is_capped_at_sixty_seconds() -> None:
    with pytest.raises(ValueError, match="lifetime"):
        assertion_claims("c", "a", now=0, jti="j", lifetime=61)


def test_public_jwk_refuses_unknown_key_types() -> None:
    from dcr_sidecar.oauth import ProtocolError

    with pytest.raises(ProtocolError):
        public_jwk({"kty": "oct", "k": "x"})


def upstream(**extra: Any) -> Upstream:
    return Upstream.model_validate({"name": "u", "issuer": "https://as.example",
                                    "grant_types": ["client_credentials"], **extra})


def metadata(**members: Any) -> Metadata:
    return Metadata("https://as.example", {"issuer": "https://as.example",
                                           "token_endpoint": "https://as.example/token",
                                           **members})


async def test_registration_key_is_made_once_per_upstream_and_reused() -> None:
    """One key pair per upstream: a new registration reuses the stored key of the same
    algorithm; a different algorithm at the AS gets a new key of the matching type."""
    config = upstream(token_endpoint_auth_methods=["private_key_jwt"])
    meta = metadata(token_endpoint_auth_methods_supported=["private_key_jwt"],
                    token_endpoint_auth_signing_alg_values_supported=["ES256"])
    first = await registration_key(config, meta, None)
    assert first is not None
    assert first.alg == "ES256"
    record = Record(RecordKey("https://as.example", "u"), (
        Generation(1, "fp", "c-1", None, "private_key_jwt", private_key=first.private_jwk),))
    again = await registration_key(config, meta, record)
    assert again is not None
    assert again.kid == first.kid
    rsa_meta = metadata(token_endpoint_auth_methods_supported=["private_key_jwt"],
                        token_endpoint_auth_signing_alg_values_supported=["RS256"])
    other = await registration_key(config, rsa_meta, record)
    assert other is not None
    assert other.alg == "RS256"
    assert other.public["kty"] == "RSA"


async def test_no_key_unless_private_key_jwt_is_chosen() -> None:
    config = upstream(token_endpoint_auth_methods=["client_secret_basic", "private_key_jwt"])
    meta = metadata(token_endpoint_auth_methods_supported=["client_secret_basic",
                                                           "private_key_jwt"])
    assert await registration_key(config, meta, None) is None
