"""The client's key pair for private_key_jwt (RFC 7523, design.md §3.3): made, exported as a JWK
and used to sign through joserfc (the claims and header come from the pure oauth/jose.py), kept
as a private JWK in the stored generation, and wrapped in a signer for the pure encoder.

Invariants:
- One key pair per upstream: a new registration reuses the newest stored key made for the
  same algorithm, and generates one (off the event loop) only when there is none.
- The algorithm follows the AS's `token_endpoint_auth_signing_alg_values_supported`
  (ES256, then PS256, RS256; RS256 when absent); the key type matches it.
- The private JWK is a :class:`Secret` everywhere; every private value is registered with the
  log redactor as soon as it is loaded.
- Static clients (design.md §3.3) bring their own: a key file (``client_key``, PEM or JWK) or a
  ready-made assertion file (``client_assertion``). Both are re-read when the file changes
  (:mod:`dcr_sidecar.filewatch`): the next assertion after a key file was replaced is signed
  with the new key; a ready-made assertion is never sent at or past its ``exp`` (502
  ``CredentialUnavailable`` instead).
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, JWKRegistry, RSAKey

from dcr_sidecar import errors
from dcr_sidecar.config import ClientAssertionFile, ClientKeyFile, Upstream
from dcr_sidecar.filewatch import Watched
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.client_auth import AssertionSource, ClientCredentials, SignerSource
from dcr_sidecar.oauth.jose import KEY_TYPES, Signer, b64url_decode, choose_signing_alg
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.oauth.registration import KeyBinding
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.observability import Redactor
from dcr_sidecar.registrar import choose_method
from dcr_sidecar.store.records import Generation, Record

log = structlog.get_logger(__name__)
RSA_BITS = 2048  # RFC 7518 §3.3 / §3.5: at least 2048
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
DEFAULT_ALGS = {"EC": "ES256", "RSA": "RS256"}  # a key file that names no algorithm
ASSERTION_MIN_REMAINING = 1  # seconds: an assertion this close to its exp is not sent


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
# joserfc does the JWK work: import, export, RFC 7638 thumbprints. Only EC P-256 and RSA keys
# sign client assertions here (KEY_TYPES).

JoseKey = ECKey | RSAKey
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})  # RFC 7518 §6.2.2, §6.3.2


def _jose_key(jwk: Mapping[str, Any]) -> JoseKey:
    """The key of a JWK of a type this module signs with; ProtocolError for another type."""
    if jwk.get("kty") not in ("EC", "RSA"):
        raise ProtocolError(f"unsupported JWK key type {jwk.get('kty')!r}")
    key = JWKRegistry.import_key(dict(jwk))
    assert isinstance(key, ECKey | RSAKey)
    return key


def _ec_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
    return dict(ECKey.import_key(key).as_dict(private=True))


def _rsa_jwk(key: rsa.RSAPrivateKey) -> dict[str, Any]:
    return dict(RSAKey.import_key(key).as_dict(private=True))


def public_jwk(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The JWK without its private members (what `jwks` at registration carries); its other
    members (kid, alg, use) kept."""
    _jose_key(jwk)
    return {k: v for k, v in jwk.items() if k not in _PRIVATE_MEMBERS}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256), used as the key's `kid`."""
    return _jose_key(jwk).thumbprint()


def generate(alg: str) -> ClientKey:
    """A new key pair of the type `alg` needs (CPU-bound: call it off the event loop)."""
    key: JoseKey = (ECKey.generate_key("P-256", private=True) if KEY_TYPES[alg] == "EC"
                    else RSAKey.generate_key(RSA_BITS, private=True))
    jwk = dict(key.as_dict(private=True))
    jwk.update(alg=alg, use="sig", kid=key.thumbprint())
    return load(Secret(json.dumps(jwk, sort_keys=True)))


def load(private_jwk: Secret) -> ClientKey:
    """A private JWK (JSON text). Whoever holds it tells the process's :class:`Redactor`
    (the resolver for a generation's key, the key file signer for a static client's)."""
    jwk = json.loads(private_jwk.reveal())
    return ClientKey(private_jwk, str(jwk["alg"]), str(jwk["kid"]), public_jwk(jwk))


# ---------------------------------------------------------------------------- key files


