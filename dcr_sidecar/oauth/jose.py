"""Client assertions for private_key_jwt (RFC 7523 §2.2, §3) and the JWK shapes around them.

Pure: JWS compact serialisation (RFC 7515 §7.1), the assertion's claims, the algorithm choice,
public-JWK export and RFC 7638 thumbprints. The signature itself comes from a :class:`Signer`
handed in, so this module needs no crypto library and tests can sign with anything.

Invariants: every assertion has a fresh `jti` and `exp` at most 60 s after `iat`; the header
names the key (`kid`) and the algorithm the key was made for, never another.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from dcr_sidecar.oauth import ProtocolError

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# design.md §3.3: ES256 first, then PS256, RS256; RS256 when the AS lists nothing.
SIGNING_PREFERENCE = ("ES256", "PS256", "RS256")
KEY_TYPES = {"ES256": "EC", "PS256": "RSA", "RS256": "RSA"}
MAX_LIFETIME = 60
# RFC 7638 §3.2: the members a thumbprint covers, per key type.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}
# RFC 7518 §6.2.2, §6.3.2: members that are private.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})


class Signer(Protocol):
    """Signs JWS input with one private key (the I/O-free handle the encoder calls)."""

    @property
    def alg(self) -> str: ...

    @property
    def kid(self) -> str: ...

    def sign(self, data: bytes) -> bytes:
        """The JWS signature of `data` (for ES256 the 64-byte R || S, RFC 7518 §3.4)."""
        ...


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_part(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8"))


def choose_signing_alg(supported: Sequence[str] | None) -> str | None:
    """The algorithm for client assertions, from the AS's
    `token_endpoint_auth_signing_alg_values_supported`; None when no listed one is usable."""
    if supported is None:
        return "RS256"
    return next((alg for alg in SIGNING_PREFERENCE if alg in supported), None)


def assertion_claims(client_id: str, audience: str, *, now: int, jti: str,
                     lifetime: int = MAX_LIFETIME) -> dict[str, Any]:
    """RFC 7523 §3: iss = sub = client_id, the AS as aud, a unique jti, a short exp."""
    if not 0 < lifetime <= MAX_LIFETIME:
        raise ValueError(f"assertion lifetime must be within (0, {MAX_LIFETIME}] seconds")
    return {"iss": client_id, "sub": client_id, "aud": audience, "jti": jti,
            "iat": now, "exp": now + lifetime}


def compact_jws(header: Mapping[str, Any], claims: Mapping[str, Any], signer: Signer) -> str:
    signing_input = f"{_json_part(header)}.{_json_part(claims)}"
    return f"{signing_input}.{b64url(signer.sign(signing_input.encode('ascii')))}"


def client_assertion(signer: Signer, *, client_id: str, audience: str, now: int,
                     jti: str) -> str:
    header = {"alg": signer.alg, "kid": signer.kid, "typ": "JWT"}
    return compact_jws(header, assertion_claims(client_id, audience, now=now, jti=jti), signer)


def public_jwk(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The JWK without its private members (what `jwks` at registration carries)."""
    if jwk.get("kty") not in _THUMBPRINT_MEMBERS:
        raise ProtocolError(f"unsupported JWK key type {jwk.get('kty')!r}")
    return {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), used as the key's `kid`."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None:
        raise ProtocolError(f"unsupported JWK key type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())
