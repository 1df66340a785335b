"""OAuth 2.0 Protected Resource Metadata (RFC 9728): where to look and what to accept."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.text import clean_text

PRM_WELL_KNOWN = "/.well-known/oauth-protected-resource"
# `resource_probe: post`: an MCP server answers 401 to POST only (its GET may be 404 or an SSE
# stream). The probe is the smallest JSON-RPC request, a ping, harmless if it is let through.
POST_PROBE_BODY = b'{"jsonrpc": "2.0", "id": 0, "method": "ping"}'
POST_PROBE_HEADERS = {"Content-Type": "application/json",
                      "Accept": "application/json, text/event-stream"}


def resource_candidates(resource: str) -> list[str]:
    """RFC 9728 §3.1: the well-known suffix inserted before the path (trailing `/` stripped);
    then the root document (the MCP-compatible fallback, design.md §3.1)."""
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")

    def at(new_path: str) -> str:
        return str(urlunsplit((parts.scheme, parts.netloc, new_path, "", "")))

    root = at(PRM_WELL_KNOWN)
    return [at(PRM_WELL_KNOWN + path), root] if path else [root]


def with_default_scope(pairs: Sequence[tuple[str, str]],
                       scopes: Sequence[str] | None) -> list[tuple[str, str]]:
    """`pairs` plus `scope` = the resource's `scopes_supported` when the request names no scope.

    The MCP scope selection order: the scope of the resource's challenge (the app saw it and
    sent it), else every scope the resource's metadata lists, else no scope at all. An empty
    `scope` counts as none."""
    if not scopes or any(k == "scope" and v.strip() for k, v in pairs):
        return list(pairs)
    return [*((k, v) for k, v in pairs if k != "scope"), ("scope", " ".join(scopes))]


def is_parent_resource(document_resource: str, configured: str) -> bool:
    """True when `document_resource` equals `configured` or is a parent on a path-segment
    boundary (same scheme and authority) — the documented relaxation for root documents."""
    if document_resource == configured:
        return True
    doc, conf = urlsplit(document_resource), urlsplit(configured)
    if (doc.scheme, doc.netloc) != (conf.scheme, conf.netloc) or doc.query or doc.fragment:
        return False
    parent = doc.path.rstrip("/")
    return conf.path == parent or conf.path.startswith(parent + "/")


@dataclass(frozen=True)
class ResourceMetadata:
    resource: str
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...] | None = None  # None: the document lists none


def _scopes(value: object) -> tuple[str, ...] | None:
    """RFC 9728 §2 `scopes_supported`; a malformed list is treated as absent, not fatal (the
    scopes are a hint for the request, never a reason to refuse the resource)."""
    if not isinstance(value, list) or not all(
            isinstance(s, str) and s and not any(c.isspace() or c in '"\\' for c in s)
            for s in value):
        return None
    return tuple(dict.fromkeys(value))


def validate_resource_metadata(document: object, configured: str, *,
                               exact: bool) -> ResourceMetadata:
    """Accept a protected-resource document for `configured` (RFC 9728 §3.3).

    `exact` (the URL came from WWW-Authenticate or the path-inserted well-known URL): the
    document's `resource` must equal the configured URL. Otherwise a parent is accepted too.
    """
    if not isinstance(document, dict):
        raise ProtocolError("the protected-resource metadata is not a JSON object")
    resource = document.get("resource")
    if not isinstance(resource, str):
        raise ProtocolError("the protected-resource metadata has no resource")
    matches = resource == configured if exact else is_parent_resource(resource, configured)
    if not matches:
        raise ProtocolError(
            f"protected-resource metadata is for {clean_text(resource)!r}, not {configured!r} "
            "(RFC 9728 §3.3)")
    servers = document.get("authorization_servers")
    if not isinstance(servers, list) or not servers or not all(
            isinstance(s, str) and s for s in servers):
        raise ProtocolError("the protected-resource metadata names no authorization_servers")
    return ResourceMetadata(resource, tuple(servers), _scopes(document.get("scopes_supported")))
