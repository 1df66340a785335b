"""The client's key pair for private_key_jwt (RFC 7523, design.md §3.3): made with `cryptography`,
kept as a private JWK in the stored generation, and wrapped in a signer for the pure encoder.

Invariants:
- One key pair per upstream: a new registration reuses the newest stored key made for the
  same algorithm, and generates one (off the event loop) only when there is none.
- The algorithm follows the AS's `token_endpoint_auth_signing_alg_values_supported`
  (ES256, then PS256, RS256; RS256 when absent); the key type matches it.
- The private JWK is a :class:`Secret` everywhere; every private value is registered with the
  log redactor as soon as it is loaded.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from dcr_sidecar import errors
from dcr_sidecar.config import Upstream
from dcr_sidecar.oauth.client_auth import ClientCredentials
from dcr_sidecar.oauth.jose import (
    KEY_TYPES,
    b64url,
    b64url_decode,
    choose_signing_alg,
    public_jwk,
    thumbprint,
)
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.oauth.registration import KeyBinding
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.observability import remember_secret
from dcr_sidecar.registrar import choose_method
from dcr_sidecar.store.records import Generation, Record

RSA_BITS = 2048  # RFC 7518 §3.3 / §3.5: at least 2048
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class ClientKey:
    """A private JWK (with `alg` and `kid`) and what registration needs of it."""

    private_jwk: Secret
    alg: str
    kid: str
    public: Mapping[str, Any]

    def binding(self) -> KeyBinding:
        return KeyBinding(jwks={"keys": [dict(self.public)]}, alg=self.alg)

    def __repr__(self) -> str:
        return f"ClientKey({self.alg}, kid={self.kid!r})"


# ---------------------------------------------------------------------------- JWK <-> key


def _int_bytes(value: int, length: int | None = None) -> str:
    size = length or max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(size, "big"))


def _int(jwk: Mapping[str, Any], member: str) -> int:
    return int.from_bytes(b64url_decode(str(jwk[member])), "big")


def _ec_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    numbers = key.private_numbers()
    return {"kty": "EC", "crv": "P-256", "x": _int_bytes(numbers.public_numbers.x, 32),
            "y": _int_bytes(numbers.public_numbers.y, 32),
            "d": _int_bytes(numbers.private_value, 32)}


def _rsa_jwk(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    n = key.private_numbers()
    return {"kty": "RSA", "n": _int_bytes(n.public_numbers.n), "e": _int_bytes(n.public_numbers.e),
            "d": _int_bytes(n.d), "p": _int_bytes(n.p), "q": _int_bytes(n.q),
            "dp": _int_bytes(n.dmp1), "dq": _int_bytes(n.dmq1), "qi": _int_bytes(n.iqmp)}


def _private_key(jwk: Mapping[str, Any]) -> PrivateKey:
    if jwk.get("kty") == "EC":
        public = ec.EllipticCurvePublicNumbers(_int(jwk, "x"), _int(jwk, "y"), ec.SECP256R1())
        return ec.EllipticCurvePrivateNumbers(_int(jwk, "d"), public).private_key()
    public_rsa = rsa.RSAPublicNumbers(_int(jwk, "e"), _int(jwk, "n"))
    return rsa.RSAPrivateNumbers(
        _int(jwk, "p"), _int(jwk, "q"), _int(jwk, "d"), _int(jwk, "dp"), _int(jwk, "dq"),
        _int(jwk, "qi"), public_rsa).private_key()


def generate(alg: str) -> ClientKey:
    """A new key pair of the type `alg` needs (CPU-bound: call it off the event loop)."""
    key: PrivateKey
    if KEY_TYPES[alg] == "EC":
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = _ec_jwk(key)
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        jwk = _rsa_jwk(key)
    jwk.update(alg=alg, use="sig", kid=thumbprint(jwk))
    return load(Secret(json.dumps(jwk, sort_keys=True)))


def load(private_jwk: Secret) -> ClientKey:
    """A stored private JWK, its private values registered with the log redactor."""
    jwk = json.loads(private_jwk.reveal())
    remember_secret(private_jwk)
    for member in ("d", "p", "q", "dp", "dq", "qi"):
        if isinstance(jwk.get(member), str):
            remember_secret(jwk[member])
    return ClientKey(private_jwk, str(jwk["alg"]), str(jwk["kid"]), public_jwk(jwk))


# ---------------------------------------------------------------------------- signing


class CryptoSigner:
    """:class:`~dcr_sidecar.oauth.jose.Signer` over a `cryptography` private key."""

    def __init__(self, key: ClientKey) -> None:
        self.alg, self.kid = key.alg, key.kid
        self._key = _private_key(json.loads(key.private_jwk.reveal()))

    def sign(self, data: bytes) -> bytes:
        key = self._key
        if isinstance(key, ec.EllipticCurvePrivateKey):
            r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # RFC 7518 §3.4
        if self.alg == "PS256":  # RFC 7518 §3.5: MGF1 with SHA-256, salt as long as the hash
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
            return key.sign(data, pss, hashes.SHA256())
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())

    def __repr__(self) -> str:
        return f"CryptoSigner({self.alg}, kid={self.kid!r})"


# ---------------------------------------------------------------------------- resolver helpers


async def registration_key(config: Upstream, metadata: Metadata,
                           record: Record | None) -> ClientKey | None:
    """The key to register with, when the chosen method is private_key_jwt: the newest stored
    one made for the algorithm the AS wants, else a new one."""
    if choose_method(config, metadata) != "private_key_jwt":
        return None
    alg = choose_signing_alg(metadata.get_list("token_endpoint_auth_signing_alg_values_supported"))
    assert alg is not None  # choose_method skips private_key_jwt without a common algorithm
    stored = sorted(record.generations if record else (), key=lambda g: -g.generation)
    for generation in stored:
        if generation.private_key is not None:
            key = load(generation.private_key)
            if key.alg == alg:
                return key
    return await asyncio.to_thread(generate, alg)


def client_credentials(generation: Generation, config: Upstream,
                       metadata: Metadata) -> ClientCredentials:
    """What the encoders need to authenticate as `generation`."""
    method = generation.token_endpoint_auth_method
    if method != "private_key_jwt":
        return ClientCredentials(generation.client_id, generation.client_secret, method)
    if generation.private_key is None:
        raise errors.BadUpstream(
            f"generation {generation.generation} uses private_key_jwt but the store holds no "
            "private key for it", step="store_read", upstream=config.name)
    audience = (metadata.issuer if config.assertion_audience == "issuer"
                else metadata.token_endpoint or metadata.issuer)
    return ClientCredentials(generation.client_id, None, method,
                             signer=CryptoSigner(load(generation.private_key)), audience=audience)
