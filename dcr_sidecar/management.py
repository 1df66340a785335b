"""The management listener: /healthz, /readyz, /metrics and the admin API (design.md §2.3).

Invariant: every answer leaves through :func:`redacted`, the same redaction as log lines and
error answers (design.md §3.9): an AS that echoed the initial access token into an error shown
as ``last_error`` gets it masked, whichever route shows it.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from dcr_sidecar import admin
from dcr_sidecar.config import NAME_PATTERN
from dcr_sidecar.metrics import CONTENT_TYPE
from dcr_sidecar.observability import Redactor
from dcr_sidecar.proxy.runtime import RUNTIME

NAME = f"{{name:{NAME_PATTERN}}}"


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"}, headers={"Cache-Control": "no-store"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready when every `required` upstream has usable credentials (cached ones count). Store
    trouble is reported in the body and fails readiness only through an upstream that has
    no credentials (design.md §2.3)."""
    runtime = request.app[RUNTIME]
    upstreams: dict[str, Any] = {}
    ready = True
    for upstream in runtime.settings.upstreams:
        snap = runtime.resolver.snapshot(upstream.name)
        has = snap.credentials is not None
        upstreams[upstream.name] = {
            "required": upstream.required,
            "credentials": has,
            "mechanism": snap.mechanism,
            "last_error": snap.last_error,
            "last_error_step": snap.last_error_step,
        }
        if snap.invalid_client:
            upstreams[upstream.name]["cimd_invalid_client"] = snap.invalid_client
        if upstream.required and not has:
            ready = False
    store = await runtime.resolver.check_store()
    body = {"ready": ready, "store": {"backend": store.backend, "ok": store.trouble is None,
                                      "error": store.trouble},
            "upstreams": upstreams}
    return web.json_response(body,
                             status=200 if ready else 503,
                             headers={"Cache-Control": "no-store"})


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus text exposition of this sidecar's own registry."""
    body = request.app[RUNTIME].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE,
                                            "Cache-Control": "no-store"})


def _redacted_body(body: bytes, json_body: bool, redactor: Redactor) -> bytes:
    if json_body:
        return json.dumps(redactor.scrub_document(json.loads(body))).encode()
    return redactor.scrub(body.decode("utf-8", "replace")).encode()


@web.middleware
async def redacted(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost layer of the management app (outside the error boundary): every body
    it answers with is scrubbed."""
    response = await handler(request)
    if isinstance(response, web.Response) and isinstance(response.body, bytes):
        response.body = _redacted_body(response.body,
                                       response.content_type == "application/json",
                                       request.app[RUNTIME].redactor)
    return response


def routes() -> list[web.RouteDef]:
    return [web.get("/healthz", healthz), web.get("/readyz", readyz),
            web.get("/metrics", metrics), *admin.routes(NAME)]
