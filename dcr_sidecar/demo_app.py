"""The demo relying party behind ``dcr-sidecar demo-app``.

An ordinary OpenID Connect client (authorization code + PKCE S256) that knows nothing about client
registration: it only talks to the sidecar. Per login it reads the real ``client_id`` from
``GET {sidecar}/{upstream}/client`` (never a secret; re-read per login because a new client
generation changes it), reads the AS metadata the sidecar rewrites, sends the browser to the
sidecar's ``/authorize``, and exchanges the code at the sidecar's ``/token`` without any client
authentication of its own (the sidecar injects the real one). It then validates the ID token against
the AS's JWKS and shows the claims.

Only the standard library, aiohttp and cryptography are used. The JWT/JWK code is a handful of small
pure functions (:func:`verify_id_token`, :func:`jwk_public_key`, :func:`verify_at_hash`) so that it
can be unit-tested without a server.

Nothing here ever renders a token or a secret: the access token is shown truncated to 8 characters,
the refresh token as "present: yes/no", and errors as ``error`` / ``error_description`` only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import html
import json
import re
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from yarl import URL

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_SIDECAR_URL",
    "DEFAULT_UPSTREAM",
    "SCOPE",
    "PendingLogin",
    "PendingLogins",
    "add_arguments",
    "create_demo_app",
    "decode_jwt_unverified",
    "jwk_public_key",
    "main",
    "make_pkce_pair",
    "run_demo_app",
    "verify_at_hash",
    "verify_id_token",
]

_log = structlog.get_logger(__name__)

DEFAULT_SIDECAR_URL: Final = "http://127.0.0.1:8080"
DEFAULT_UPSTREAM: Final = "demo"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000
SCOPE: Final = "openid profile email offline_access"

CLOCK_LEEWAY: Final = 60.0  # seconds of clock skew tolerated on exp / iat / nbf
PENDING_TTL: Final = 600.0  # a login must come back within 10 minutes
MAX_PENDING_SESSIONS: Final = 1000
MAX_PENDING_PER_SESSION: Final = 5  # a few tabs may log in at once
MAX_RESPONSE_BYTES: Final = 1024 * 1024
MAX_DESCRIPTION_CHARS: Final = 500
SESSION_COOKIE: Final = "dcr_demo_session"
MIN_RSA_BITS: Final = 2048

SUPPORTED_ALGS: Final = ("RS256", "PS256", "ES256")

_UPSTREAM_NAME_RE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_RESERVED_NAMES: Final = frozenset({"healthz", "readyz", "metrics", "admin", "well-known"})
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_SESSION_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{32,64}")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TIME_CLAIMS: Final = frozenset(
    {"exp", "iat", "nbf", "auth_time", "updated_at", "client_secret_expires_at"}
)


# --------------------------------------------------------------------------------------------------
# JOSE: pure functions
# --------------------------------------------------------------------------------------------------

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def _b64url_decode(data: str, what: str) -> bytes:
    """Decode unpadded base64url (RFC 7515 §2), strictly."""
    if not isinstance(data, str) or not _B64URL_RE.fullmatch(data) or len(data) % 4 == 1:
        raise ValueError(f"{what} is not valid base64url")
    try:
        return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{what} is not valid base64url") from exc


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


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


def _is_number(value: object) -> bool:
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
    if not isinstance(token_nonce, str) or not hmac.compare_digest(
        token_nonce.encode("utf-8"), nonce.encode("utf-8")
    ):
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
        raise ValueError(f"ID token expired at {_format_time(exp)} (now {_format_time(now)})")
    iat = _numeric_claim(claims, "iat", required=True)
    if iat is not None and iat > now + CLOCK_LEEWAY:
        raise ValueError(f"ID token issued in the future ({_format_time(iat)})")
    nbf = _numeric_claim(claims, "nbf", required=False)
    if nbf is not None and nbf > now + CLOCK_LEEWAY:
        raise ValueError(f"ID token not valid before {_format_time(nbf)}")


def verify_at_hash(claims: Mapping[str, Any], access_token: str) -> None:
    """Check ``at_hash`` (OIDC Core §3.1.3.8) when the ID token carries one.

    Every algorithm :func:`verify_id_token` accepts uses SHA-256, so the hash is the left half of
    SHA-256(access_token), base64url-encoded.
    """
    at_hash = claims.get("at_hash")
    if at_hash is None:
        return
    digest = hashlib.sha256(access_token.encode("ascii", "replace")).digest()
    expected = _b64url_encode(digest[: len(digest) // 2])
    if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash, expected):
        raise ValueError("ID token at_hash does not match the access token")


def make_pkce_pair() -> tuple[str, str]:
    """A fresh RFC 7636 §4.1/4.2 (verifier, S256 challenge) pair; the verifier has 64 characters."""
    verifier = secrets.token_urlsafe(48)
    challenge = _b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
    return verifier, challenge


# --------------------------------------------------------------------------------------------------
# Server-side login state
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingLogin:
    """What /login remembers for /callback (kept server-side, never in the browser)."""

    state: str
    nonce: str
    code_verifier: str
    client_id: str
    metadata: Mapping[str, Any]
    created: float


class PendingLogins:
    """Pending logins keyed by session cookie, then by ``state``; bounded and expiring."""

    def __init__(
        self,
        *,
        ttl: float = PENDING_TTL,
        max_sessions: int = MAX_PENDING_SESSIONS,
        max_per_session: int = MAX_PENDING_PER_SESSION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_sessions = max_sessions
        self._max_per_session = max_per_session
        self._clock = clock
        self._sessions: dict[str, dict[str, PendingLogin]] = {}

    def __len__(self) -> int:
        return sum(len(logins) for logins in self._sessions.values())

    def now(self) -> float:
        return self._clock()

    def add(self, session_id: str, login: PendingLogin) -> None:
        self._prune()
        logins = self._sessions.pop(session_id, {})
        logins[login.state] = login
        while len(logins) > self._max_per_session:
            del logins[next(iter(logins))]
        self._sessions[session_id] = logins  # most recently used last
        while len(self._sessions) > self._max_sessions:
            del self._sessions[next(iter(self._sessions))]

    def pop(self, session_id: str, state: str) -> PendingLogin | None:
        """Take (one time) the login for this session and state, if it has not expired."""
        self._prune()
        logins = self._sessions.get(session_id)
        if logins is None:
            return None
        login = logins.pop(state, None)
        if not logins:
            del self._sessions[session_id]
        return login

    def _prune(self) -> None:
        cutoff = self._clock() - self._ttl
        for session_id in list(self._sessions):
            logins = self._sessions[session_id]
            for state in [s for s, login in logins.items() if login.created <= cutoff]:
                del logins[state]
            if not logins:
                del self._sessions[session_id]


# --------------------------------------------------------------------------------------------------
# Talking to the sidecar and the AS
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSettings:
    sidecar_url: str
    upstream: str
    public_url: str

    @property
    def upstream_url(self) -> str:
        return f"{self.sidecar_url}/{self.upstream}"

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/callback"


class DemoError(Exception):
    """A failure shown to the user as a friendly page: an OAuth-style code and description."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 502,
        hint: str | None = None,
        retry_after: str | None = None,
        title: str = "Login failed",
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.hint = hint
        self.retry_after = retry_after
        self.title = title


