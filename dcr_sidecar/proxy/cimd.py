"""GET /{name}/client-metadata.json and GET /{name}/jwks.json: the public CIMD answers
(design.md §2.3, §3.11).

Both are served from the configuration and the stored key set, never resolving anything
upstream (the AS may fetch them at any moment, also while it is itself unreachable from here).
They reveal nothing secret: client metadata and public keys only. Strong ETags and
`Cache-Control: max-age={cimd.max_age}` let the AS cache them; `If-None-Match` gets 304.
"""

from __future__ import annotations

from aiohttp import web

from dcr_sidecar import errors
from dcr_sidecar.cimd import Published, document_of
from dcr_sidecar.config import Upstream
from dcr_sidecar.oauth.cimd import etag_matches
from dcr_sidecar.proxy.runtime import RUNTIME, Runtime


def _cimd_upstream(runtime: Runtime, name: str) -> Upstream:
    upstream = runtime.upstream(name)
    if not runtime.settings.publishes_cimd(upstream):
        raise errors.NotFound(f"upstream {name!r} publishes no client metadata document (a "
                              "static client, registration: dcr, or no https document URL)")
    return upstream


def _answer(request: web.Request, upstream: Upstream, published: Published) -> web.Response:
    headers = {"Cache-Control": f"max-age={upstream.cimd.max_age}", "ETag": published.etag}
    if etag_matches(request.headers.get("If-None-Match"), published.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=published.body, content_type="application/json", headers=headers)


async def document(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    upstream = _cimd_upstream(runtime, request.match_info["name"])
    return _answer(request, upstream, document_of(runtime.settings, upstream))


async def jwks(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    upstream = _cimd_upstream(runtime, request.match_info["name"])
    if upstream.cimd.auth_method != "private_key_jwt":
        raise errors.NotFound(f"upstream {upstream.name!r} is a public CIMD client: no keys")
    return _answer(request, upstream, await runtime.resolver.cimd_jwks(upstream.name))
