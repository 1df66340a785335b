"""Token-like routes: token, PAR (RFC 9126), revocation (RFC 7009), introspection (RFC 7662),
device authorization (RFC 8628).

The request is rebuilt from parts (design.md §2.3): allow-listed headers only, the app's client
authentication removed, exactly the registered method injected (RFC 6749 §2.3), encoded afresh
for each request; the AS answer is relayed as is. No redirects are followed. Under
`callback: sidecar` PAR is mediated and code exchanges restored (:mod:`.mediation`).
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from dcr_sidecar import errors
from dcr_sidecar.config import Upstream
from dcr_sidecar.forward import CLIENT_ID_ROUTES, ROUTES, parse_request, relay
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.callback import FlowRecord, check_lengths
from dcr_sidecar.oauth.forwarding import Pairs
from dcr_sidecar.oauth.resource import with_default_scope
from dcr_sidecar.oauth.resource_indicator import with_default_resource
from dcr_sidecar.proxy.boundary import REQUEST_ID_KEY
from dcr_sidecar.proxy.mediation import (
    mediate,
    remember_pushed,
    require_s256_for_public_cimd,
    restore_code_exchange,
)
from dcr_sidecar.proxy.runtime import RUNTIME, Runtime
from dcr_sidecar.resolver import Credentials

__all__ = ["CLIENT_ID_ROUTES", "RESOURCE_ROUTES", "ROUTES", "adjusted", "handler"]

# Requests that may name a resource (RFC 8707 §2.1 authorization requests, §2.2 token).
RESOURCE_ROUTES = frozenset({"token", "par", "device_authorization"})


async def adjusted(route: str, runtime: Runtime, upstream: Upstream, creds: Credentials,
                   pairs: Pairs, *, client: str) -> tuple[Pairs, Credentials, FlowRecord | None]:
    """The app's form as the AS must see it: mediated, restored, the default resource added;
    with the flow record of a mediated push (counted against `client`, the caller's address)."""
    record = None
    if route == "par":
        try:
            check_lengths(pairs)
        except ProtocolError as exc:
            raise errors.BadRequest(exc.reason) from exc
    if upstream.callback == "sidecar" and route == "par":
        pairs, record = await mediate(runtime, upstream, creds, pairs, client)
    elif upstream.callback == "sidecar" and route == "token":
        pairs, creds = await restore_code_exchange(runtime, upstream, creds, pairs)
    if route == "par":
        require_s256_for_public_cimd(creds, pairs)
        pairs = with_default_scope(pairs, runtime.resource_scopes(upstream))
    if route in RESOURCE_ROUTES and upstream.default_resource is not None:
        pairs = with_default_resource(pairs, runtime.default_resource(upstream))
    return pairs, creds, record


def handler(route: str) -> Handler:
    """parse → (adjust) → :meth:`Forwarder.send <dcr_sidecar.forward.Forwarder.send>` → relay."""
    member = ROUTES[route]

    async def forward(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME]
        settings = runtime.settings
        upstream = runtime.upstream(request.match_info["name"])
        pairs = await parse_request(request, settings, runtime.forwarder.check_inbound)
        creds = await runtime.resolver.credentials(upstream.name)
        # A pushed authorization request starts a login too: follow a resource that moved.
        if route == "par" and await runtime.resolver.recheck_resource(upstream.name):
            creds = await runtime.resolver.credentials(upstream.name)
        if creds.metadata.get_url(member) is None:
            raise errors.NotFound(f"the authorization server of {upstream.name!r} has no "
                                  f"{member}")
        pushed = None
        if route == "par" or upstream.callback == "sidecar" \
                or upstream.default_resource is not None:
            pairs, creds, pushed = await adjusted(route, runtime, upstream, creds, pairs,
                                                  client=request.remote or "")
        response, creds = await runtime.forwarder.send(
            upstream, route, creds, pairs, incoming=request.headers,
            request_id=request[REQUEST_ID_KEY],
            error_limit=settings.limits.max_response_bytes)
        if pushed is not None and response.status == 201:
            await remember_pushed(runtime, pushed, response.body)
        return relay(response, upstream.name)

    return forward
