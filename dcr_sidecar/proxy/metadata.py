"""AS metadata as served to the app (design.md §2.3), and GET /{name}/client.

The document is the AS's own with the sidecar in its place: the sidecar's endpoints, the auth
methods the sidecar accepts from the app, no registration endpoint, and nothing the app cannot
use through the sidecar (client-auth signing algorithms, DPoP, mTLS, CIBA). Under
`app_issuer: sidecar` the issuer is the sidecar's; under `callback: sidecar` only what the
sidecar mediates is advertised (code, query) and `iss` is always sent (RFC 9207).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from dcr_sidecar.config import Inbound, Settings, Upstream
from dcr_sidecar.oauth.callback import as_advertises_iss
from dcr_sidecar.oauth.resource import ResourceMetadata
from dcr_sidecar.oauth.text import safe_url
from dcr_sidecar.proxy.runtime import RUNTIME
from dcr_sidecar.proxy.token import ROUTES
from dcr_sidecar.resolver import Snapshot

# Members naming client-authentication signing algorithms, DPoP, mTLS aliases and CIBA: the
# app authenticates to the sidecar, not to the AS, so none of these describe what it can use.
REMOVED_MEMBERS = frozenset({
    "registration_endpoint",
    "token_endpoint_auth_signing_alg_values_supported",
    "revocation_endpoint_auth_signing_alg_values_supported",
    "introspection_endpoint_auth_signing_alg_values_supported",
    "dpop_signing_alg_values_supported",
    "mtls_endpoint_aliases",
    "tls_client_certificate_bound_access_tokens",
    "backchannel_authentication_endpoint",
    "backchannel_token_delivery_modes_supported",
    "backchannel_authentication_request_signing_alg_values_supported",
    "backchannel_user_code_parameter_supported",
    "client_id_metadata_document_supported",  # the sidecar replaces the app's client_id
})
AUTH_METHOD_LISTS = {
    "token_endpoint": "token_endpoint_auth_methods_supported",
    "revocation_endpoint": "revocation_endpoint_auth_methods_supported",
    "introspection_endpoint": "introspection_endpoint_auth_methods_supported",
}
# What callback mediation can carry (design.md §3.6): code in the query, no request objects.
MEDIATED = {
    "response_types_supported": ["code"],
    "response_modes_supported": ["query"],
    "request_parameter_supported": False,
    "request_uri_parameter_supported": False,
    "authorization_response_iss_parameter_supported": True,
}


def inbound_methods(inbound: Inbound) -> list[str]:
    methods = ["client_secret_basic", "client_secret_post"]
    return methods if inbound.client_secret is not None else [*methods, "none"]


def advertises_iss(document: Mapping[str, Any], upstream: Upstream) -> bool:
    """Whether the served document advertises RFC 9207 `iss` in authorization responses."""
    return upstream.callback == "sidecar" or as_advertises_iss(document)


def rewrite(document: Mapping[str, Any], *, upstream: Upstream, settings: Settings,
            resource: ResourceMetadata | None = None) -> dict[str, Any]:
    """The AS document with the sidecar's endpoints and auth methods in place of the AS's;
    with the protected resource that named the AS, its identifier (RFC 9728 §4
    `protected_resources`) and the scopes it lists (`protected_resource_scopes_supported`,
    the sidecar's member: what an authorization request without `scope` gets)."""
    name = upstream.name
    doc = {k: v for k, v in document.items() if k not in REMOVED_MEMBERS}
    if "authorization_endpoint" in doc:
        doc["authorization_endpoint"] = f"{settings.public_base}/{name}/authorize"
    for route, member in ROUTES.items():
        if member in doc:
            doc[member] = f"{settings.backchannel_base}/{name}/{route}"
    for endpoint, methods_member in AUTH_METHOD_LISTS.items():
        if endpoint in doc:
            doc[methods_member] = inbound_methods(settings.inbound)
    if upstream.callback == "sidecar":
        doc.update(MEDIATED)
    if upstream.app_issuer == "sidecar":
        doc["issuer"] = settings.sidecar_issuer(name)
    if resource is not None:
        doc["protected_resources"] = [resource.resource]
        if resource.scopes_supported:
            doc["protected_resource_scopes_supported"] = list(resource.scopes_supported)
    return doc


async def metadata(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    upstream = runtime.upstream(request.match_info["name"])
    meta = await runtime.resolver.metadata(upstream.name)
    doc = rewrite(meta.document, upstream=upstream, settings=runtime.settings,
                  resource=runtime.resource_metadata(upstream))
    return web.json_response(doc, headers={"Cache-Control": "max-age=60"})


async def client(request: web.Request) -> web.StreamResponse:
    """The client_id and its facts, never a secret (for OIDC apps validating `aud`)."""
    runtime = request.app[RUNTIME]
    name = request.match_info["name"]
    runtime.upstream(name)
    creds = await runtime.resolver.credentials(name)
    await runtime.resolver.served(name, creds)  # an app may start a login with this client_id
    body = {
        "client_id": creds.client_id,
        "mechanism": creds.mechanism,
        "generation": creds.generation,
        "token_endpoint_auth_method": creds.method,
        "issuer": creds.issuer,
        "client_secret_expires_at": creds.expires_at,
        **_history(runtime.resolver.snapshot(name)),
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def _history(snap: Snapshot) -> dict[str, Any]:
    """How the sidecar got here (what the demo's panel shows): where and when the metadata
    came from, and how and when the client was obtained. Never a secret."""
    creds = snap.credentials
    static = creds is not None and creds.static
    registered = snap.registered_at
    return {
        "registered_at": _iso(registered) if registered is not None and not static else None,
        "discovered_from": (safe_url(snap.discovered_from) if snap.discovered_from
                            else "endpoints (configuration)") if snap.discovered else None,
        "discovered_at": _iso(snap.discovered_at) if snap.discovered_at is not None else None,
    }


def _iso(when: float) -> str | None:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds") if when else None