SETTINGS_KEY: Final = web.AppKey("dcr_demo_settings", DemoSettings)
HTTP_KEY: Final = web.AppKey("dcr_demo_http", aiohttp.ClientSession)
PENDING_KEY: Final = web.AppKey("dcr_demo_pending", PendingLogins)


def _clean(text: object, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    """Remote text made safe to show: control characters removed, length capped."""
    cleaned = _CONTROL_RE.sub(" ", str(text)).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _display_url(url: str) -> str:
    """A URL without userinfo, query or fragment, for messages."""
    try:
        parsed = URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "(invalid URL)"


async def _read_capped(resp: aiohttp.ClientResponse, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise DemoError(
                "invalid_response", f"{what} answered more than {MAX_RESPONSE_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _error_from_response(status: int, body: bytes, what: str, retry_after: str | None) -> DemoError:
    payload = _parse_json_object(body)
    page_status = status if status in (503, 504) else 502
    if payload is not None and isinstance(payload.get("error"), str):
        description = payload.get("error_description")
        return DemoError(
            _clean(payload["error"], 100),
            _clean(description)
            if isinstance(description, str)
            else f"{what} answered HTTP {status}",
            status=page_status,
            retry_after=_clean(retry_after, 40) if retry_after else None,
        )
    return DemoError(
        "unexpected_response",
        f"{what} answered HTTP {status} without an OAuth error body",
        status=page_status,
        retry_after=_clean(retry_after, 40) if retry_after else None,
    )


def _network_error(exc: BaseException, what: str, url: str) -> DemoError:
    if isinstance(exc, TimeoutError):
        detail = "timed out"
    else:
        detail = _clean(exc, 300) or type(exc).__name__
    return DemoError(
        "network_error",
        f"could not reach {what} at {_display_url(url)}: {detail}",
        status=504 if isinstance(exc, TimeoutError) else 502,
    )


async def _request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    headers: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One request; a 200 JSON object back, anything else a :class:`DemoError`."""
    all_headers = {"Accept": "application/json", **(headers or {})}
    # Follow redirects only for plain GETs: never re-send a code, verifier or bearer token.
    follow = method == "GET" and not headers
    try:
        async with session.request(
            method, url, headers=all_headers, data=data, allow_redirects=follow
        ) as resp:
            body = await _read_capped(resp, what)
            if resp.status != 200:
                raise _error_from_response(resp.status, body, what, resp.headers.get("Retry-After"))
            payload = _parse_json_object(body)
            if payload is None:
                raise DemoError("invalid_response", f"{what} did not answer a JSON object")
            return payload
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # ValueError: a malformed URL
        raise _network_error(exc, what, url) from exc


def _require_str(doc: Mapping[str, Any], name: str, what: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise DemoError("invalid_response", f"{what} has no {name!r}")
    return value


async def fetch_client(session: aiohttp.ClientSession, settings: DemoSettings) -> dict[str, Any]:
    """``GET /{upstream}/client``: the real client_id (re-read per login: generations change it)."""
    client = await _request_json(
        session, "GET", f"{settings.upstream_url}/client", what="the sidecar's /client"
    )
    _require_str(client, "client_id", "the sidecar's /client answer")
    return client


async def fetch_metadata(session: aiohttp.ClientSession, settings: DemoSettings) -> dict[str, Any]:
    """The AS metadata as rewritten by the sidecar."""
    metadata = await _request_json(
        session,
        "GET",
        f"{settings.upstream_url}/.well-known/openid-configuration",
        what="the sidecar's metadata",
    )
    _require_str(metadata, "issuer", "the AS metadata")
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = _require_str(metadata, name, "the AS metadata")
        try:
            scheme = URL(value).scheme
        except ValueError:
            scheme = ""
        if scheme not in ("http", "https"):
            raise DemoError("invalid_response", f"the AS metadata {name!r} is not an http(s) URL")
    return metadata


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_CSS: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f8;
color:#1f2933;line-height:1.5}
main{max-width:60rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.6rem;margin:0 0 1rem}h2{font-size:1.15rem;margin:1.5rem 0 .5rem}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:1rem 1.25rem;
margin-bottom:1rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.35rem .5rem;border-bottom:1px solid #e4e7eb}
th{width:16rem;font-weight:600;color:#52606d}
td code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9rem}
pre{margin:0;white-space:pre-wrap;word-break:break-all}
.ok{border-left:6px solid #2f9e44}.bad{border-left:6px solid #e03131}
.warn{border-left:6px solid #f08c00}
.badge{display:inline-block;padding:.1rem .55rem;border-radius:999px;font-weight:600;color:#fff}
.badge.ok{background:#2f9e44;border:0}.badge.bad{background:#e03131;border:0}
.button{display:inline-block;background:#1c7ed6;color:#fff;text-decoration:none;
padding:.55rem 1.2rem;border-radius:6px;font-weight:600;margin-right:.5rem}
.button.secondary{background:#e9ecef;color:#1f2933}
.muted{color:#7b8794;font-size:.9rem}
"""

_SECURITY_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, *, status: int = 200) -> web.Response:
    document = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)} · dcr-sidecar demo</title><style>{_CSS}</style></head>"
        f"<body><main><h1>{_e(title)}</h1>{body}</main></body></html>"
    )
    return web.Response(
        text=document, status=status, content_type="text/html", headers=_SECURITY_HEADERS
    )