class KeyFileError(ValueError):
    """A key or assertion file that cannot be used; `hint` says what to do."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def _jwk_from_pem(data: bytes, path: str) -> dict[str, Any]:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(f"{path!r} holds an encrypted key", "store it unencrypted; the "
                           "file's permissions (a Secret volume) protect it") from None
    except ValueError:
        raise KeyFileError(f"{path!r} holds neither a PEM private key nor a private JWK",
                           "give a PEM (PKCS#8, SEC1 or PKCS#1) or a JWK with 'd'") from None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return _ec_jwk(key)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= RSA_BITS:
        return _rsa_jwk(key)
    raise KeyFileError(f"{path!r} holds a key private_key_jwt cannot use here",
                       f"use an EC P-256 key or an RSA key of at least {RSA_BITS} bits")


def _jwk_from_json(data: bytes, path: str) -> dict[str, Any]:
    try:
        jwk = json.loads(data)
        if not _jose_key(jwk).is_private:  # every member present and consistent
            raise ValueError("no private members")
    except (ValueError, KeyError, TypeError, AttributeError, ProtocolError, JoseError):
        raise KeyFileError(f"{path!r} is not a usable private JWK", "an EC P-256 JWK with "
                           "x, y, d or an RSA JWK with n, e, d, p, q, dp, dq, qi") from None
    if jwk.get("kty") == "EC" and jwk.get("crv") != "P-256":
        raise KeyFileError(f"{path!r} holds an EC key on {jwk.get('crv')!r}", "use P-256")
    return {k: v for k, v in jwk.items() if k not in ("use", "key_ops")}


def load_key_file(path: str, *, kid: str | None, alg: str | None) -> ClientKey:
    """A static client's key from a PEM or JWK file; `kid`/`alg` override the file's own,
    else the RFC 7638 thumbprint and the key type's default algorithm."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path!r}: {exc.strerror}") from None
    jwk = _jwk_from_json(data, path) if data.lstrip().startswith(b"{") else _jwk_from_pem(
        data, path)
    chosen = alg or jwk.get("alg") or DEFAULT_ALGS[jwk["kty"]]
    if KEY_TYPES.get(chosen) != jwk["kty"]:
        usable = [a for a, kty in KEY_TYPES.items() if kty == jwk["kty"]]
        raise KeyFileError(f"{path!r} holds an {jwk['kty']} key, which cannot sign {chosen}",
                           f"set alg to one of {usable}")
    jwk.update(alg=chosen, use="sig", kid=kid or jwk.get("kid") or thumbprint(jwk))
    return load(Secret(json.dumps(jwk, sort_keys=True)))


class KeyFileSigner(SignerSource):
    """The signer of a static client's key file, made again when the file changes."""

    def __init__(self, spec: ClientKeyFile, upstream: str, redactor: Redactor) -> None:
        self.spec, self.upstream, self.redactor = spec, upstream, redactor
        self._watched = Watched([spec.file], self._load, on_error=self._failed)

    def _load(self) -> CryptoSigner:
        key = load_key_file(self.spec.file, kid=self.spec.kid, alg=self.spec.alg)
        self.redactor.remember(key.private_jwk)
        log.info("client_key_loaded", upstream=self.upstream, path=self.spec.file, kid=key.kid,
                 alg=key.alg)
        return CryptoSigner(key)

    def _failed(self, exc: Exception) -> None:
        log.error("client_key_reload_failed", upstream=self.upstream, path=self.spec.file,
                  detail=str(exc), note="the key loaded before stays in force")

    def current(self) -> Signer:
        try:
            return self._watched.get()
        except (KeyFileError, OSError) as exc:
            raise errors.CredentialUnavailable(
                f"the client key file of {self.upstream!r} cannot be used: {exc}",
                step="forward", upstream=self.upstream) from exc


@dataclass(frozen=True)
class _Assertion:
    value: Secret
    exp: int


def _read_assertion(path: str, redactor: Redactor) -> _Assertion:
    text = Path(path).read_text(encoding="utf-8").strip()
    parts = text.split(".")
    try:
        claims = json.loads(b64url_decode(parts[1])) if len(parts) == 3 else None
    except (ValueError, UnicodeDecodeError):
        claims = None
    if not isinstance(claims, dict):
        raise KeyFileError(f"{path!r} does not hold a JWT (three base64url parts, JSON claims)")
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise KeyFileError(f"the JWT in {path!r} has no numeric exp claim")
    redactor.remember(text)
    return _Assertion(Secret(text), exp)


