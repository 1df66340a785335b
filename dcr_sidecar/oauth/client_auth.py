"""Client authentication (RFC 6749 §2.3): a table from method name to a pure encoder.

Each encoder turns a client's credentials into the parts of a request that carry them: headers
to set and form parameters to add. The proxy strips whatever the app sent first, so exactly one
method reaches the AS (RFC 6749 §2.3: a client MUST NOT use more than one method per request).
Encoders run per request: `private_key_jwt` needs a fresh `jti` and `exp` every time
(RFC 7523 §3), which :class:`Freshness` carries.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from urllib.parse import quote_plus

from dcr_sidecar.oauth.jose import JWT_BEARER, Signer, client_assertion
from dcr_sidecar.oauth.secret import Secret

# Form parameters that authenticate a client; the app's are always removed (RFC 6749 §2.3,
# RFC 7521 §4.2).
CLIENT_AUTH_PARAMS = frozenset(
    {"client_id", "client_secret", "client_assertion", "client_assertion_type"}
)


@runtime_checkable
class SignerSource(Protocol):
    """Hands out the signer in force now (a key file re-read when it changes): one signer per
    assertion, so its `kid`, `alg` and signature always come from the same key."""

    def current(self) -> Signer: ...


class AssertionSource(Protocol):
    """A ready-made assertion (a platform-issued JWT, e.g. a projected service-account token)."""

    def assertion(self, now: int) -> str:
        """The assertion to send at `now`; raises when none is usable (expired, unreadable)."""
        ...


@dataclass(frozen=True)
class ClientCredentials:
    """What one client authenticates with; `signer` (or `presigned`) and `audience` serve
    private_key_jwt."""

    client_id: str
    client_secret: Secret | None
    method: str
    signer: Signer | SignerSource | None = None
    audience: str | None = None
    presigned: AssertionSource | None = None

    def __repr__(self) -> str:  # the secret and the key stay out of logs
        return f"ClientCredentials({self.client_id!r}, method={self.method})"


@dataclass(frozen=True)
class Freshness:
    """Per-request values: the time and a unique id for an assertion."""

    now: int
    jti: str

    @classmethod
    def new(cls) -> Freshness:
        return cls(int(time.time()), secrets.token_urlsafe(24))


@dataclass(frozen=True)
class AuthParts:
    """What a request must carry to authenticate; `form` pairs are appended to the body."""

    headers: Mapping[str, str] = field(default_factory=dict)
    form: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:  # the parts hold secrets
        return f"AuthParts(headers={sorted(self.headers)}, form={[k for k, _ in self.form]})"


def basic_authorization(client_id: str, client_secret: str) -> str:
    """HTTP Basic value with id and secret form-urlencoded first (RFC 6749 §2.3.1)."""
    pair = f"{quote_plus(client_id, safe='')}:{quote_plus(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def _secret(creds: ClientCredentials) -> str:
    if creds.client_secret is None:
        raise ValueError(f"{creds.method} needs a client secret")
    return creds.client_secret.reveal()


def _basic(creds: ClientCredentials, _: Freshness) -> AuthParts:
    return AuthParts(
        headers={"Authorization": basic_authorization(creds.client_id, _secret(creds))}
    )


def _post(creds: ClientCredentials, _: Freshness) -> AuthParts:
    return AuthParts(form=(("client_id", creds.client_id), ("client_secret", _secret(creds))))


def _none(creds: ClientCredentials, _: Freshness) -> AuthParts:
    return AuthParts(form=(("client_id", creds.client_id),))


def _private_key_jwt(creds: ClientCredentials, fresh: Freshness) -> AuthParts:
    """RFC 7523 §2.2: a signed assertion, no client_id needed beside it (RFC 7521 §4.2). A
    ready-made assertion goes as it is, with client_id beside it: its subject may be the
    workload rather than the client (workload identity federation)."""
    if creds.presigned is not None:
        return AuthParts(form=(("client_id", creds.client_id),
                               ("client_assertion_type", JWT_BEARER),
                               ("client_assertion", creds.presigned.assertion(fresh.now))))
    signer = creds.signer.current() if isinstance(creds.signer, SignerSource) else creds.signer
    if signer is None or creds.audience is None:
        raise ValueError("private_key_jwt needs a signing key and an audience")
    scheduled = getattr(signer, "at", None)  # a key ring picks the key of this moment, once
    if callable(scheduled):
        signer = scheduled(fresh.now)
    assertion = client_assertion(signer, client_id=creds.client_id,
                                 audience=creds.audience, now=fresh.now, jti=fresh.jti)
    return AuthParts(form=(("client_assertion_type", JWT_BEARER),
                           ("client_assertion", assertion)))


ENCODERS: Mapping[str, Callable[[ClientCredentials, Freshness], AuthParts]] = {
    "client_secret_basic": _basic,
    "client_secret_post": _post,
    "none": _none,
    "private_key_jwt": _private_key_jwt,
}


def auth_parts(creds: ClientCredentials, fresh: Freshness | None = None) -> AuthParts:
    """The parts for one request (call once per request: assertions are single-use)."""
    try:
        encoder = ENCODERS[creds.method]
    except KeyError:
        raise ValueError(f"unsupported client authentication method {creds.method!r}") from None
    return encoder(creds, fresh or Freshness.new())


def strip_client_auth(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The form without any client-authentication parameter the app sent."""
    return [(k, v) for k, v in pairs if k not in CLIENT_AUTH_PARAMS]


def parse_basic(header: str) -> tuple[str, str] | None:
    """Decode an RFC 6749 §2.3.1 Basic value into (client_id, secret), or None if malformed."""
    from urllib.parse import unquote_plus

    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return unquote_plus(user), unquote_plus(password)