def _links(*, login: bool = True) -> str:
    login_link = '<a class=button href="/login">Log in again</a>' if login else ""
    return f'<p>{login_link}<a class="button secondary" href="/">Home</a></p>'


def _format_time(value: object) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return str(value)
    try:
        return datetime.fromtimestamp(value, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):
        return str(value)


def _render_value(name: str, value: object) -> str:
    if name == "client_secret_expires_at" and value == 0:
        return "<code>0</code> <span class=muted>(never expires)</span>"
    if isinstance(value, str):
        return f"<code>{_e(value)}</code>"
    if name in _TIME_CLAIMS and _is_number(value):
        return f"<code>{_e(value)}</code> <span class=muted>({_e(_format_time(value))})</span>"
    if value is None or isinstance(value, bool | int | float):
        return f"<code>{_e(json.dumps(value))}</code>"
    return f"<pre>{_e(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _table(rows: Mapping[str, Any] | list[tuple[str, str]], *, raw: bool = False) -> str:
    """A two-column table; with ``raw`` the values are already-escaped HTML."""
    items = rows if isinstance(rows, list) else list(rows.items())
    cells = "".join(
        f"<tr><th>{_e(name)}</th><td>{value if raw else _render_value(name, value)}</td></tr>"
        for name, value in items
    )
    return f"<table>{cells}</table>"


