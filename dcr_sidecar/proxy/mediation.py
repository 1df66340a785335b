"""Callback mediation on the request side (design.md §3.6): /authorize and /par hand the AS the
sidecar's redirect URI and state; /token puts the sidecar's redirect URI (and its PKCE verifier)
back into the code exchange and authenticates as the generation the flow started with.

The browser-facing /callback is in :mod:`dcr_sidecar.proxy.callback`.
"""

from __future__ import annotations

import structlog

from dcr_sidecar import errors
from dcr_sidecar.config import Upstream
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.callback import (
    FlowRecord,
    check_binding,
    check_mediable,
    code_key,
    new_state,
    pushed_key,
    pushed_request_uri,
    rewrite_request,
    state_key,
    values,
)
from dcr_sidecar.oauth.pkce import make_verifier, s256_challenge
from dcr_sidecar.proxy.forms import single
from dcr_sidecar.proxy.redirects import allowed_redirect_uri
from dcr_sidecar.proxy.runtime import Runtime
from dcr_sidecar.resolver import Credentials

Pairs = list[tuple[str, str]]


async def mediate(runtime: Runtime, upstream: Upstream, creds: Credentials,
                  pairs: Pairs, client: str) -> tuple[Pairs, FlowRecord]:
    """An authorization request (query of /authorize or form of /par) made to come back
    through /{name}/callback, with a one-time state bound to a new record (returned too);
    `client` is the caller's address, whose budget the record counts against."""
    try:
        check_mediable(pairs)
    except ProtocolError as exc:
        raise errors.BadRequest(exc.reason) from exc
    if upstream.app_issuer == "sidecar" and "openid" in (single(pairs, "scope") or "").split():
        raise errors.BadRequest("the openid scope cannot be served under app_issuer: sidecar "
                                "(ID tokens carry the AS's issuer)")
    redirect_uri = allowed_redirect_uri(pairs, upstream)
    assert redirect_uri is not None  # under callback: sidecar a redirect URI is always known
    verifier = None
    if upstream.pkce == "sidecar" and not values(pairs, "code_challenge"):
        verifier = make_verifier()
    state = new_state()
    record = FlowRecord(redirect_uri, single(pairs, "state"), verifier, creds.generation,
                        upstream=upstream.name, issuer=creds.issuer, client=client)
    await runtime.flows.put(state_key(state), record)
    return rewrite_request(pairs, redirect_uri=runtime.settings.callback_uri(upstream.name),
                           state=state,
                           code_challenge=s256_challenge(verifier) if verifier else None), record


async def remember_pushed(runtime: Runtime, record: FlowRecord, answer: bytes) -> None:
    """The AS accepted a mediated pushed request: its `request_uri` is now one /authorize
    takes (RFC 9126 §4), bound like the flow's state."""
    request_uri = pushed_request_uri(answer)
    if request_uri is not None:
        await runtime.flows.put(pushed_key(request_uri), record)


async def claim_pushed(runtime: Runtime, upstream: Upstream, creds: Credentials,
                       pairs: Pairs) -> None:
    """A mediated upstream's /authorize with a PAR reference: only a request this sidecar
    pushed at this upstream's /par, once (else the app's redirect URI and state would have
    skipped the allow-list and mediation)."""
    request_uri = single(pairs, "request_uri")
    record = await runtime.flows.take(pushed_key(request_uri)) if request_uri else None
    if record is None:
        raise errors.BadRequest("request_uri was not pushed through this sidecar's /par, was "
                                "already used, or expired")
    try:
        check_binding(record, upstream.name, creds.issuer, "request_uri")
    except ProtocolError as exc:
        raise errors.BadRequest(exc.reason) from exc


async def restore_code_exchange(runtime: Runtime, upstream: Upstream, creds: Credentials,
                                pairs: Pairs) -> tuple[Pairs, Credentials]:
    """A mediated authorization_code grant as the AS expects it; other grants unchanged."""
    if single(pairs, "grant_type") != "authorization_code":
        return pairs, creds
    code = single(pairs, "code")
    record = await runtime.flows.take(code_key(code)) if code else None
    if record is None:
        raise errors.InvalidGrant("the code did not come through this sidecar's callback, was "
                                  "already exchanged, or its record expired")
    try:  # taken above: a code presented at the wrong upstream is spent
        check_binding(record, upstream.name, creds.issuer, "code")
    except ProtocolError as exc:
        raise errors.InvalidGrant(exc.reason) from exc
    sent_redirect = single(pairs, "redirect_uri")
    if sent_redirect is not None and sent_redirect != record.app_redirect_uri:
        raise errors.InvalidGrant("redirect_uri differs from the authorization request's")
    restored = [(k, v) for k, v in pairs if k != "redirect_uri"]
    restored.append(("redirect_uri", runtime.settings.callback_uri(upstream.name)))
    if record.code_verifier is not None:
        restored = [(k, v) for k, v in restored if k != "code_verifier"]
        restored.append(("code_verifier", record.code_verifier))
    return restored, await generation_credentials(runtime, upstream, creds, record.generation)


async def generation_credentials(runtime: Runtime, upstream: Upstream, creds: Credentials,
                                 number: int) -> Credentials:
    """The credentials of client generation `number` (design.md §3.4: a mediated flow finishes
    with the client it started with); the current ones when that generation is gone."""
    if creds.generation == number or creds.static:
        return creds
    then = await runtime.resolver.generation(upstream.name, number)
    if then is not None:
        return then
    structlog.contextvars.bind_contextvars(flow_generation_gone=number)
    return creds


def require_s256_for_public_cimd(creds: Credentials, pairs: Pairs) -> None:
    """design.md §3.11: a public CIMD client's authorization request (at /authorize or /par,
    after mediation may have added the sidecar's own PKCE) carries S256 PKCE, else 400."""
    if creds.mechanism != "cimd" or creds.method != "none":
        return
    if single(pairs, "code_challenge") is None or \
            single(pairs, "code_challenge_method") != "S256":
        raise errors.BadRequest("a public CIMD client needs PKCE with code_challenge_method "
                                "S256 (design.md §3.11); send it, or use callback: sidecar "
                                "with pkce: sidecar")
