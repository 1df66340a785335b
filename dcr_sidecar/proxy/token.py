"""Token-like routes: token, PAR (RFC 9126), revocation (RFC 7009), introspection (RFC 7662),
device authorization (RFC 8628).

The request is rebuilt from parts (design.md §2.3): allow-listed headers only, the app's client
authentication removed, exactly the registered method injected (RFC 6749 §2.3), encoded afresh
for each request; the AS answer is relayed as is. No redirects are followed. Under
`callback: sidecar` PAR is mediated and code exchanges restored (:mod:`.mediation`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler

from dcr_sidecar import errors
from dcr_sidecar.config import Upstream
from dcr_sidecar.net import Response
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.callback import FlowRecord, check_lengths
from dcr_sidecar.oauth.client_auth import AuthParts, auth_parts, strip_client_auth
from dcr_sidecar.oauth.resource import with_default_scope
from dcr_sidecar.oauth.resource_indicator import with_default_resource
from dcr_sidecar.provenance import check_secret_destination
from dcr_sidecar.proxy.boundary import REQUEST_ID, REQUEST_ID_KEY
from dcr_sidecar.proxy.forms import parse_form, read_body
from dcr_sidecar.proxy.inbound import check as check_inbound
from dcr_sidecar.proxy.mediation import (
    mediate,
    remember_pushed,
    require_s256_for_public_cimd,
    restore_code_exchange,
)
from dcr_sidecar.proxy.runtime import RUNTIME, Runtime
from dcr_sidecar.resolver import Credentials

# route suffix -> AS metadata member
ROUTES: Mapping[str, str] = {
    "token": "token_endpoint",
    "par": "pushed_authorization_request_endpoint",
    "revoke": "revocation_endpoint",
    "introspect": "introspection_endpoint",
    "device_authorization": "device_authorization_endpoint",
}
# Requests that may name a resource (RFC 8707 §2.1 authorization requests, §2.2 token).
RESOURCE_ROUTES = frozenset({"token", "par", "device_authorization"})
# A pushed authorization request is an authorization request: client_id is one of its
# parameters (RFC 9126 §2.1, RFC 6749 §4.1.1) whatever the client authentication.
CLIENT_ID_ROUTES = frozenset({"par"})
FORWARDED_REQUEST_HEADERS = ("Accept", "User-Agent")  # plus X-Request-Id and Content-Type
# Retry-After: an AS's 429 (RFC 6585 §4) or 503 (RFC 9110 §10.2.3) tells the app when to retry.
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Pragma", "WWW-Authenticate",
                            "Retry-After")
FORM_TYPE = "application/x-www-form-urlencoded"
RELAYED_STATUSES = range(200, 600)
Pairs = list[tuple[str, str]]


def outbound_headers(incoming: Mapping[str, str], request_id: str,
                     auth: AuthParts) -> dict[str, str]:
    headers = {name: incoming[name] for name in FORWARDED_REQUEST_HEADERS if name in incoming}
    headers[REQUEST_ID] = request_id
    headers["Content-Type"] = FORM_TYPE
    headers.update(auth.headers)
    return headers


def outbound_form(pairs: Pairs, auth: AuthParts, client_id: str | None = None) -> bytes:
    """The app's form without its client authentication, plus the injected one; `client_id`
    is added as a request parameter when the method does not carry it already."""
    form = [*strip_client_auth(pairs), *auth.form]
    if client_id is not None and not any(k == "client_id" for k, _ in auth.form):
        form.append(("client_id", client_id))
    return urlencode(form).encode("ascii")


def relayed_status(response: Response, upstream: str) -> int:
    """A final status the app's HTTP client can read (RFC 9110 §15: three digits, 1xx never
    final); a 101 would tell it the connection changed protocol. Anything else is a 502."""
    if response.status not in RELAYED_STATUSES:
        raise errors.BadUpstream(f"the authorization server answered HTTP {response.status}; "
                                 "only 200-599 is relayed", step="forward", upstream=upstream)
    return response.status


def relay(status: int, headers: Mapping[str, str], body: bytes) -> web.Response:
    kept = {name: headers[name] for name in RELAYED_RESPONSE_HEADERS if name in headers}
    return web.Response(status=status, body=body, headers=kept)


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
    if route in RESOURCE_ROUTES:
        pairs = with_default_resource(pairs, runtime.default_resource(upstream))
    return pairs, creds, record


CLIENT_CREDENTIALS = "client_credentials"
GRACE_GRANTS = frozenset({"authorization_code", "refresh_token"})


async def second_chance(route: str, runtime: Runtime, upstream: Upstream, pairs: Pairs, *,
                        creds: Credentials, response: Response) -> Credentials | None:
    """Credentials to retry once with, or None (design.md §3.4, §3.5).

    `invalid_client` for a dynamic client: the resolver finds out why and recovers; only a
    client_credentials grant is replayed transparently. `invalid_grant` for a code or refresh
    grant: retried with the superseded generation still within its grace (under callback
    mediation the flow record names the generation instead)."""
    error = oauth_error(response)
    grant = grant_type(pairs) if route == "token" else None
    if error == "invalid_client" and not creds.static:
        fresh = await runtime.resolver.recover(upstream.name, creds)
        return fresh if fresh is not None and grant == CLIENT_CREDENTIALS else None
    if error == "invalid_grant" and grant in GRACE_GRANTS and upstream.callback != "sidecar":
        return runtime.resolver.previous(upstream.name)
    return None


def accepted(response: Response) -> bool:
    """Did the AS accept the client's authentication? A 2xx, or an OAuth error about
    something else than the client (invalid_grant, invalid_scope ...)."""
    return 200 <= response.status < 300 or oauth_error(response) not in (None, "invalid_client")


def grant_type(pairs: Pairs) -> str | None:
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
        # A pushed authorization request starts a login too: follow a resource that moved.
        if route == "par" and await runtime.resolver.recheck_resource(upstream.name):
            creds = await runtime.resolver.credentials(upstream.name)
        if creds.metadata.get_url(member) is None:
            raise errors.NotFound(f"the authorization server of {upstream.name!r} has no "
                                  f"{member}")
        pairs, creds, pushed = await adjusted(route, runtime, upstream, creds, pairs,
                                              client=request.remote or "")

        async def send(with_creds: Credentials) -> Response:
            auth = auth_parts(with_creds.auth)
            url = with_creds.metadata.get_url(member)
            assert url is not None
            check_secret_destination(upstream, with_creds.metadata, with_creds.method, url)
            return await runtime.outbound.request(
                "POST", url, step="forward", upstream=upstream.name,
                headers=outbound_headers(request.headers, request[REQUEST_ID_KEY], auth),
                data=outbound_form(pairs, auth,
                                   with_creds.client_id if route in CLIENT_ID_ROUTES else None),
                error_limit=runtime.settings.limits.max_response_bytes)

        response = await send(creds)
        retry_with = await second_chance(route, runtime, upstream, pairs, creds=creds,
                                         response=response)
        if retry_with is not None:
            creds = retry_with
            response = await send(retry_with)
        if accepted(response):
            await runtime.resolver.served(upstream.name, creds)
        if pushed is not None and response.status == 201:
            await remember_pushed(runtime, pushed, response.body)
        return relay(relayed_status(response, upstream.name), response.headers,
                     response.body)

    return forward
