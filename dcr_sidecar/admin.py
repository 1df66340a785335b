"""The admin API on the management listener (design.md §2.3, §2.4).

- Disabled (404 on every admin route) while ``admin.token`` is null.
- Every call presents ``Authorization: Bearer <admin.token>``, compared in constant time;
  a missing or wrong token gets 401 with ``WWW-Authenticate: Bearer``.
- Answers never carry a secret: client_ids, methods, generations, times and errors only.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from dcr_sidecar import errors
from dcr_sidecar.config import Upstream
from dcr_sidecar.proxy.runtime import RUNTIME, Runtime
from dcr_sidecar.resolver import Snapshot

log = structlog.get_logger(__name__)
NO_STORE = {"Cache-Control": "no-store"}


def authorize(request: web.Request) -> Runtime:
    runtime = request.app[RUNTIME]
    token = runtime.settings.admin.token
    if token is None:
        raise errors.NotFound("the admin API is disabled: set admin.token")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Constant time in the content and the length (digests are compared), and safe for any
    # bytes a client sends (aiohttp hands undecodable ones over as surrogates); the scheme is
    # checked after the comparison so a wrong scheme takes the same path.
    ok = token.matches(given.strip())
    if not (ok and scheme.lower() == "bearer"):
        raise errors.AdminUnauthorized("the admin API needs Authorization: Bearer <admin.token>")
    return runtime


def source_of(upstream: Upstream) -> str:
    return next(k for k in ("endpoints", "discovery_url", "resource", "issuer")
                if getattr(upstream, k) is not None)


def describe(snap: Snapshot, runtime: Runtime | None = None) -> dict[str, Any]:
    """One upstream as the admin API shows it (never a secret)."""
    config, creds = snap.config, snap.credentials
    return {
        "name": config.name,
        "source": source_of(config),
        "issuer": snap.issuer,
        "registration": config.strategy,
        "mechanism": snap.mechanism,
        "mechanism_reason": snap.mechanism_reason,
        "client_id": creds.client_id if creds else None,
        "token_endpoint_auth_method": creds.method if creds else None,
        "generation": creds.generation if creds else None,
        "client_secret_expires_at": creds.expires_at if creds else None,
        "next_renewal": _iso(snap.renew_at),
        "previous_generation_until": _iso(snap.previous_until),
        "backoff_until": _iso(snap.backoff_until),
        "last_error": snap.last_error,
        "last_error_step": snap.last_error_step,
        **({"resource": _resource(snap)} if config.resource is not None else {}),
        **({"cimd": _cimd(snap, runtime)} if runtime is not None
           and runtime.settings.publishes_cimd(config)
           else {}),
    }


def _resource(snap: Snapshot) -> dict[str, Any]:
    """A `resource` source: the metadata in use and every change of authorization server."""
    fetch = snap.resource
    return {
        "metadata_url": fetch.url if fetch else None,
        "authorization_servers": list(fetch.metadata.authorization_servers) if fetch else None,
        "scopes_supported": (list(fetch.metadata.scopes_supported)
                             if fetch and fetch.metadata.scopes_supported else None),
        "authorization_server_changes": [
            {"previous_issuer": c.previous_issuer, "issuer": c.issuer, "at": _iso(c.at),
             "via": c.via} for c in snap.authorization_server_changes],
    }


def _cimd(snap: Snapshot, runtime: Runtime) -> dict[str, Any]:
    """The CIMD facts: the URLs, the key schedule (public parts), relayed invalid_client."""
    config, settings = snap.config, runtime.settings
    held = runtime.resolver.cimd_keys(config.name)
    keys = None
    if held is not None and config.cimd.auth_method == "private_key_jwt":
        keys = [{"kid": k.kid, "published_at": _iso(k.published_at),
                 "signs_from": _iso(k.signs_from), "retires_at": _iso(k.retires_at)}
                for k in held]
    return {"document_url": settings.cimd_document_url(config),
            "jwks_url": (settings.cimd_jwks_url(config)
                         if config.cimd.auth_method == "private_key_jwt" else None),
            "auth_method": config.cimd.auth_method, "keys": keys,
            "invalid_client": snap.invalid_client}


def _iso(when: float | None) -> str | None:
    return None if when is None else datetime.fromtimestamp(when, UTC).isoformat(
        timespec="seconds")


async def list_upstreams(request: web.Request) -> web.StreamResponse:
    runtime = authorize(request)
    resolver = runtime.resolver
    body = {"upstreams": [describe(resolver.snapshot(name), runtime) for name in resolver.names()]}
    return web.json_response(body, headers=NO_STORE)


async def rotate(request: web.Request) -> web.StreamResponse:
    runtime = authorize(request)
    name = request.match_info["name"]
    before = runtime.resolver.cached(name)
    creds = await runtime.resolver.rotate(name)
    log.info("admin_rotated", upstream=name, previous_client_id=before and before.client_id,
             client_id=creds.client_id, generation=creds.generation)
    return web.json_response(describe(runtime.resolver.snapshot(name), runtime), headers=NO_STORE)


async def delete_registration(request: web.Request) -> web.StreamResponse:
    runtime = authorize(request)
    name = request.match_info["name"]
    generation = await runtime.resolver.delete_registration(name)
    log.info("admin_registration_deleted", upstream=name, generation=generation)
    return web.json_response({"name": name, "deleted_generation": generation},
                             headers=NO_STORE)


def routes(name_pattern: str) -> list[web.RouteDef]:
    return [
        web.get("/admin/upstreams", list_upstreams),
        web.post(f"/admin/upstreams/{name_pattern}/rotate", rotate),
        web.delete(f"/admin/upstreams/{name_pattern}/registration", delete_registration),
    ]
