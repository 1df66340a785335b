"""RFC 7591 registration: the request derived from config, its fingerprint, and the response
rules of RFC 7591 §3.2.1 as pass/fail decisions (design.md §3.2)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.lifetime import timestamp
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.oauth.text import clean_text

_VSCHAR = re.compile(r"[\x20-\x7e]+")
SECRET_METHODS = frozenset({"client_secret_basic", "client_secret_post"})
# Methods the sidecar can perform once registered, given what it holds; private_key_jwt only
# when the request carried the sidecar's `jwks`.
PERFORMABLE = frozenset({"client_secret_basic", "client_secret_post", "none"})


class InsufficientResponse(ProtocolError):
    """A 2xx registration answer the sidecar cannot use (RFC 7591 §3.2.1)."""


class RegistrationErrorResponse(ProtocolError):
    """An RFC 7591 §3.2.2 error answer."""

    def __init__(self, status: int, error: str | None, description: str | None) -> None:
        shown = f"{error}: {description}" if description else (error or f"HTTP {status}")
        super().__init__(f"the AS refused the registration (HTTP {status}, {shown})")
        self.status = status
        self.error = error
        self.error_description = description


@dataclass(frozen=True)
class RegistrationProfile:
    """Everything in config that shapes a registration request."""

    redirect_uris: tuple[str, ...]
    grant_types: tuple[str, ...]
    response_types: tuple[str, ...]
    scopes: tuple[str, ...]
    auth_methods: tuple[str, ...]
    client_profile: str = "auto"
    application_type: str | None = None
    client_metadata: Mapping[str, Any] = field(default_factory=dict)
    software_statement: Secret | None = None

    @property
    def scope(self) -> str | None:
        """Sorted, de-duplicated; None when no scope is configured (never "everything")."""
        return " ".join(sorted(set(self.scopes))) or None

    @property
    def effective_application_type(self) -> str:
        return self.application_type or derive_application_type(self.redirect_uris)


def derive_application_type(redirect_uris: Sequence[str]) -> str:
    """`native` for loopback or custom-scheme redirects, else `web` (OIDC Registration §2)."""
    for uri in redirect_uris:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https"):
            return "native"
        host = parts.hostname or ""
        if host == "localhost" or _is_loopback(host):
            return "native"
    return "web"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fingerprint(profile: RegistrationProfile) -> str:
    """sha256 of the canonical request derived from config (design.md §3.4), never the jwks."""
    canonical = {
        "scope": "\n".join(sorted(set(profile.scopes))),
        "redirect_uris": sorted(set(profile.redirect_uris)),
        "grant_types": sorted(set(profile.grant_types)),
        "response_types": sorted(set(profile.response_types)),
        "auth_methods": list(profile.auth_methods),
        "client_profile": profile.client_profile,
        "application_type": profile.effective_application_type,
        "client_metadata": profile.client_metadata,
        "software_statement": (
            profile.software_statement.reveal() if profile.software_statement else None
        ),
    }
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyBinding:
    """The public side of the client's key pair for private_key_jwt (RFC 7591 §2 `jwks`)."""

    jwks: Mapping[str, Any]
    alg: str


def build_request(profile: RegistrationProfile, auth_method: str,
                  key: KeyBinding | None = None) -> dict[str, Any]:
    """The RFC 7591 §2 JSON body. Operator metadata first, so owned keys always win. The
    `jwks` go with private_key_jwt only (never part of the fingerprint)."""
    body: dict[str, Any] = dict(profile.client_metadata)
    body.update(
        {
            "redirect_uris": list(profile.redirect_uris),
            "grant_types": list(profile.grant_types),
            "response_types": list(profile.response_types),
            "token_endpoint_auth_method": auth_method,
            "application_type": profile.effective_application_type,
        }
    )
    if profile.scope:
        body["scope"] = profile.scope
    if profile.software_statement:
        body["software_statement"] = profile.software_statement.reveal()
    if auth_method == "private_key_jwt":
        if key is None:
            raise ValueError("private_key_jwt registration needs the client's key")
        body["jwks"] = dict(key.jwks)
        body["token_endpoint_auth_signing_alg"] = key.alg
    return body


