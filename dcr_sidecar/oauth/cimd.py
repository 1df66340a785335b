"""Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document): the pure parts.

The client_id is an https URL; the document found there describes the client and names that
same URL as its `client_id`. This module builds the document, renders it and its JWKS to fixed
bytes (so replicas serve byte-identical answers and one strong ETag), decides when CIMD is used
(design.md §3.11), and keeps the key schedule of a rotation.

Invariants:
- A document never carries a shared-secret method or any `client_secret*` member (the draft
  forbids them); `token_endpoint_auth_method` is `private_key_jwt` or `none`.
- Rendering is canonical (sorted keys, no spaces): the same content gives the same bytes.
- Key schedule: a key is published from `published_at` until `retires_at`; it signs from
  `signs_from`. At any moment the signing key is the published key with the latest
  `signs_from` that has passed, so every replica holding the same record signs with the same
  key and serves the same JWKS without talking to the others.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from dcr_sidecar.oauth import ProtocolError

SUPPORTED_MEMBER = "client_id_metadata_document_supported"
CIMD_METHODS = frozenset({"private_key_jwt", "none"})
CIMD_ALG = "ES256"  # keys are made before the AS is known: one algorithm every AS we met takes
Mechanism = Literal["static", "cimd", "dcr"]


def valid_client_id_url(url: str) -> bool:
    """The draft's client_id URL: https, a host, no fragment, no userinfo, no dot segments."""
    parts = urlsplit(url)
    segments = parts.path.split("/")
    return (parts.scheme == "https" and bool(parts.hostname) and not parts.fragment
            and parts.username is None and parts.password is None
            and "." not in segments and ".." not in segments)


def document(*, client_id: str, client_name: str, redirect_uris: Sequence[str],
             grant_types: Sequence[str], response_types: Sequence[str],
             scopes: Sequence[str], auth_method: str, jwks_uri: str | None,
             extras: Mapping[str, Any]) -> dict[str, Any]:
    """The client's metadata document; `extras` are the operator's other client metadata."""
    if auth_method not in CIMD_METHODS:
        raise ValueError(f"{auth_method} is not allowed in a client metadata document")
    doc: dict[str, Any] = {k: v for k, v in extras.items() if not k.startswith("client_secret")}
    doc.update(client_id=client_id, client_name=extras.get("client_name", client_name),
               redirect_uris=list(redirect_uris), grant_types=list(grant_types),
               response_types=list(response_types), token_endpoint_auth_method=auth_method)
    if scopes:
        doc["scope"] = " ".join(sorted(set(scopes)))
    if auth_method == "private_key_jwt":
        if jwks_uri is None:
            raise ValueError("private_key_jwt needs a jwks_uri")
        doc["jwks_uri"] = jwks_uri
        doc["token_endpoint_auth_signing_alg"] = CIMD_ALG
    return doc


def render(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def strong_etag(body: bytes) -> str:
    """RFC 9110 §8.8.3: a strong validator, from the exact bytes."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2 (weak comparison, as If-None-Match uses)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return etag in tags


# ---------------------------------------------------------------------------- the choice


def choose(*, registration: str, has_client_id: bool, metadata: Mapping[str, Any],
           metadata_url: str | None, client_id_url: str, auth_method: str) -> tuple[Mechanism, str]:
    """static > CIMD > DCR (design.md §3.11): the mechanism and why. `registration: cimd` on an
    AS that cannot take it raises ProtocolError naming the metadata URL and what is missing."""
    if registration == "static" or (registration == "auto" and has_client_id):
        return "static", "client_id is configured"
    if registration == "dcr":
        return "dcr", "registration: dcr"
    where = metadata_url or "the configured endpoints"
    problem = _cimd_problem(metadata, where, client_id_url, auth_method)
    if problem is None:
        why = ("registration: cimd" if registration == "cimd" else
               f"the AS advertises {SUPPORTED_MEMBER} and the document URL is https")
        return "cimd", why
    if registration == "cimd":
        raise ProtocolError(f"registration: cimd, but {problem}")
    return "dcr", f"not CIMD: {problem}"


def _cimd_problem(metadata: Mapping[str, Any], where: str, client_id_url: str,
                  auth_method: str) -> str | None:
    if metadata.get(SUPPORTED_MEMBER) is not True:
        return f"the AS metadata at {where} lacks {SUPPORTED_MEMBER}: true"
    if not valid_client_id_url(client_id_url):
        return (f"the document URL {client_id_url} is not an https URL the draft allows as a "
                "client_id (set public_base_url or cimd.document_url to an https URL)")
    methods = metadata.get("token_endpoint_auth_methods_supported")
    if isinstance(methods, list) and auth_method not in methods:
        return (f"the AS metadata at {where} does not list {auth_method} in "
                "token_endpoint_auth_methods_supported")
    if auth_method == "none":
        pkce = metadata.get("code_challenge_methods_supported")
        if not (isinstance(pkce, list) and "S256" in pkce):
            return f"a public client needs S256 in code_challenge_methods_supported at {where}"
    algs = metadata.get("token_endpoint_auth_signing_alg_values_supported")
    if auth_method == "private_key_jwt" and isinstance(algs, list) and CIMD_ALG not in algs:
        return f"the AS at {where} does not accept {CIMD_ALG} client assertions"
    return None


# ---------------------------------------------------------------------------- key schedule


@dataclass(frozen=True)
class ScheduledKey:
    """One key of a CIMD client's key set and its place in the rotation schedule."""

    number: int
    kid: str
    public: Mapping[str, Any]
    published_at: float
    signs_from: float
    retires_at: float | None

    def published(self, now: float) -> bool:
        return self.published_at <= now and (self.retires_at is None or now < self.retires_at)


def signing_key(keys: Sequence[ScheduledKey], now: float) -> ScheduledKey | None:
    live = [k for k in keys if k.published(now) and k.signs_from <= now]
    return max(live, key=lambda k: (k.signs_from, k.number), default=None)


def jwks(keys: Sequence[ScheduledKey], now: float) -> dict[str, Any]:
    """The published public keys, oldest first."""
    return {"keys": [dict(k.public) for k in sorted(keys, key=lambda k: k.number)
                     if k.published(now)]}


def rotating(keys: Sequence[ScheduledKey], now: float) -> bool:
    """A rotation is under way: a key waits to sign, or an old one waits to be dropped."""
    return any(k.signs_from > now or (k.retires_at is not None and k.retires_at > now)
               for k in keys)


def next_change(keys: Sequence[ScheduledKey], now: float) -> float | None:
    """When the published set or the signing key next changes."""
    times = [t for k in keys for t in (k.published_at, k.signs_from, k.retires_at)
             if t is not None and t > now]
    return min(times, default=None)
