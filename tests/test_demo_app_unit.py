"""Pure tests of the demo app's JOSE code, PKCE pair and pending-login store (no server)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from dcr_sidecar.demo.idtoken import (
    decode_jwt_unverified,
    jwk_public_key,
    verify_at_hash,
    verify_id_token,
)
from dcr_sidecar.demo.logins import PendingLogin, PendingLogins, Results
from dcr_sidecar.oauth.pkce import make_verifier, s256_challenge

ISSUER = "https://as.example.test/realms/main"
CLIENT_ID = "client-123"
NONCE = "n-0S6_WzA2Mj"
NOW = 1_700_000_000.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **extra: str) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "n": uint(numbers.n), "e": uint(numbers.e), **extra}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "kid": kid,
        "x": b64url(numbers.x.to_bytes(32, "big")),
        "y": b64url(numbers.y.to_bytes(32, "big")),
    }


def sign(
    claims: Mapping[str, Any],
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    alg: str,
    kid: str | None,
) -> str:
    header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    ).encode("ascii")
    if alg == "ES256":
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    elif alg == "PS256":
        assert isinstance(key, rsa.RSAPrivateKey)
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        signature = key.sign(signing_input, pss, hashes.SHA256())
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input.decode("ascii") + "." + b64url(signature)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks(rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return {"keys": [rsa_jwk(rsa_key, "rsa-1", use="sig"), ec_jwk(ec_key, "ec-1")]}


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "user-1",
        "aud": CLIENT_ID,
        "exp": NOW + 300,
        "iat": NOW - 5,
        "nonce": NONCE,
        "email": "alice@example.test",
    }
    base.update(overrides)
    return {name: value for name, value in base.items() if value is not None}


def verify(token: str, jwks: Mapping[str, Any]) -> dict[str, Any]:
    return verify_id_token(token, jwks, issuer=ISSUER, client_id=CLIENT_ID, nonce=NONCE, now=NOW)


@pytest.fixture(params=["RS256", "PS256", "ES256"])
def alg_key(
    request: pytest.FixtureRequest, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> tuple[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, str]:
    alg = str(request.param)
    return (alg, ec_key, "ec-1") if alg == "ES256" else (alg, rsa_key, "rsa-1")


def test_valid_token_returns_its_claims(
    alg_key: tuple[str, Any, str], jwks: dict[str, Any]
) -> None:
    alg, key, kid = alg_key
    assert verify(sign(claims(), key, alg, kid), jwks) == claims()


def test_token_without_kid_is_checked_against_every_key_of_its_type(
    alg_key: tuple[str, Any, str], jwks: dict[str, Any]
) -> None:
    alg, key, _ = alg_key
    assert verify(sign(claims(), key, alg, None), jwks)["sub"] == "user-1"


def test_signature_by_another_key_is_rejected(alg_key: tuple[str, Any, str]) -> None:
    alg, key, kid = alg_key
    other: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if alg == "ES256"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    jwks_of_other = {
        "keys": [
            ec_jwk(other, kid)
            if isinstance(other, ec.EllipticCurvePrivateKey)
            else rsa_jwk(other, kid)
        ]
    }
    with pytest.raises(ValueError, match="signature does not verify"):
        verify(sign(claims(), key, alg, kid), jwks_of_other)


def test_tampered_payload_is_rejected(alg_key: tuple[str, Any, str], jwks: dict[str, Any]) -> None:
    alg, key, kid = alg_key
    header, _, signature = sign(claims(), key, alg, kid).split(".")
    forged = b64url(json.dumps(claims(sub="admin")).encode())
    with pytest.raises(ValueError, match="signature does not verify"):
        verify(f"{header}.{forged}.{signature}", jwks)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"aud": "someone-else"}, "does not contain this client_id"),
        ({"aud": ["someone-else", "another"]}, "does not contain this client_id"),
        ({"aud": None}, "'aud' is missing"),
        ({"azp": "someone-else", "aud": [CLIENT_ID, "someone-else"]}, "azp"),
        ({"nonce": "another-nonce"}, "nonce does not match"),
        ({"nonce": None}, "nonce does not match"),
        ({"exp": NOW - 61}, "expired"),
        ({"exp": None}, "numeric 'exp'"),
        ({"exp": "tomorrow"}, "numeric 'exp'"),
        ({"iat": NOW + 3600}, "issued in the future"),
        ({"nbf": NOW + 3600}, "not valid before"),
        ({"iss": "https://evil.example.test"}, "not the expected issuer"),
        ({"iss": ISSUER + "/"}, "not the expected issuer"),
        ({"sub": None}, "'sub'"),
    ],
)
def test_invalid_claims_are_rejected(
    rsa_key: rsa.RSAPrivateKey, jwks: dict[str, Any], overrides: dict[str, Any], message: str
) -> None:
    token = sign(claims(**overrides), rsa_key, "RS256", "rsa-1")
    with pytest.raises(ValueError, match=message):
        verify(token, jwks)


def test_expiry_within_the_60_second_leeway_is_accepted(
    ec_key: ec.EllipticCurvePrivateKey, jwks: dict[str, Any]
) -> None:
    token = sign(claims(exp=NOW - 30), ec_key, "ES256", "ec-1")
    assert verify(token, jwks)["exp"] == NOW - 30


def test_audience_array_containing_the_client_id_is_accepted(
    rsa_key: rsa.RSAPrivateKey, jwks: dict[str, Any]
) -> None:
    token = sign(claims(aud=["other", CLIENT_ID], azp=CLIENT_ID), rsa_key, "RS256", "rsa-1")
    assert verify(token, jwks)["azp"] == CLIENT_ID


def test_unsigned_and_hmac_tokens_are_rejected(jwks: dict[str, Any]) -> None:
    body = b64url(json.dumps(claims()).encode())
    for alg in ("none", "HS256"):
        header = b64url(json.dumps({"alg": alg}).encode())
        with pytest.raises(ValueError, match="is not accepted"):
            verify(f"{header}.{body}.", jwks)


def test_alg_must_match_the_key_type(rsa_key: rsa.RSAPrivateKey, jwks: dict[str, Any]) -> None:
    """An RS256 token whose header claims ES256 finds no RSA key to be checked against."""
    _, body, signature = sign(claims(), rsa_key, "RS256", "rsa-1").split(".")
    es_header = b64url(json.dumps({"alg": "ES256", "kid": "rsa-1"}).encode())
    with pytest.raises(ValueError, match="no usable key"):
        verify(f"{es_header}.{body}.{signature}", jwks)


def test_unknown_kid_is_rejected(rsa_key: rsa.RSAPrivateKey, jwks: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="no usable key"):
        verify(sign(claims(), rsa_key, "RS256", "rotated-away"), jwks)


def test_keys_for_encryption_or_another_alg_are_not_used(rsa_key: rsa.RSAPrivateKey) -> None:
    token = sign(claims(), rsa_key, "RS256", "rsa-1")
    for extra in ({"use": "enc"}, {"alg": "PS256"}):
        with pytest.raises(ValueError, match="no usable key"):
            verify(token, {"keys": [rsa_jwk(rsa_key, "rsa-1", **extra)]})


def test_crit_header_is_rejected(rsa_key: rsa.RSAPrivateKey, jwks: dict[str, Any]) -> None:
    _, body, signature = sign(claims(), rsa_key, "RS256", "rsa-1").split(".")
    header = b64url(json.dumps({"alg": "RS256", "kid": "rsa-1", "crit": ["exp"]}).encode())
    with pytest.raises(ValueError, match="crit"):
        verify(f"{header}.{body}.{signature}", jwks)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("a.b", "not a compact JWS"),
        ("a.b.c.d.e", "encrypted"),
        ("!!!.e30.", "not valid base64url"),
        (b64url(b"[1]") + ".e30.", "not a JSON object"),
        (b64url(b"\xff") + ".e30.", "not UTF-8 JSON"),
    ],
)
def test_malformed_tokens_are_rejected(token: str, message: str, jwks: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=message):
        verify(token, jwks)


def test_jwks_without_keys_array_is_rejected(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="no 'keys' array"):
        verify(sign(claims(), rsa_key, "RS256", "rsa-1"), {"keys": "nope"})


def test_jwk_public_key_rejects_weak_or_foreign_keys(rsa_key: rsa.RSAPrivateKey) -> None:
    weak_modulus = uint((1 << 1023) | 1)  # 1024 bits: refused before any key is built
    with pytest.raises(ValueError, match="at least 2048"):
        jwk_public_key({"kty": "RSA", "n": weak_modulus, "e": "AQAB"})
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_numbers()
    with pytest.raises(ValueError, match="only P-256"):
        jwk_public_key({"kty": "EC", "crv": "P-384", "x": uint(p384.x), "y": uint(p384.y)})
    with pytest.raises(ValueError, match="not on the P-256 curve"):
        jwk_public_key(
            {"kty": "EC", "crv": "P-256", "x": b64url(b"\x01" * 32), "y": b64url(b"\x02" * 32)}
        )
    with pytest.raises(ValueError, match="kty"):
        jwk_public_key({"kty": "oct", "k": "c2VjcmV0"})
    with pytest.raises(ValueError, match="'e'"):
        jwk_public_key({"kty": "RSA", "n": rsa_jwk(rsa_key, "k")["n"]})


def test_at_hash_is_checked_when_present() -> None:
    access_token = "jHkWEdUXMU1BwAsC4vtUsZwnNq8ufv2Ah8yTtnQfPKE"
    digest = hashlib.sha256(access_token.encode()).digest()
    good = {"at_hash": b64url(digest[:16])}
    verify_at_hash(good, access_token)
    verify_at_hash({}, access_token)
    with pytest.raises(ValueError, match="at_hash"):
        verify_at_hash(good, access_token + "x")


def test_decode_unverified_reads_the_payload_only(rsa_key: rsa.RSAPrivateKey) -> None:
    assert decode_jwt_unverified(sign(claims(), rsa_key, "RS256", None))["sub"] == "user-1"


def test_pkce_pair_follows_rfc_7636() -> None:
    """The demo uses the sidecar's own PKCE (dcr_sidecar.oauth.pkce), not a copy."""
    verifier = make_verifier()
    assert re.fullmatch(r"[A-Za-z0-9._~-]{43,128}", verifier)
    assert s256_challenge(verifier) == b64url(hashlib.sha256(verifier.encode("ascii")).digest())
    assert make_verifier() != verifier