@dataclass(frozen=True)
class RegisteredClient:
    """A registration answer that passed the rules. Secrets are :class:`Secret`."""

    client_id: str
    client_secret: Secret | None
    token_endpoint_auth_method: str
    client_secret_expires_at: int
    client_id_issued_at: int | None
    registration_access_token: Secret | None
    registration_client_uri: str | None
    warnings: tuple[str, ...] = ()


def _str_or_none(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InsufficientResponse(f"{key} in the registration answer is not a string")
    return value


def _int_or_none(doc: Mapping[str, Any], key: str) -> int | None:
    """A timestamp member, clamped to MAX_TIMESTAMP (json.loads accepts Infinity and NaN, and
    integers of any size, such as 10^400, which no float holds)."""
    value = doc.get(key)
    if value is None:
        return None
    clamped = timestamp(value)
    if clamped is None:
        raise InsufficientResponse(f"{key} in the registration answer is not a number")
    return clamped


def check_response(
    document: object,
    request: Mapping[str, Any],
    *,
    registration_endpoint: str,
    allow_http_hosts: Sequence[str] = (),
    now: float | None = None,
) -> RegisteredClient:
    """Apply RFC 7591 §3.2.1 to a 2xx answer; raise InsufficientResponse on a failing rule.
    With `now`, a secret that expires at or before it is refused."""
    if not isinstance(document, dict):
        raise InsufficientResponse("the registration answer is not a JSON object")
    warnings: list[str] = []
    client_id = _str_or_none(document, "client_id")
    if not client_id:
        raise InsufficientResponse("the registration answer has no client_id")
    if not _VSCHAR.fullmatch(client_id):
        # It reaches logs, files (client_id_file) and URLs: printable ASCII only.
        raise InsufficientResponse("the client_id has characters outside RFC 6749 "
                                   "Appendix A.1 (printable ASCII)")
    method = _checked_method(document, request)
    secret = _str_or_none(document, "client_secret")
    if method in SECRET_METHODS and not secret:
        raise InsufficientResponse(f"the AS chose {method} but returned no client_secret")
    _check_echoes(document, request, warnings)
    expires_at = _int_or_none(document, "client_secret_expires_at")
    if secret and expires_at is None:
        warnings.append("client_secret_expires_at missing with a secret: treated as 0 (never)")
    if expires_at is not None and (expires_at < 0 or (now is not None and 0 < expires_at <= now)):
        raise InsufficientResponse(
            f"client_secret_expires_at {expires_at} is already past: the secret is unusable")
    rat = _str_or_none(document, "registration_access_token")
    uri = _str_or_none(document, "registration_client_uri")
    if (rat or uri) and not _management_uri_ok(uri, registration_endpoint, allow_http_hosts):
        warnings.append(
            "registration_client_uri is not https on the registration endpoint's "
            "origin: RFC 7592 management disabled for this client"
        )
        rat = uri = None
    return RegisteredClient(
        client_id=client_id,
        client_secret=Secret(secret) if secret else None,
        token_endpoint_auth_method=method,
        client_secret_expires_at=expires_at or 0,
        client_id_issued_at=_int_or_none(document, "client_id_issued_at"),
        registration_access_token=Secret(rat) if rat and uri else None,
        registration_client_uri=uri if rat and uri else None,
        warnings=tuple(warnings),
    )


def _checked_method(document: Mapping[str, Any], request: Mapping[str, Any]) -> str:
    # RFC 7591 §2: an omitted token_endpoint_auth_method means client_secret_basic.
    method = _str_or_none(document, "token_endpoint_auth_method") or "client_secret_basic"
    performable = PERFORMABLE | ({"private_key_jwt"} if "jwks" in request else set())
    if method not in performable:
        raise InsufficientResponse(
            f"the AS registered token_endpoint_auth_method {clean_text(method)!r}, which the "
            f"sidecar cannot perform (it asked for {request.get('token_endpoint_auth_method')})"
        )
    if method == "private_key_jwt":
        alg = document.get("token_endpoint_auth_signing_alg")
        if alg is not None and alg != request.get("token_endpoint_auth_signing_alg"):
            raise InsufficientResponse(
                f"the AS registered token_endpoint_auth_signing_alg {clean_text(alg)!r}; the "
                f"sidecar's key signs {request.get('token_endpoint_auth_signing_alg')}")
    return method


def management_of(document: object, registration_endpoint: str,
                  allow_http_hosts: Sequence[str] = ()) -> tuple[str, Secret] | None:
    """(registration_client_uri, registration_access_token) of any registration answer, the
    refused ones included, when RFC 7592 management is possible by the same origin rule as
    for an accepted client: what deleting a registration the sidecar will not use needs."""
    if not isinstance(document, dict):
        return None
    rat, uri = document.get("registration_access_token"), document.get("registration_client_uri")
    if not (isinstance(rat, str) and rat and isinstance(uri, str)):
        return None
    if not _management_uri_ok(uri, registration_endpoint, allow_http_hosts):
        return None
    return uri, Secret(rat)


def _check_echoes(
    document: Mapping[str, Any], request: Mapping[str, Any], warnings: list[str]
) -> None:
    echoed_uris = document.get("redirect_uris")
    wanted_uris = request.get("redirect_uris") or []
    if wanted_uris:
        missing = [
            u for u in wanted_uris if not isinstance(echoed_uris, list) or u not in echoed_uris
        ]
        if missing:
            raise InsufficientResponse(
                f"the AS did not register the redirect URIs {', '.join(map(clean_text, missing))}"
            )
    echoed_grants = document.get("grant_types")
    if echoed_grants is not None:
        if not isinstance(echoed_grants, list):
            raise InsufficientResponse("grant_types in the registration answer is not a list")
        missing = [g for g in request.get("grant_types") or [] if g not in echoed_grants]
        if missing:
            raise InsufficientResponse(f"the AS did not grant the grant types {', '.join(missing)}")
    for key, wanted in request.items():
        if key in (
            "redirect_uris",
            "grant_types",
            "software_statement",
            "token_endpoint_auth_method",
        ):
            continue
        if key not in document:
            warnings.append(f"the AS dropped the requested field {key}")
        elif key == "scope" and _scope_set(document[key]) != _scope_set(wanted):
            warnings.append("the AS registered a different scope than requested")


def _scope_set(value: object) -> frozenset[str]:
    return frozenset(value.split()) if isinstance(value, str) else frozenset()


def _management_uri_ok(
    uri: str | None, registration_endpoint: str, allow_http_hosts: Sequence[str]
) -> bool:
    if not uri:
        return False
    try:
        got, ref = urlsplit(uri), urlsplit(registration_endpoint)
        same_origin = _origin(got) == _origin(ref)
    except ValueError:
        return False
    secure = got.scheme == "https" or (got.scheme == "http" and got.hostname in allow_http_hosts)
    return same_origin and secure


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(parts: SplitResult) -> tuple[str, str | None, int | None]:
    """(scheme, host, port) with the scheme's default port filled in (RFC 6454 §4)."""
    return parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)


def parse_error_response(status: int, document: object) -> RegistrationErrorResponse:
    """RFC 7591 §3.2.2: `error` and `error_description`, cleaned for display."""
    error = description = None
    if isinstance(document, dict):
        raw_error, raw_desc = document.get("error"), document.get("error_description")
        error = clean_text(raw_error, 64) if isinstance(raw_error, str) else None
        description = clean_text(raw_desc) if isinstance(raw_desc, str) else None
    return RegistrationErrorResponse(status, error, description)
