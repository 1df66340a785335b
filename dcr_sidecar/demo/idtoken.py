"""ID token validation for the demo app: JWKs to keys, JWS signatures, the OIDC Core §3.1.3.7
claim checks and at_hash. Pure functions (no I/O), so they are unit-tested without a server.
base64url comes from :mod:`dcr_sidecar.oauth.jose`; this module only adds strictness."""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dcr_sidecar.oauth.jose import b64url, b64url_decode
from dcr_sidecar.oauth.secret import constant_time_equal

CLOCK_LEEWAY: Final = 60.0  # seconds of clock skew tolerated on exp / iat / nbf
MIN_RSA_BITS: Final = 2048
SUPPORTED_ALGS: Final = ("RS256", "PS256", "ES256")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _b64url_decode(data: str, what: str) -> bytes:
    """Decode unpadded base64url (RFC 7515 §2), refusing padding and foreign characters."""
    if not isinstance(data, str) or not _B64URL_RE.fullmatch(data) or len(data) % 4 == 1:
        raise ValueError(f"{what} is not valid base64url")
    try:
        return b64url_decode(data)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64url") from exc


def _decode_json_segment(segment: str, what: str) -> dict[str, Any]:
    raw = _b64url_decode(segment, what)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} is not UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _jwk_member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"JWK member {name!r} is missing or not a string")
    return _b64url_decode(value, f"JWK member {name!r}")


def jwk_public_key(jwk: Mapping[str, Any]) -> PublicKey:
    """Build a public key from a JWK (RFC 7517/7518 §6): ``RSA`` (n, e) or ``EC`` P-256 (x, y).

    Raises ``ValueError`` for anything else, for RSA keys under 2048 bits and for EC points that are
    not on the curve.
    """
    kty = jwk.get("kty")
    if kty == "RSA":
        n = int.from_bytes(_jwk_member(jwk, "n"), "big")
        e = int.from_bytes(_jwk_member(jwk, "e"), "big")
        if n.bit_length() < MIN_RSA_BITS:
            raise ValueError(f"RSA key is {n.bit_length()} bits; at least {MIN_RSA_BITS} required")
        try:
            return rsa.RSAPublicNumbers(e, n).public_key()
        except ValueError as exc:
            raise ValueError(f"invalid RSA public key: {exc}") from exc
    if kty == "EC":
        crv = jwk.get("crv")
        if crv != "P-256":
            raise ValueError(f"unsupported EC curve {crv!r} (only P-256)")
        x, y = _jwk_member(jwk, "x"), _jwk_member(jwk, "y")
        if len(x) != 32 or len(y) != 32:
            raise ValueError("P-256 JWK coordinates must be 32 bytes each")
        try:
            return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
        except ValueError as exc:
            raise ValueError("EC JWK point is not on the P-256 curve") from exc
    raise ValueError(f"unsupported JWK kty {kty!r} (only RSA and EC)")


def _candidate_keys(jwks: Mapping[str, Any], alg: str, kid: str | None) -> list[PublicKey]:
    keys = jwks.get("keys")
    if not isinstance(keys, list):
        raise ValueError("the AS's JWKS has no 'keys' array")
    wanted_kty = "EC" if alg.startswith("ES") else "RSA"
    candidates: list[PublicKey] = []
    problems: list[str] = []
    for jwk in keys:
        if not isinstance(jwk, dict) or jwk.get("kty") != wanted_kty:
            continue
        if kid is not None and jwk.get("kid") != kid:
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
            continue
        key_ops = jwk.get("key_ops")
        if isinstance(key_ops, list) and "verify" not in key_ops:
            continue
        try:
            candidates.append(jwk_public_key(jwk))
        except ValueError as exc:
            problems.append(str(exc))
    if not candidates:
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise ValueError(f"no usable key in the AS's JWKS for alg {alg} and kid {kid!r}{detail}")
    return candidates