def _error_card(exc: DemoError) -> str:
    rows: list[tuple[str, str]] = [
        ("error", f"<code>{_e(exc.error)}</code>"),
        ("error_description", _e(exc.description)),
    ]
    if exc.retry_after:
        rows.append(("Retry-After", f"{_e(exc.retry_after)} s"))
    hint = f"<p>{_e(exc.hint)}</p>" if exc.hint else ""
    return f"<div class='card bad'>{_table(rows, raw=True)}{hint}</div>"


def _error_page(title: str, exc: DemoError, *, status: int | None = None) -> web.Response:
    return _page(title, _error_card(exc) + _links(), status=status or exc.status)


# --------------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------------


async def handle_index(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    session = request.app[HTTP_KEY]
    intro = (
        "<div class=card><p>This is an ordinary OpenID Connect app that knows nothing about "
        "client registration: it only talks to the dcr-sidecar, which obtains client credentials "
        "for the upstream authorization server (static, or by Dynamic Client Registration) and "
        "gives this app just the client_id. When you log in, the sidecar passes the authorization "
        "request on and injects the real client authentication into the token request; this app "
        "then validates the ID token it receives and shows its claims.</p>"
        + _table(
            [
                ("upstream", f"<code>{_e(settings.upstream)}</code>"),
                ("sidecar", f"<code>{_e(settings.sidecar_url)}</code>"),
                ("redirect_uri", f"<code>{_e(settings.redirect_uri)}</code>"),
            ],
            raw=True,
        )
        + "</div>"
    )
    try:
        client = await fetch_client(session, settings)
    except DemoError as exc:
        exc.hint = (
            "The sidecar cannot provide credentials for this upstream yet (it may still be "
            "discovering or registering, or the authorization server is unreachable). "
            "Reload this page to retry" + (f" in {exc.retry_after} s." if exc.retry_after else ".")
        )
        client_html = "<h2>Client</h2>" + _error_card(exc)
    else:
        fields = [
            (name, client[name])
            for name in (
                "client_id",
                "generation",
                "token_endpoint_auth_method",
                "issuer",
                "client_secret_expires_at",
            )
            if name in client
        ]
        client_html = (
            "<h2>Client (from the sidecar's /client)</h2><div class='card ok'>"
            + _table(dict(fields))
            + '<p><a class=button href="/login">Log in</a></p></div>'
        )
    warning = ""
    try:
        foreign_origin = request.url.origin() != URL(settings.public_url).origin()
    except ValueError:
        foreign_origin = False
    if foreign_origin:
        warning = (
            "<div class='card warn'><p>You opened this page as "
            f"<code>{_e(request.url.origin())}</code>, but the redirect URI is "
            f"<code>{_e(settings.redirect_uri)}</code>: the login cookie would not survive the "
            f'round trip. Open <a href="{_e(settings.public_url)}/">{_e(settings.public_url)}/</a> '
            "instead.</p></div>"
        )
    return _page("dcr-sidecar demo app", warning + intro + client_html)


async def handle_login(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    session = request.app[HTTP_KEY]
    pending = request.app[PENDING_KEY]
    try:
        client = await fetch_client(session, settings)
        metadata = await fetch_metadata(session, settings)
    except DemoError as exc:
        if exc.hint is None:
            exc.hint = (
                "Check that the sidecar is running and configured for this upstream, then retry."
            )
        return _error_page("Cannot start the login", exc)
    client_id = str(client["client_id"])
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier, challenge = make_pkce_pair()

    session_id = request.cookies.get(SESSION_COOKIE, "")
    if not _SESSION_ID_RE.fullmatch(session_id):
        session_id = secrets.token_urlsafe(32)
    pending.add(
        session_id,
        PendingLogin(
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            client_id=client_id,
            metadata=metadata,
            created=pending.now(),
        ),
    )
    _log.info("demo_login_started", issuer=str(metadata["issuer"]), client_id=client_id)
    location = URL(str(metadata["authorization_endpoint"])).extend_query(
        response_type="code",
        client_id=client_id,
        redirect_uri=settings.redirect_uri,
        scope=SCOPE,
        state=state,
        nonce=nonce,
        code_challenge=challenge,
        code_challenge_method="S256",
        prompt="consent",
    )
    response = web.Response(
        status=302, headers={"Location": str(location), "Cache-Control": "no-store"}
    )
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(PENDING_TTL),
        path="/",
        httponly=True,
        samesite="Lax",
    )
    return response


async def handle_callback(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    session = request.app[HTTP_KEY]
    try:
        login = _take_pending_login(request)
        code = _authorization_code(request.query, login.metadata)
        tokens = await _exchange_code(session, settings, login, code)
    except DemoError as exc:
        _log.info("demo_login_failed", error=exc.error, status=exc.status)
        return _error_page(exc.title, exc)
    return await _result_page(session, login, tokens)


def _take_pending_login(request: web.Request) -> PendingLogin:
    """The one-time login record named by the session cookie and ``state`` (RFC 6749 §10.12)."""
    state = request.query.get("state")
    session_id = request.cookies.get(SESSION_COOKIE)
    if not state:
        raise DemoError("invalid_request", "the callback has no state parameter", status=400)
    if not session_id:
        public_url = request.app[SETTINGS_KEY].public_url
        raise DemoError(
            "invalid_request",
            "the browser did not send this app's session cookie",
            status=400,
            hint=(
                "Cookies may be blocked, or the login was started on another address than "
                f"{public_url} (the redirect URI's). Start again from that address."
            ),
        )
    login = request.app[PENDING_KEY].pop(session_id, state)
    if login is None:
        raise DemoError(
            "invalid_request",
            "unknown, already used or expired state (logins expire after 10 minutes)",
            status=400,
            hint="Start a new login.",
        )
    return login


def _authorization_code(query: Mapping[str, str], metadata: Mapping[str, Any]) -> str:
    """The code of an authorization response, after the RFC 9207 issuer check."""
    issuer = str(metadata["issuer"])
    iss = query.get("iss")
    # RFC 9207 §2.4: required when advertised, compared whenever present (mix-up defence).
    if iss is None and metadata.get("authorization_response_iss_parameter_supported") is True:
        raise DemoError(
            "invalid_request",
            "the AS advertises RFC 9207 but the authorization response has no iss parameter",
            status=400,
        )
    if iss is not None and iss != issuer:
        raise DemoError(
            "invalid_request",
            f"the authorization response names issuer {_clean(iss, 200)!r}, expected {issuer!r} "
            "(RFC 9207 mix-up defence)",
            status=400,
        )
    if "error" in query:
        description = query.get("error_description")
        raise DemoError(
            _clean(query["error"], 100),
            _clean(description) if description else "(no error_description)",
            status=400,
            title="The authorization server refused the login",
        )
    code = query.get("code")
    if not code:
        raise DemoError("invalid_request", "the callback has neither code nor error", status=400)
    return code


async def _exchange_code(
    session: aiohttp.ClientSession, settings: DemoSettings, login: PendingLogin, code: str
) -> dict[str, Any]:
    """RFC 6749 §4.1.3 at the sidecar's token endpoint: client_id only; the sidecar adds auth."""
    try:
        return await _request_json(
            session,
            "POST",
            str(login.metadata["token_endpoint"]),
            what="the sidecar's token endpoint",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": settings.redirect_uri,
                "client_id": login.client_id,
                "code_verifier": login.code_verifier,
            },
        )
    except DemoError as exc:
        exc.title = "The token request failed"
        raise


async def _result_page(
    session: aiohttp.ClientSession, login: PendingLogin, tokens: Mapping[str, Any]
) -> web.Response:
    claims, problem = await _validated_claims(session, login, tokens)
    sections = [_verdict_card(login, problem), _claims_section(tokens, claims)]
    sections.append("<h2>Token response</h2><div class=card>" + _token_table(tokens) + "</div>")
    userinfo_endpoint = login.metadata.get("userinfo_endpoint")
    if isinstance(userinfo_endpoint, str) and userinfo_endpoint:
        card = await _userinfo_card(session, userinfo_endpoint, tokens.get("access_token"), claims)
        sections.append("<h2>UserInfo</h2>" + card)
    sections.append(_links())
    _log.info(
        "demo_login_completed",
        issuer=str(login.metadata.get("issuer")),
        client_id=login.client_id,
        id_token_valid=claims is not None,
    )
    title = "Logged in" if claims is not None else "Login finished, but the ID token is NOT valid"
    return _page(title, "".join(sections))


async def _validated_claims(
    session: aiohttp.ClientSession, login: PendingLogin, tokens: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """(claims, None) for a valid ID token, else (None, why not)."""
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        return None, "the token response has no id_token"
    try:
        jwks = await _request_json(
            session, "GET", str(login.metadata["jwks_uri"]), what="the AS's jwks_uri"
        )
    except DemoError as exc:
        return None, f"cannot fetch the AS's keys: {exc.error}: {exc.description}"
    try:
        claims = verify_id_token(
            id_token,
            jwks,
            issuer=str(login.metadata["issuer"]),
            client_id=login.client_id,
            nonce=login.nonce,
            now=time.time(),
        )
        access_token = tokens.get("access_token")
        if isinstance(access_token, str):
            verify_at_hash(claims, access_token)
    except ValueError as exc:
        return None, str(exc)
    return claims, None


def _verdict_card(login: PendingLogin, problem: str | None) -> str:
    if problem is None:
        return (
            "<div class='card ok'><p><span class='badge ok'>ID token valid</span> "
            "signature (AS's JWKS), iss, aud, exp, iat and nonce all check out for client_id "
            f"<code>{_e(login.client_id)}</code>.</p></div>"
        )
    return (
        "<div class='card bad'><p><span class='badge bad'>ID token NOT valid</span> "
        f"{_e(problem)}</p></div>"
    )


def _claims_section(tokens: Mapping[str, Any], claims: Mapping[str, Any] | None) -> str:
    if claims is not None:
        return "<h2>ID token claims</h2><div class=card>" + _table(claims) + "</div>"
    id_token = tokens.get("id_token")
    try:
        unverified = decode_jwt_unverified(id_token) if isinstance(id_token, str) else None
    except ValueError:
        unverified = None
    if unverified is None:
        return ""
    return (
        "<h2>ID token claims (unverified — do not trust them)</h2><div class='card warn'>"
        + _table(unverified)
        + "</div>"
    )


def _truncated_token(token: object) -> str:
    """Enough of a token to recognise it, never enough to use it."""
    if not isinstance(token, str) or not token:
        return "<em>absent</em>"
    if len(token) < 16:
        return "<em>present (too short to show a prefix safely)</em>"
    return f"<code>{_e(token[:8])}…</code>"


def _token_table(tokens: Mapping[str, Any]) -> str:
    rows: list[tuple[str, str]] = [
        ("access_token", _truncated_token(tokens.get("access_token"))),
        ("refresh_token", "present: yes" if tokens.get("refresh_token") else "present: no"),
        ("id_token", "present: yes" if isinstance(tokens.get("id_token"), str) else "present: no"),
    ]
    rows.extend(
        (name, _render_value(name, tokens[name]))
        for name in ("token_type", "expires_in", "scope")
        if name in tokens
    )
    return _table(rows, raw=True)


async def _userinfo_card(
    session: aiohttp.ClientSession,
    endpoint: str,
    access_token: object,
    claims: Mapping[str, Any] | None,
) -> str:
    if claims is None:
        return "<div class='card warn'><p>Skipped: the ID token did not validate.</p></div>"
    if not isinstance(access_token, str):
        return (
            "<div class='card warn'><p>Skipped: the token response has no access token.</p></div>"
        )
    try:
        userinfo = await _request_json(
            session,
            "GET",
            endpoint,
            what="the AS's userinfo endpoint",
            headers={"Authorization": f"Bearer {access_token}"},
        )
    except DemoError as exc:
        return _error_card(exc)
    note = ""
    if userinfo.get("sub") != claims.get("sub"):
        note = (
            "<p><span class='badge bad'>sub mismatch</span> the UserInfo sub differs from the ID "
            "token's; a real app must not use these claims (OIDC Core §5.3.4).</p>"
        )
    return f"<div class=card>{note}{_table(userinfo)}</div>"


@web.middleware
async def _friendly_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return _page(
            "Not found",
            "<div class='card bad'><p>There is no such page in the demo app.</p></div>"
            + _links(login=False),
            status=404,
        )
    except web.HTTPException:
        raise
    except Exception:
        _log.exception("demo_request_failed", path=request.path)
        return _page(
            "Something went wrong",
            _error_card(
                DemoError("internal_error", "the demo app hit an unexpected error (see its log)")
            )
            + _links(),
            status=500,
        )


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=15, connect=5, sock_read=10)
    async with aiohttp.ClientSession(
        timeout=timeout, headers={"User-Agent": "dcr-sidecar-demo-app"}
    ) as session:
        app[HTTP_KEY] = session
        yield


# --------------------------------------------------------------------------------------------------
# Construction and CLI
# --------------------------------------------------------------------------------------------------


def _validate_upstream(name: str) -> str:
    if not _UPSTREAM_NAME_RE.fullmatch(name) or name in _RESERVED_NAMES:
        raise ValueError(
            f"invalid upstream name {name!r}: expected ^[a-z0-9][a-z0-9-]{{0,62}}$, "
            f"not one of {', '.join(sorted(_RESERVED_NAMES))}"
        )
    return name


def _validate_base_url(url: str, what: str) -> str:
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid {what} {url!r}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{what} must be an http(s) URL with a host, got {url!r}")
    if parsed.user or parsed.password:
        raise ValueError(f"{what} must not carry credentials")
    if parsed.query_string or parsed.fragment:
        raise ValueError(f"{what} must not carry a query or a fragment: {url!r}")
    return url.rstrip("/")


def create_demo_app(sidecar_url: str, upstream: str, public_url: str) -> web.Application:
    """The demo relying party; ``public_url`` is how the browser reaches it (redirect URI base)."""
    settings = DemoSettings(
        sidecar_url=_validate_base_url(sidecar_url, "sidecar URL"),
        upstream=_validate_upstream(upstream),
        public_url=_validate_base_url(public_url, "public URL"),
    )
    app = web.Application(middlewares=[_friendly_errors])
    app[SETTINGS_KEY] = settings
    app[PENDING_KEY] = PendingLogins()
    app.cleanup_ctx.append(_http_session)
    app.router.add_get("/", handle_index)
    app.router.add_get("/login", handle_login)
    app.router.add_get("/callback", handle_callback)
    return app


def run_demo_app(sidecar_url: str, upstream: str, host: str, port: int) -> None:
    """Serve the demo app until interrupted; the redirect URI is http://127.0.0.1:{port}/callback."""
    public_url = f"http://127.0.0.1:{port}"
    app = create_demo_app(sidecar_url, upstream, public_url)

    def announce(_message: str) -> None:
        print(
            f"dcr-sidecar demo app for upstream {upstream!r} via {sidecar_url}: "
            f"open {public_url}/ (redirect URI {public_url}/callback; Ctrl+C to stop)",
            file=sys.stderr,
            flush=True,
        )

    # No access log: the callback's query string carries the authorization code.
    web.run_app(app, host=host, port=port, print=announce, access_log=None)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {port}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dcr-sidecar demo-app``."""
    parser.add_argument(
        "--sidecar",
        default=DEFAULT_SIDECAR_URL,
        metavar="URL",
        help=f"the sidecar's back-channel base URL (default {DEFAULT_SIDECAR_URL})",
    )
    parser.add_argument(
        "--upstream",
        default=DEFAULT_UPSTREAM,
        metavar="NAME",
        help=f"the upstream name configured in the sidecar (default {DEFAULT_UPSTREAM})",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        metavar="P",
        help=(
            f"port to listen on (default {DEFAULT_PORT}); the redirect URI is "
            "http://127.0.0.1:P/callback and must be in the upstream's redirect_uris"
        ),
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind (default {DEFAULT_HOST})",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``demo-app``: 0 after a clean stop, 2 for bad arguments, 1 if it cannot listen."""
    sidecar = str(getattr(args, "sidecar", DEFAULT_SIDECAR_URL))
    upstream = str(getattr(args, "upstream", DEFAULT_UPSTREAM))
    host = str(getattr(args, "host", DEFAULT_HOST))
    port = int(getattr(args, "port", DEFAULT_PORT))
    try:
        _validate_base_url(sidecar, "--sidecar")
        _validate_upstream(upstream)
    except ValueError as exc:
        print(f"dcr-sidecar demo-app: {exc}", file=sys.stderr)
        return 2
    try:
        run_demo_app(sidecar, upstream, host, port)
    except OSError as exc:
        print(f"dcr-sidecar demo-app: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
