"""Token-like routes: token, PAR (RFC 9126), revocation (RFC 7009), introspection (RFC 7662),
device authorization (RFC 8628).

The request is rebuilt from parts (DESIGN §2.3): allow-listed headers only, the app's client
authentication removed, exactly the registered method injected (RFC 6749 §2.3), encoded afresh
for each request (private_key_jwt assertions are single-use); the AS answer is relayed as is. No
redirects are followed.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler

from dcr_sidecar import errors
from dcr_sidecar.oauth.client_auth import AuthParts, auth_parts, strip_client_auth
from dcr_sidecar.proxy.boundary import REQUEST_ID, REQUEST_ID_KEY
from dcr_sidecar.proxy.forms import parse_form, read_body
from dcr_sidecar.proxy.inbound import check as check_inbound
from dcr_sidecar.proxy.runtime import RUNTIME, Runtime

# route suffix -> AS metadata member
ROUTES: Mapping[str, str] = {
    "token": "token_endpoint",
    "par": "pushed_authorization_request_endpoint",
    "revoke": "revocation_endpoint",
    "introspect": "introspection_endpoint",
    "device_authorization": "device_authorization_endpoint",
}
FORWARDED_REQUEST_HEADERS = ("Accept", "User-Agent")  # plus X-Request-Id and Content-Type
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Pragma", "WWW-Authenticate")
FORM_TYPE = "application/x-www-form-urlencoded"
Pairs = list[tuple[str, str]]


def outbound_headers(incoming: Mapping[str, str], request_id: str,
                     auth: AuthParts) -> dict[str, str]:
    headers = {name: incoming[name] for name in FORWARDED_REQUEST_HEADERS if name in incoming}
    headers[REQUEST_ID] = request_id
    headers["Content-Type"] = FORM_TYPE
    headers.update(auth.headers)
    return headers


def outbound_form(pairs: Pairs, auth: AuthParts) -> bytes:
    return urlencode([*strip_client_auth(pairs), *auth.form]).encode("ascii")


def relay(status: int, headers: Mapping[str, str], body: bytes) -> web.Response:
    kept = {name: headers[name] for name in RELAYED_RESPONSE_HEADERS if name in headers}
    return web.Response(status=status, body=body, headers=kept)


async def read_form(request: web.Request, runtime: Runtime) -> Pairs:
    if "DPoP" in request.headers:
        raise errors.BadRequest("DPoP is not supported by dcr-sidecar version 1")
    if request.content_type != FORM_TYPE:
        raise errors.BadRequest(f"the body must be {FORM_TYPE} (RFC 6749 §3.2)")
    return parse_form(await read_body(request, runtime.settings.limits.max_request_bytes))


def handler(route: str) -> Handler:
    member = ROUTES[route]

    async def forward(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME]
        upstream = runtime.upstream(request.match_info["name"])
        pairs = await read_form(request, runtime)
        check_inbound(runtime.settings.inbound, request.headers, pairs)
        creds = await runtime.resolver.credentials(upstream.name)
        url = creds.metadata.get_url(member)
        if url is None:
            raise errors.NotFound(f"the authorization server of {upstream.name!r} has no "
                                  f"{member}")
        auth = auth_parts(creds.auth)
        response = await runtime.outbound.request(
            "POST", url, step="forward", upstream=upstream.name,
            headers=outbound_headers(request.headers, request[REQUEST_ID_KEY], auth),
            data=outbound_form(pairs, auth),
            error_limit=runtime.settings.limits.max_response_bytes)
        return relay(response.status, response.headers, response.body)

    return forward