def _signature_valid(alg: str, key: PublicKey, signing_input: bytes, signature: bytes) -> bool:
    try:
        if alg == "ES256":
            if not isinstance(key, ec.EllipticCurvePublicKey) or len(signature) != 64:
                return False
            der = encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            )
            key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            return True
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        if alg == "RS256":
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
            return True
        if alg == "PS256":
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            key.verify(signature, signing_input, pss, hashes.SHA256())
            return True
    except InvalidSignature:
        return False
    return False


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def decode_jwt_unverified(token: str) -> dict[str, Any]:
    """The payload of a compact JWS **without** checking anything — for display only."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    return _decode_json_segment(parts[1], "ID token payload")


def verify_id_token(
    token: str,
    jwks: Mapping[str, Any],
    *,
    issuer: str,
    client_id: str,
    nonce: str,
    now: float,
) -> dict[str, Any]:
    """Validate an ID token as OIDC Core §3.1.3.7 asks and return its claims.

    Checks: compact JWS with ``alg`` RS256, PS256 or ES256 (never ``none`` or HMAC); the signature
    against a key of ``jwks`` (matched by ``kid`` when the header has one); ``iss`` equal to
    ``issuer``; ``aud`` (string or array) containing ``client_id``, and ``azp`` equal to it when
    present; ``exp`` in the future and ``iat`` / ``nbf`` not in the future (60 s leeway each);
    ``sub`` present; ``nonce`` equal to the one sent. Raises ``ValueError`` saying what failed.
    """
    claims = _verify_jws(token, jwks)
    _check_issuer_and_audience(claims, issuer=issuer, client_id=client_id)
    _check_times(claims, now=now)
    token_nonce = claims.get("nonce")
    if not isinstance(token_nonce, str) or not constant_time_equal(nonce, token_nonce):
        raise ValueError("ID token nonce does not match the one sent with this login")
    return claims


def _verify_jws(token: str, jwks: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of a compact JWS whose signature verifies with a key of ``jwks`` (RFC 7515)."""
    if not isinstance(token, str):
        raise ValueError("the ID token is not a string")
    parts = token.split(".")
    if len(parts) == 5:
        raise ValueError("the ID token is encrypted (JWE); this demo handles signed ID tokens only")
    if len(parts) != 3:
        raise ValueError("the ID token is not a compact JWS (expected 3 dot-separated parts)")
    header = _decode_json_segment(parts[0], "ID token header")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGS:
        raise ValueError(
            f"ID token alg {alg!r} is not accepted (accepted: {', '.join(SUPPORTED_ALGS)})"
        )
    if "crit" in header:  # RFC 7515 §4.1.11: unknown critical extensions must be rejected
        raise ValueError("ID token header has 'crit' extensions this client does not understand")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("ID token header 'kid' is not a string")
    signature = _b64url_decode(parts[2], "ID token signature")
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    keys = _candidate_keys(jwks, alg, kid)
    if not any(_signature_valid(alg, key, signing_input, signature) for key in keys):
        raise ValueError(f"the ID token's {alg} signature does not verify with the AS's keys")
    return _decode_json_segment(parts[1], "ID token payload")


def _check_issuer_and_audience(claims: Mapping[str, Any], *, issuer: str, client_id: str) -> None:
    iss = claims.get("iss")
    if iss != issuer:
        raise ValueError(f"ID token iss {iss!r} is not the expected issuer {issuer!r}")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise ValueError("ID token has no 'sub' claim")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud
    if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
        raise ValueError("ID token 'aud' is missing or not a string / array of strings")
    if client_id not in audiences:
        raise ValueError(f"ID token aud {aud!r} does not contain this client_id {client_id!r}")
    azp = claims.get("azp")
    if azp is not None and azp != client_id:
        raise ValueError(f"ID token azp {azp!r} is not this client_id {client_id!r}")


def _numeric_claim(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"ID token has no numeric {name!r} claim")
    return float(value)


def _check_times(claims: Mapping[str, Any], *, now: float) -> None:
    exp = _numeric_claim(claims, "exp", required=True)
    if exp is not None and now >= exp + CLOCK_LEEWAY:
        raise ValueError(f"ID token expired at {format_time(exp)} (now {format_time(now)})")
    iat = _numeric_claim(claims, "iat", required=True)
    if iat is not None and iat > now + CLOCK_LEEWAY:
        raise ValueError(f"ID token issued in the future ({format_time(iat)})")
    nbf = _numeric_claim(claims, "nbf", required=False)
    if nbf is not None and nbf > now + CLOCK_LEEWAY:
        raise ValueError(f"ID token not valid before {format_time(nbf)}")


def verify_at_hash(claims: Mapping[str, Any], access_token: str) -> None:
    """Check ``at_hash`` (OIDC Core §3.1.3.8) when the ID token carries one.

    Every algorithm :func:`verify_id_token` accepts uses SHA-256, so the hash is the left half of
    SHA-256(access_token), base64url-encoded.
    """
    at_hash = claims.get("at_hash")
    if at_hash is None:
        return
    digest = hashlib.sha256(access_token.encode("ascii", "replace")).digest()
    expected = b64url(digest[: len(digest) // 2])
    if not isinstance(at_hash, str) or not constant_time_equal(expected, at_hash):
        raise ValueError("ID token at_hash does not match the access token")


def format_time(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    try:
        return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return str(value)
