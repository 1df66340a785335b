"""Client assertions for private_key_jwt (RFC 7523 §2.2, §3): the pure part.

Pure: the assertion's claims and header, the algorithm choice, base64url. The JWS itself
(RFC 7515 §7.1 compact serialisation and the signature) comes from a :class:`Signer` handed in;
the sidecar's signer (dcr_sidecar/client_keys.py) uses joserfc, as does JWK export and the
RFC 7638 thumbprint, so this module needs no crypto library and tests can sign with anything.

Invariants: every assertion has a fresh `jti` and `exp` at most 60 s after `iat`; the header
names the key (`kid`) and the algorithm the key was made for, never another.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# design.md §3.3: ES256 first, then PS256, RS256; RS256 when the AS lists nothing.
SIGNING_PREFERENCE = ("ES256", "PS256", "RS256")
KEY_TYPES = {"ES256": "EC", "PS256": "RSA", "RS256": "RSA"}
MAX_LIFETIME = 60


class Signer(Protocol):
    """Signs a JWS with one private key (the handle the encoder calls)."""

    @property
    def alg(self) -> str: ...

    @property
    def kid(self) -> str: ...

    def compact_jws(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        """`claims` signed under `header`, in JWS compact serialisation (RFC 7515 §7.1)."""
        ...


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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


def assertion_header(signer: Signer) -> dict[str, Any]:
    """The key's own algorithm and id (RFC 7515 §4.1.1, §4.1.4), typed as a JWT."""
    return {"alg": signer.alg, "kid": signer.kid, "typ": "JWT"}


def client_assertion(signer: Signer, *, client_id: str, audience: str, now: int,
                     jti: str) -> str:
    return signer.compact_jws(assertion_header(signer),
                              assertion_claims(client_id, audience, now=now, jti=jti))
