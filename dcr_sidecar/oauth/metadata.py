"""Authorization-server metadata: where to look (RFC 8414 §3, OIDC Discovery §4) and what to
accept (RFC 8414 §3.3: the returned issuer must be identical, no normalisation, §4)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.text import clean_text

OAUTH_WELL_KNOWN = "/.well-known/oauth-authorization-server"
OIDC_WELL_KNOWN = "/.well-known/openid-configuration"

# Metadata members holding URLs: the sidecar calls some, sends an app or a browser to others
# (end_session_endpoint: OpenID Connect RP-Initiated Logout 1.0 §2.1). Each must be an absolute
# http(s) URL when present. config.py checks the same members of `endpoints`.
URL_MEMBERS = (
    "authorization_endpoint",
    "token_endpoint",
    "registration_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
    "pushed_authorization_request_endpoint",
    "device_authorization_endpoint",
    "jwks_uri",
    "userinfo_endpoint",
    "end_session_endpoint",
)
LIST_MEMBERS = (
    "token_endpoint_auth_methods_supported",
    "code_challenge_methods_supported",
    "response_types_supported",
    "grant_types_supported",
    "scopes_supported",
    "token_endpoint_auth_signing_alg_values_supported",
)


# Controls (C0, DEL, C1), whitespace and bidi/format characters: no URL holds them (RFC 3986
# §2), urlsplit keeps most of them (or silently drops tab and newline), and a NUL or VT in a
# Location header breaks the answer. Refused in every URL member (design.md §3.1).
_UNSAFE_IN_URL = re.compile(
    r"[\x00-\x20\x7f-\x9f\u00a0\u061c\u1680\u2000-\u200f\u2028-\u202f\u205f\u2066-\u2069"
    r"\u3000\ufeff]")


def unsafe_url_character(url: str) -> str | None:
    """``U+XXXX`` naming the first character no URL may hold (see _UNSAFE_IN_URL), or None."""
    found = _UNSAFE_IN_URL.search(url)
    return None if found is None else f"U+{ord(found.group(0)):04X}"


class IssuerMismatch(ProtocolError):
    def __init__(self, expected: str, received: object) -> None:
        super().__init__(
            f"issuer mismatch: expected {expected!r}, document says "
            f"{clean_text(received)!r} (RFC 8414 §3.3 requires identical strings)"
        )
        self.expected = expected
        self.received = received


def issuer_candidates(issuer: str) -> list[str]:
    """Discovery URLs for `issuer`, in order (design.md §3.1).

    With a path `/p`: RFC 8414 insertion, OIDC insertion (some ASs serve it), OIDC appending.
    Without a path: the two root documents. A terminating `/` is stripped first (RFC 8414 §3.1).
    """
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")

    def at(new_path: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, new_path, "", ""))

    if not path:
        return [at(OAUTH_WELL_KNOWN), at(OIDC_WELL_KNOWN)]
    return [at(OAUTH_WELL_KNOWN + path), at(OIDC_WELL_KNOWN + path), at(path + OIDC_WELL_KNOWN)]


_WELL_KNOWN_RE = re.compile(
    r"^(?P<pre>.*?)/\.well-known/(?:oauth-authorization-server|openid-configuration)(?P<post>.*)$"
)


def issuer_from_discovery_url(url: str) -> str:
    """The issuer a discovery URL implies: the well-known suffix or RFC 8414 insertion removed."""
    parts = urlsplit(url)
    match = _WELL_KNOWN_RE.match(parts.path)
    path = (match.group("pre") + match.group("post")) if match else parts.path
    return str(urlunsplit((parts.scheme, parts.netloc, path, "", "")))


@dataclass(frozen=True)
class Metadata:
    """A validated AS metadata document; `document` is the JSON object as received and
    `source` the URL it was fetched from (None for endpoints given in config)."""

    issuer: str
    document: Mapping[str, Any]
    source: str | None = None

    def get_url(self, member: str) -> str | None:
        value = self.document.get(member)
        return value if isinstance(value, str) else None

    def get_list(self, member: str) -> list[str] | None:
        value = self.document.get(member)
        return list(value) if isinstance(value, list) else None

    @property
    def token_endpoint(self) -> str | None:
        return self.get_url("token_endpoint")

    @property
    def registration_endpoint(self) -> str | None:
        return self.get_url("registration_endpoint")


def validate_metadata(document: object, expected_issuer: str,
                      source: str | None = None) -> Metadata:
    """Accept `document` only if it is a JSON object with the expected issuer and sane members."""
    if not isinstance(document, dict):
        raise ProtocolError("the metadata document is not a JSON object")
    received = document.get("issuer")
    if received != expected_issuer:
        raise IssuerMismatch(expected_issuer, received)
    for member in URL_MEMBERS:
        value = document.get(member)
        unsafe = unsafe_url_character(value) if isinstance(value, str) else None
        if unsafe is not None:
            raise ProtocolError(f"metadata member {member} holds the character {unsafe}, "
                                "which no URL may contain")
        if value is not None and not (isinstance(value, str) and _absolute_http_url(value)):
            raise ProtocolError(
                f"metadata member {member} is not an absolute http(s) URL: {clean_text(value)!r}"
            )
    for member in LIST_MEMBERS:
        value = document.get(member)
        if value is not None and not (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            raise ProtocolError(f"metadata member {member} is not a list of strings")
    if not isinstance(document.get("token_endpoint"), str):
        raise ProtocolError("the metadata document has no token_endpoint")
    return Metadata(issuer=expected_issuer, document=document, source=source)


def _absolute_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.fragment


def synthesized_registration_endpoint(issuer: str) -> str:
    """`{issuer}/register` (issuer path kept); only ever for an operator-configured issuer."""
    return issuer.rstrip("/") + "/register"


_MAX_AGE_RE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)


def cache_lifetime(cache_control: str | None, *, min_ttl: float, max_ttl: float) -> float:
    """Seconds to keep a document: Cache-Control max-age clamped to [min_ttl, max_ttl]."""
    if cache_control:
        if re.search(r"(?:^|,)\s*no-(?:store|cache)\b", cache_control, re.IGNORECASE):
            return min_ttl
        match = _MAX_AGE_RE.search(cache_control)
        if match:
            return min(max(float(match.group(1)), min_ttl), max_ttl)
    return max_ttl
