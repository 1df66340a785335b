"""GET /{name}/authorize: the app's authorization request, sent on to the AS with the real
client_id (design.md §2.3), mediated under `callback: sidecar` (§3.6), with the configured RFC 8707
resource when the app named none."""

from __future__ import annotations

import structlog
from aiohttp import web

from dcr_sidecar import errors
from dcr_sidecar.config import Upstream
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.callback import check_lengths, is_par_reference
from dcr_sidecar.oauth.resource import with_default_scope
from dcr_sidecar.oauth.resource_indicator import with_default_resource
from dcr_sidecar.proxy.forms import parse_query, single
from dcr_sidecar.proxy.mediation import claim_pushed, mediate, require_s256_for_public_cimd
from dcr_sidecar.proxy.metadata import advertises_iss
from dcr_sidecar.proxy.redirects import allowed_redirect_uri, redirect, with_query
from dcr_sidecar.proxy.runtime import RUNTIME, Runtime
from dcr_sidecar.resolver import Credentials

Pairs = list[tuple[str, str]]


async def authorize(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    name = request.match_info["name"]
    upstream = runtime.upstream(name)
    pairs = parse_query(request)  # strict: a clear 400 for a malformed query
    try:
        check_lengths(pairs)
    except ProtocolError as exc:
        raise errors.BadRequest(exc.reason) from exc
    # A PAR reference (RFC 9126 §4) carries only client_id beside request_uri: the rest,
    # redirect_uri included, was pushed (and checked) at /par. Under mediation only a request
    # the sidecar pushed itself is taken; under `callback: app` the AS holds the pushed
    # redirect_uri to the client's registered ones, which are the app's `redirect_uris`.
    pushed = is_par_reference(pairs)
    redirect_uri = None if pushed else allowed_redirect_uri(pairs, upstream)
    try:
        creds = await runtime.resolver.credentials(name)
        if await runtime.resolver.recheck_resource(name):  # the resource moved to another AS
            creds = await runtime.resolver.credentials(name)
    except errors.UpstreamError as exc:
        if redirect_uri is None:
            raise
        return _unavailable_redirect(runtime, upstream, redirect_uri, single(pairs, "state"), exc)
    endpoint = creds.metadata.get_url("authorization_endpoint")
    if endpoint is None:
        raise errors.NotFound(f"the authorization server of {name!r} has no "
                              "authorization_endpoint")
    await runtime.resolver.served(name, creds)  # the AS may issue codes to this client_id
    if pushed and upstream.callback == "sidecar":
        await claim_pushed(runtime, upstream, creds, pairs)
    elif not pushed:
        pairs = await _prepared(runtime, upstream, creds, pairs, request.remote or "")
    forwarded = [(k, v) for k, v in pairs if k != "client_id"]
    forwarded.append(("client_id", creds.client_id))
    return redirect(with_query(endpoint, forwarded))


async def _prepared(runtime: Runtime, upstream: Upstream, creds: Credentials,
                    pairs: Pairs, client: str) -> Pairs:
    if upstream.callback == "sidecar":
        pairs, _ = await mediate(runtime, upstream, creds, pairs, client)
    require_s256_for_public_cimd(creds, pairs)
    pairs = with_default_scope(pairs, runtime.resource_scopes(upstream))
    return with_default_resource(pairs, runtime.default_resource(upstream))


def _unavailable_redirect(runtime: Runtime, upstream: Upstream, redirect_uri: str,
                          state: str | None, exc: errors.UpstreamError) -> web.StreamResponse:
    """RFC 6749 §4.1.2.1: tell the app through its redirect URI, with its state, and with `iss`
    when the metadata served to the app advertises RFC 9207."""
    params = [("error", "temporarily_unavailable"),
              ("error_description", "the sidecar cannot obtain client credentials right now")]
    if state is not None:
        params.append(("state", state))
    issuer = _served_issuer(runtime, upstream)
    if issuer is not None:
        params.append(("iss", issuer))
    structlog.contextvars.bind_contextvars(failed_step=exc.step, detail=exc.description)
    return redirect(with_query(redirect_uri, params), exc.headers())


def _served_issuer(runtime: Runtime, upstream: Upstream) -> str | None:
    """The issuer the app checks `iss` against, when the served metadata advertises RFC 9207."""
    if upstream.app_issuer == "sidecar":
        return runtime.settings.sidecar_issuer(upstream.name)
    metadata = runtime.resolver.snapshot(upstream.name).metadata
    if metadata is None or not advertises_iss(metadata.document, upstream):
        return None
    return metadata.issuer
