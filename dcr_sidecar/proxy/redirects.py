"""The app's redirect URIs: which are allowed (exact match, RFC 9700 §2.1; loopback ports,
RFC 8252 §7.3; only in the canonical form a browser navigates to, :mod:`..oauth.redirect_uri`),
and building the redirects the sidecar answers with."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode, urlsplit, urlunsplit

from aiohttp import web

from dcr_sidecar import errors
from dcr_sidecar.config import Upstream
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.redirect_uri import RedirectURI, parse_redirect_uri
from dcr_sidecar.proxy.forms import single


def _loopback(uri: RedirectURI) -> bool:
    return uri.ip is not None and uri.ip.is_loopback


def redirect_allowed(candidate: str, configured: Sequence[str], loopback_any_port: bool) -> bool:
    """Exact string match (RFC 9700 §2.1); with `loopback_any_port`, a loopback IP entry matches
    any port (RFC 8252 §7.3). Both sides are in the canonical form a browser navigates to
    (:func:`parse_redirect_uri`; ProtocolError for the candidate otherwise), so the parts
    compared are the place the browser goes."""
    got = parse_redirect_uri(candidate)
    if candidate in configured:
        return True
    if not loopback_any_port or not _loopback(got):
        return False
    for uri in configured:
        want = parse_redirect_uri(uri)  # checked at load: never raises here
        if _loopback(want) and (want.scheme, want.host, want.path, want.query) == (
                got.scheme, got.host, got.path, got.query):
            return True
    return False


def allowed_redirect_uri(pairs: Sequence[tuple[str, str]], upstream: Upstream) -> str | None:
    """The app's redirect URI, checked against `redirect_uris` (else 400, never a redirect).

    Omitted, it is the only configured one under callback mediation (RFC 6749 §3.1.2.3), and
    left to the AS otherwise (None)."""
    redirect_uri = single(list(pairs), "redirect_uri")
    if redirect_uri is None:
        if upstream.callback == "sidecar":
            if len(upstream.redirect_uris) != 1:
                raise errors.BadRequest("redirect_uri is required: this upstream allows "
                                        "several redirect URIs")
            return upstream.redirect_uris[0]
        return None
    try:
        allowed = redirect_allowed(redirect_uri, upstream.redirect_uris,
                                   upstream.loopback_any_port)
    except ProtocolError as exc:
        raise errors.BadRequest(f"redirect_uri {exc.reason}") from exc
    if not allowed:
        raise errors.BadRequest("redirect_uri is not one of this upstream's redirect_uris")
    return redirect_uri


def with_query(url: str, pairs: Sequence[tuple[str, str]]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(pairs)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def redirect(location: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=302, headers={"Location": location, "Cache-Control": "no-store",
                                             **(headers or {})})
