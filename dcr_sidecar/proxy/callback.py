"""GET /{name}/callback: the AS's authorization response under `callback: sidecar`
(design.md §3.6), checked and handed on to the app's redirect URI.

The sidecar's state is one-time: it is taken from the flow store before the response itself is
checked, so a refused response cannot be retried with the same state — nor a state made for
another upstream (design.md §3.6) be tried again where it belongs. (The AS's metadata is
fetched first: a moment of AS trouble should not spend a good state.)
"""

from __future__ import annotations

from aiohttp import web

from dcr_sidecar import errors
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.callback import (
    app_response,
    as_advertises_iss,
    check_binding,
    check_iss,
    code_key,
    state_key,
)
from dcr_sidecar.proxy.forms import parse_query, single
from dcr_sidecar.proxy.redirects import redirect, with_query
from dcr_sidecar.proxy.runtime import RUNTIME


async def callback(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    upstream = runtime.upstream(request.match_info["name"])
    if upstream.callback != "sidecar":
        raise errors.NotFound(f"upstream {upstream.name!r} does not mediate callbacks")
    pairs = parse_query(request)  # strict: a clear 400 for a malformed query
    state, code = single(pairs, "state"), single(pairs, "code")
    metadata = await runtime.resolver.metadata(upstream.name)
    record = await runtime.flows.take(state_key(state)) if state else None
    if record is None:
        raise errors.BadRequest("unknown, replayed or expired state")
    try:
        check_binding(record, upstream.name, metadata.issuer, "state")
        check_iss(single(pairs, "iss"), metadata.issuer,
                  required=as_advertises_iss(metadata.document))
        response = app_response(pairs, record, runtime.app_issuer(upstream, metadata.issuer))
    except ProtocolError as exc:
        raise errors.BadRequest(exc.reason) from exc
    if code is not None:
        await runtime.flows.put(code_key(code), record)
    return redirect(with_query(record.app_redirect_uri, response))