def _utc(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FileAssertion(AssertionSource):
    """A ready-made client assertion read from a file (a projected service-account token),
    read again whenever the file changes and never sent at or past its `exp`."""

    def __init__(self, spec: ClientAssertionFile, upstream: str, redactor: Redactor) -> None:
        self.spec, self.upstream = spec, upstream
        self._watched = Watched([spec.file], lambda: _read_assertion(spec.file, redactor),
                                on_error=self._failed)

    def _failed(self, exc: Exception) -> None:
        log.error("client_assertion_reload_failed", upstream=self.upstream, path=self.spec.file,
                  detail=str(exc))

    def expiry(self) -> int:
        """The `exp` of the assertion in force (after assertion() succeeded)."""
        return self._watched.get().exp

    def assertion(self, now: int) -> str:
        try:
            current = self._watched.get()
        except (KeyFileError, OSError) as exc:
            raise errors.CredentialUnavailable(
                f"the client assertion file of {self.upstream!r} cannot be used: {exc}",
                step="forward", upstream=self.upstream) from exc
        if current.exp - ASSERTION_MIN_REMAINING < now:
            raise errors.CredentialUnavailable(
                f"the client assertion of {self.upstream!r} in {self.spec.file!r} "
                f"(client_assertion.file) expired at {_utc(current.exp)}, "
                f"{now - current.exp} s ago, and the file has not been renewed since; an "
                "expired assertion is never sent. Check what writes the file (a projected "
                "service-account token: its volume's expirationSeconds and the kubelet)",
                step="forward", upstream=self.upstream)
        return current.value.reveal()


# ---------------------------------------------------------------------------- signing


class CryptoSigner:
    """:class:`~dcr_sidecar.oauth.jose.Signer` over one private key: joserfc serialises and
    signs (for ES256 the 64-byte R || S of RFC 7518 §3.4; PS256 with MGF1-SHA-256 and a
    32-byte salt, §3.5), with the key's own algorithm only."""

    def __init__(self, key: ClientKey) -> None:
        self.alg, self.kid = key.alg, key.kid
        self._key = _jose_key(json.loads(key.private_jwk.reveal()))
        self._algorithms = [self.alg]

    def compact_jws(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        return jwt.encode(dict(header), dict(claims), self._key, algorithms=self._algorithms)

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


def static_key_summary(config: Upstream, now: int,
                       redactor: Redactor) -> tuple[str, str | None]:
    """What `doctor` shows of a static client's key or assertion file: a line, and the
    reason it cannot be used now (the 502 a request would get), if any."""
    if config.client_key is not None:
        spec = config.client_key
        try:
            key = load_key_file(spec.file, kid=spec.kid, alg=spec.alg)
        except KeyFileError as exc:
            return "", f"the client key file of {config.name!r} cannot be used: {exc}"
        return f"client key: {spec.file} ({key.alg}, kid {key.kid})", None
    if config.client_assertion is not None:
        source = FileAssertion(config.client_assertion, config.name, redactor)
        try:
            source.assertion(now)
        except errors.CredentialUnavailable as exc:
            return "", exc.description
        exp = source.expiry()
        return (f"client assertion: {config.client_assertion.file}, expires "
                f"{_utc(exp)} (in {exp - now} s; re-read whenever the file changes)"), None
    return "", None


def _audience(config: Upstream, metadata: Metadata) -> str:
    """RFC 7523 §3: the AS's issuer, or its token endpoint (``assertion_audience``)."""
    return (metadata.issuer if config.assertion_audience == "issuer"
            else metadata.token_endpoint or metadata.issuer)


KeySources = MutableMapping[tuple[str, str, Any], SignerSource | AssertionSource]


def static_credentials(config: Upstream, metadata: Metadata, sources: KeySources,
                       redactor: Redactor) -> ClientCredentials:
    """What the encoders need for a static client. The key or assertion file reader is kept
    in `sources` (one per upstream and file) so a re-adoption keeps watching the same file."""
    assert config.client_id is not None
    method = config.static_auth_method
    if method != "private_key_jwt":
        return ClientCredentials(config.client_id, config.client_secret, method)
    audience = _audience(config, metadata)
    if config.client_assertion is not None:
        spec: ClientKeyFile | ClientAssertionFile = config.client_assertion
        key = (config.name, "assertion", spec)
        source = sources.get(key) or FileAssertion(config.client_assertion, config.name,
                                                        redactor)
        sources[key] = source
        assert isinstance(source, FileAssertion)
        return ClientCredentials(config.client_id, None, method, audience=audience,
                                 presigned=source)
    assert config.client_key is not None
    key = (config.name, "key", config.client_key)
    signer = sources.get(key) or KeyFileSigner(config.client_key, config.name, redactor)
    sources[key] = signer
    assert isinstance(signer, KeyFileSigner)
    return ClientCredentials(config.client_id, None, method, signer=signer, audience=audience)


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
    return ClientCredentials(generation.client_id, None, method,
                             signer=CryptoSigner(load(generation.private_key)),
                             audience=_audience(config, metadata))
