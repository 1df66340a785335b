"""Token-like routes: token, PAR, revocation, introspection, device authorization.

The request is rebuilt from parts (DESIGN §2.3): allow-listed headers only, the app's client
authentication removed, exactly the registered method injected (RFC 6749 §2.3); the AS answer is
relayed as is. No redirects are followed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler

from dcr_sidecar import errors
from dcr_sidecar.net import Response
from dcr_sidecar.oauth.client_auth import strip_client_auth
from dcr_sidecar.provenance import check_secret_destination
from dcr_sidecar.proxy.boundary import REQUEST_ID
from dcr_sidecar.proxy.forms import parse_form, read_body
from dcr_sidecar.proxy.inbound import check as check_inbound
from dcr_sidecar.proxy.runtime import RUNTIME
from dcr_sidecar.resolver import Credentials

# route suffix -> AS metadata member
ROUTES: Mapping[str, str] = {
    "token": "token_endpoint",
    "par": "pushed_authorization_request_endpoint",
    "revoke": "revocation_endpoint",
    "introspect": "introspection_endpoint",
    "device_authorization": "device_authorization_endpoint",
}
FORWARDED_REQUEST_HEADERS = ("Accept", "User-Agent", REQUEST_ID)
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Pragma", "WWW-Authenticate")
FORM_TYPE = "application/x-www-form-urlencoded"


def outbound_headers(incoming: Mapping[str, str], creds: Credentials) -> dict[str, str]:
    headers = {name: incoming[name] for name in FORWARDED_REQUEST_HEADERS if name in incoming}
    headers["Content-Type"] = FORM_TYPE
    headers.update(creds.auth.headers)
    return headers


def outbound_form(pairs: list[tuple[str, str]], creds: Credentials) -> bytes:
    return urlencode([*strip_client_auth(pairs), *creds.auth.form]).encode("ascii")


def relay(status: int, headers: Mapping[str, str], body: bytes) -> web.Response:
    kept = {name: headers[name] for name in RELAYED_RESPONSE_HEADERS if name in headers}
    return web.Response(status=status, body=body, headers=kept)


def handler(route: str) -> Handler:
    member = ROUTES[route]

    async def forward(request: web.Request) -> web.StreamResponse:
        runtime = request.app[RUNTIME]
        name = request.match_info["name"]
        upstream = runtime.upstream(name)
        if "DPoP" in request.headers:
            raise errors.BadRequest("DPoP is not supported by dcr-sidecar version 1")
        if request.content_type != FORM_TYPE:
            raise errors.BadRequest(f"the body must be {FORM_TYPE} (RFC 6749 §3.2)")
        body = await read_body(request, runtime.settings.limits.max_request_bytes)
        pairs = parse_form(body)
        check_inbound(runtime.settings.inbound, request.headers, pairs)
        creds = await runtime.resolver.credentials(name)

        async def send(with_creds: Credentials) -> Response:
            url = with_creds.metadata.get_url(member)
            if url is None:
                raise errors.NotFound(f"the authorization server of {name!r} has no {member}")
            check_secret_destination(upstream, with_creds.metadata, with_creds.method, url)
            return await runtime.outbound.request(
                "POST", url, step="forward", upstream=name,
                headers=outbound_headers(request.headers, with_creds),
                data=outbound_form(pairs, with_creds),
                error_limit=runtime.settings.limits.max_response_bytes)

        response = await send(creds)
        error = oauth_error(response)
        if error == "invalid_client" and not creds.static:
            fresh = await runtime.resolver.recover(name, creds)
            # Only a client_credentials grant is safe to replay transparently (DESIGN §3.5).
            if fresh is not None and route == "token" and grant_type(pairs) == CLIENT_CREDENTIALS:
                response = await send(fresh)
        elif error == "invalid_grant" and route == "token" and grant_type(pairs) in GRACE_GRANTS:
            previous = runtime.resolver.previous(name)
            if previous is not None:  # issued to the superseded generation (DESIGN §3.4)
                response = await send(previous)
        return relay(response.status, response.headers, response.body)

    return forward


CLIENT_CREDENTIALS = "client_credentials"
GRACE_GRANTS = frozenset({"authorization_code", "refresh_token"})


def grant_type(pairs: list[tuple[str, str]]) -> str | None:
    return next((v for k, v in pairs if k == "grant_type"), None)


def oauth_error(response: Response) -> str | None:
    """The RFC 6749 §5.2 `error` code of a 400/401 answer (parsed only on those)."""
    if response.status not in (400, 401):
        return None
    try:
        document = json.loads(response.body)
    except (ValueError, UnicodeDecodeError):
        return None
    error = document.get("error") if isinstance(document, dict) else None
    return error if isinstance(error, str) else None
