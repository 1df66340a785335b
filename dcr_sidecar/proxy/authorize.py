"""GET /{name}/authorize: the app's authorization request, with the real client_id set."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

import structlog
from aiohttp import web

from dcr_sidecar import errors
from dcr_sidecar.proxy.forms import parse_query
from dcr_sidecar.proxy.runtime import RUNTIME

log = structlog.get_logger(__name__)


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redirect_allowed(candidate: str, configured: Sequence[str], loopback_any_port: bool) -> bool:
    """Exact string match (RFC 9700 §2.1); with `loopback_any_port`, a loopback IP entry matches
    any port (RFC 8252 §7.3)."""
    if candidate in configured:
        return True
    if not loopback_any_port:
        return False
    try:
        got = urlsplit(candidate)
        if not _loopback(got.hostname):
            return False
        for uri in configured:
            want = urlsplit(uri)
            if (_loopback(want.hostname) and want.hostname == got.hostname
                    and (want.scheme, want.path, want.query) == (got.scheme, got.path, got.query)):
                return True
    except ValueError:
        return False
    return False


def with_query(url: str, pairs: Sequence[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(pairs)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


async def authorize(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    name = request.match_info["name"]
    upstream = runtime.upstream(name)
    pairs = parse_query(request)
    redirect_uris = [v for k, v in pairs if k == "redirect_uri"]
    if len(redirect_uris) > 1:
        raise errors.BadRequest("redirect_uri is repeated")
    redirect_uri = redirect_uris[0] if redirect_uris else None
    if redirect_uri is not None and not redirect_allowed(
            redirect_uri, upstream.redirect_uris, upstream.loopback_any_port):
        raise errors.BadRequest("redirect_uri is not one of this upstream's redirect_uris")
    try:
        creds = await runtime.resolver.credentials(name)
    except errors.UpstreamError as exc:
        if redirect_uri is None:
            raise
        return _unavailable_redirect(runtime.resolver.state(name).discovery, redirect_uri,
                                     request, exc)
    endpoint = creds.metadata.get_url("authorization_endpoint")
    if endpoint is None:
        raise errors.NotFound(f"the authorization server of {name!r} has no "
                              "authorization_endpoint")
    forwarded = [(k, v) for k, v in pairs if k != "client_id"]
    forwarded.append(("client_id", creds.client_id))
    return redirect(with_query(endpoint, forwarded))


def _unavailable_redirect(discovery: object, redirect_uri: str, request: web.Request,
                          exc: errors.UpstreamError) -> web.StreamResponse:
    """RFC 6749 §4.1.2.1: tell the app through its redirect URI, with its state (and `iss`
    when the metadata served to the app advertises RFC 9207)."""
    params = [("error", "temporarily_unavailable"),
              ("error_description", "the sidecar cannot obtain client credentials right now")]
    state = request.query.get("state")
    if state is not None:
        params.append(("state", state))
    metadata = getattr(discovery, "metadata", None)
    document = getattr(metadata, "document", {})
    if document.get("authorization_response_iss_parameter_supported") is True:
        params.append(("iss", str(document.get("issuer"))))
    log.warning("authorize_unavailable", step=exc.step, detail=exc.description)
    return redirect(with_query(redirect_uri, params), exc.headers())


def redirect(location: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store",
                                             **(headers or {})})
