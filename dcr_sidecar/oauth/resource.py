"""OAuth 2.0 Protected Resource Metadata (RFC 9728): where to look and what to accept."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.text import clean_text

PRM_WELL_KNOWN = "/.well-known/oauth-protected-resource"


def resource_candidates(resource: str) -> list[str]:
    """RFC 9728 §3.1: the well-known suffix inserted before the path (trailing `/` stripped);
    then the root document (the MCP-compatible fallback, design.md §3.1)."""
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")

    def at(new_path: str) -> str:
        return str(urlunsplit((parts.scheme, parts.netloc, new_path, "", "")))

    root = at(PRM_WELL_KNOWN)
    return [at(PRM_WELL_KNOWN + path), root] if path else [root]


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
    return ResourceMetadata(resource, tuple(servers))
