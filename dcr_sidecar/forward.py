"""The forwarding path of the token-like routes (design.md §2.3 "Forwarding"): parse → plan →
build → send → relay.

A :class:`Plan` is what a request to one (upstream, route, client generation) needs that does
not change from one request to the next: the destination (checked by the transport rules and
the provenance rule once, parsed once, with its dial-time authority, its per-upstream slot and
its metrics series), and the client authentication already encoded (an HTTP Basic header, or
the form tail) — except a ``private_key_jwt`` assertion, which is signed for every request
(RFC 7523 §3: fresh ``jti`` and ``exp``).

Invariants:
- A plan serves exactly the credentials it was made from: it is found by (upstream, route,
  generation) and used only if it holds the *same* :class:`Credentials` object the resolver
  handed out, the same upstream configuration object and the transport's current
  :attr:`~dcr_sidecar.net.Outbound.epoch` (bumped by every reload); otherwise it is made
  again. A new generation, a rotation, a recovery, a reload: each gives new objects, hence new
  plans. The plans are bounded (:data:`MAX_PLANS`, cleared when full).
- A destination the rules refuse is never planned: the refusal is raised again on every request.
- Through an egress proxy the target is resolved and checked per request (the general
  :meth:`~dcr_sidecar.net.Outbound.request`); the plan still carries the checks and the
  encoded authentication.
- After the AS answered, :func:`dcr_sidecar.oauth.forwarding.retry_decision` says whether to
  relay, recover (and replay once), or replay once with the superseded generation still within
  its grace.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

from dcr_sidecar import errors
from dcr_sidecar.config import Settings, Upstream
from dcr_sidecar.net import Outbound, Response, Target
from dcr_sidecar.oauth.client_auth import auth_parts
from dcr_sidecar.oauth.forwarding import (
    FORM_TYPE,
    Next,
    Pairs,
    accepted,
    build_form,
    build_headers,
    encode_auth_form,
    grant_type,
    oauth_error,
    relayed_headers,
    retry_decision,
)
from dcr_sidecar.provenance import check_secret_destination
from dcr_sidecar.proxy.forms import parse_form, read_body
from dcr_sidecar.proxy.inbound import InboundCheck
from dcr_sidecar.resolver import Credentials, Resolver

# route suffix -> AS metadata member
ROUTES: Mapping[str, str] = {
    "token": "token_endpoint",
    "par": "pushed_authorization_request_endpoint",
    "revoke": "revocation_endpoint",
    "introspect": "introspection_endpoint",
    "device_authorization": "device_authorization_endpoint",
}
# A pushed authorization request is an authorization request: client_id is one of its
# parameters (RFC 9126 §2.1, RFC 6749 §4.1.1) whatever the client authentication.
CLIENT_ID_ROUTES = frozenset({"par"})
RELAYED_STATUSES = range(200, 600)
MAX_PLANS = 1024


@dataclass(frozen=True, slots=True)
class Plan:
    """One (upstream, route, generation), ready to send (see the module)."""

    creds: Credentials  # identity: the plan serves these and no others
    upstream: Upstream  # identity: the configuration it was checked under
    route: str
    url: str
    target: Target | None  # None: through the egress proxy (checked per request)
    auth_headers: Mapping[str, str]
    auth_tail: str | None  # the encoded form tail; None: signed per request
    client_id: str | None  # sent as a request parameter too (PAR)
    epoch: int


async def parse_request(request: web.Request, settings: Settings,
                        check_inbound: InboundCheck) -> Pairs:
    """The app's form, within limits, its inbound client authentication checked."""
    if "DPoP" in request.headers:
        raise errors.BadRequest("DPoP is not supported by dcr-sidecar version 1")
    # The header exactly as the form type: what content_type (a MIME parse per request) would
    # say; anything else (parameters, case) goes through that parse.
    if request.headers.get("Content-Type") != FORM_TYPE and request.content_type != FORM_TYPE:
        raise errors.BadRequest(f"the body must be {FORM_TYPE} (RFC 6749 §3.2)")
    pairs = parse_form(await read_body(request, settings.limits.max_request_bytes))
    check_inbound(settings.inbound, request.headers, pairs)
    return pairs


def relay(response: Response, upstream: str) -> web.Response:
    """The AS's answer as the app gets it: the status (200-599, else 502), the allow-listed
    headers, the body as is."""
    if response.status not in RELAYED_STATUSES:
        # RFC 9110 §15: three digits, 1xx never final; a 101 would tell the app's client the
        # connection changed protocol.
        raise errors.BadUpstream(f"the authorization server answered HTTP {response.status}; "
                                 "only 200-599 is relayed", step="forward", upstream=upstream)
    return web.Response(status=response.status, body=response.body,
                        headers=relayed_headers(response.headers))