def test_a_result_is_shown_only_to_its_session_and_until_it_expires() -> None:
    now = [100.0]
    results = Results(ttl=60, clock=lambda: now[0])
    result_id = results.add("session-a", "Logged in", "<p>body</p>", 200)
    found = results.get("session-a", result_id)
    assert found is not None
    assert (found.title, found.body, found.status) == ("Logged in", "<p>body</p>", 200)
    assert results.get("session-a", result_id) is not None  # a reload shows it again
    assert results.get("session-b", result_id) is None
    now[0] += 61
    assert results.get("session-a", result_id) is None


def pending(state: str, created: float) -> PendingLogin:
    return PendingLogin(
        state=state,
        nonce="n",
        code_verifier="v",
        client_id=CLIENT_ID,
        metadata={"issuer": ISSUER},
        created=created,
    )


def test_pending_login_is_taken_once_and_only_by_its_session() -> None:
    store = PendingLogins(clock=lambda: 100.0)
    store.add("session-a", pending("state-1", 100.0))
    assert store.pop("session-b", "state-1") is None
    login = store.pop("session-a", "state-1")
    assert login is not None
    assert login.state == "state-1"
    assert store.pop("session-a", "state-1") is None


def test_pending_logins_expire_after_ten_minutes() -> None:
    now = [0.0]
    store = PendingLogins(clock=lambda: now[0])
    store.add("s", pending("state", 0.0))
    now[0] = 600.0
    assert store.pop("s", "state") is None
    assert len(store) == 0


def test_pending_logins_are_bounded() -> None:
    store = PendingLogins(max_sessions=2, max_per_session=2, clock=lambda: 0.0)
    for state in ("a", "b", "c"):
        store.add("s1", pending(state, 0.0))
    assert store.pop("s1", "a") is None  # oldest login of the session evicted
    store.add("s2", pending("x", 0.0))
    store.add("s3", pending("y", 0.0))
    assert store.pop("s1", "b") is None  # least recently used session evicted
    assert store.pop("s3", "y") is not None
    assert len(store) == 1