class Forwarder:
    """Sends token-like requests from plans; one per sidecar (on the Runtime)."""

    def __init__(self, outbound: Outbound, resolver: Resolver) -> None:
        self.outbound = outbound
        self.resolver = resolver
        self._plans: dict[tuple[str, str, int], Plan] = {}
        self.check_inbound = InboundCheck()  # the inbound fast path's digest, per settings

    def __len__(self) -> int:
        """Plans held (at most :data:`MAX_PLANS`)."""
        return len(self._plans)

    def plan_for(self, upstream: Upstream, route: str, creds: Credentials) -> Plan:
        """The plan of (upstream, route, creds): a dictionary lookup when warm."""
        key = (upstream.name, route, creds.generation)
        plan = self._plans.get(key)
        if plan is not None and plan.creds is creds and plan.upstream is upstream \
                and plan.epoch == self.outbound.epoch:
            return plan
        plan = self.make_plan(upstream, route, creds)
        if len(self._plans) >= MAX_PLANS:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def make_plan(self, upstream: Upstream, route: str, creds: Credentials) -> Plan:
        """Check and encode once; raises (and plans nothing) when the destination is refused."""
        member = ROUTES[route]
        url = creds.metadata.get_url(member)
        if url is None:
            raise errors.NotFound(f"the authorization server of {upstream.name!r} has no "
                                  f"{member}")
        epoch = self.outbound.epoch
        check_secret_destination(upstream, creds.metadata, creds.method, url)
        target = self.outbound.target(url, upstream=upstream.name, endpoint=route)
        client_id = creds.client_id if route in CLIENT_ID_ROUTES else None
        if creds.method == "private_key_jwt":
            return Plan(creds, upstream, route, url, target, {}, None, client_id, epoch)
        auth = auth_parts(creds.auth)
        return Plan(creds, upstream, route, url, target, dict(auth.headers),
                    encode_auth_form(auth.form, client_id), client_id, epoch)

    async def send(self, upstream: Upstream, route: str, creds: Credentials, pairs: Pairs, *,
                   incoming: Mapping[str, str], request_id: str,
                   error_limit: int) -> tuple[Response, Credentials]:
        """The AS's answer to the app's form, sent with `creds` (and replayed once when
        :func:`retry_decision` says so); with the credentials of the answer relayed. The warm
        path awaits the transport directly (each coroutine frame is walked again on every
        resumption)."""
        plan = self.plan_for(upstream, route, creds)
        headers, data = build_request(plan, pairs, incoming, request_id)
        target = plan.target
        if target is not None and target.epoch == self.outbound.epoch:
            response = await self.outbound.send(target, headers=headers, data=data,
                                                error_limit=error_limit)
        else:
            response = await self._send_general(plan, headers, data, error_limit)
        status = response.status
        if status in (400, 401):  # the only answers that carry an OAuth error code
            return await self._answered_error(upstream, route, creds, pairs, response,
                                              incoming=incoming, request_id=request_id,
                                              error_limit=error_limit)
        if 200 <= status < 300 and not creds.static:  # static: nothing to mark as served
            await self.resolver.served(upstream.name, creds)
        return response, creds

    async def _answered_error(self, upstream: Upstream, route: str, creds: Credentials,
                              pairs: Pairs, response: Response, *, incoming: Mapping[str, str],
                              request_id: str,
                              error_limit: int) -> tuple[Response, Credentials]:
        """A 400/401: relay it, or recover / replay once as :func:`retry_decision` says."""
        error = oauth_error(response.status, response.body)
        decision = retry_decision(error, route=route, grant=grant_type(pairs),
                                  static=creds.static, mediated=upstream.callback == "sidecar")
        retry_with: Credentials | None = None
        if decision in (Next.RECOVER, Next.RECOVER_AND_RETRY):
            fresh = await self.resolver.recover(upstream.name, creds)
            retry_with = fresh if decision is Next.RECOVER_AND_RETRY else None
        elif decision is Next.RETRY_SUPERSEDED:
            retry_with = self.resolver.previous(upstream.name)
        if retry_with is not None:
            creds = retry_with
            plan = self.plan_for(upstream, route, creds)
            headers, data = build_request(plan, pairs, incoming, request_id)
            response = await self._send_general(plan, headers, data, error_limit)
            error = oauth_error(response.status, response.body)
        if not creds.static and accepted(response.status, error):
            await self.resolver.served(upstream.name, creds)
        return response, creds

    async def _send_general(self, plan: Plan, headers: dict[str, str], data: bytes,
                            error_limit: int) -> Response:
        """Through :meth:`Outbound.request`: the egress proxy, a plan of a past epoch, a
        replay (rare; the guarantees are the same)."""
        return await self.outbound.request(
            "POST", plan.url, step="forward", upstream=plan.upstream.name, headers=headers,
            data=data, error_limit=error_limit, endpoint=plan.route)


def build_request(plan: Plan, pairs: Pairs, incoming: Mapping[str, str],
                  request_id: str) -> tuple[dict[str, str], bytes]:
    """The outbound headers and form of one request from its plan: a few joins, except a
    private_key_jwt assertion, signed here for every request."""
    auth_headers, tail = plan.auth_headers, plan.auth_tail
    if tail is None:
        auth = auth_parts(plan.creds.auth)
        auth_headers, tail = auth.headers, encode_auth_form(auth.form, plan.client_id)
    return build_headers(incoming, request_id, auth_headers), build_form(pairs, tail)
