"""Registration I/O (RFC 7591, design.md §3.2): choose the endpoint and method, POST, judge the
answer with the pure rules, and turn every failure into a typed error.

The initial access token goes only to a registration endpoint on a configured authority
(design.md §3.8); no request carrying a credential follows a redirect.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import structlog

from dcr_sidecar import errors
from dcr_sidecar.config import Settings, Upstream, read_secret
from dcr_sidecar.net import Outbound, Response
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.auth_method import NoCommonMethod, select_auth_method
from dcr_sidecar.oauth.metadata import Metadata, synthesized_registration_endpoint
from dcr_sidecar.oauth.registration import (
    InsufficientResponse,
    KeyBinding,
    RegisteredClient,
    RegistrationProfile,
    build_request,
    check_response,
    management_of,
    parse_error_response,
)
from dcr_sidecar.oauth.retry import parse_retry_after
from dcr_sidecar.oauth.text import clean_text, safe_url
from dcr_sidecar.observability import Redactor
from dcr_sidecar.provenance import check_iat_destination
from dcr_sidecar.rfc7592 import Rfc7592

log = structlog.get_logger(__name__)
audit = structlog.get_logger("dcr_sidecar.audit")
Provenance = Literal["configured", "metadata", "guessed"]


def profile_of(upstream: Upstream, settings: Settings) -> RegistrationProfile:
    return RegistrationProfile(
        redirect_uris=tuple(settings.registered_redirect_uris(upstream)),
        grant_types=tuple(upstream.grant_types),
        response_types=tuple(upstream.response_types),
        scopes=tuple(upstream.scopes),
        auth_methods=tuple(upstream.token_endpoint_auth_methods),
        client_profile=upstream.client_profile,
        application_type=upstream.application_type,
        client_metadata=upstream.client_metadata,
        software_statement=upstream.software_statement,
    )


def registration_endpoint(upstream: Upstream, metadata: Metadata) -> tuple[str, Provenance]:
    """Where to register, and where that URL came from."""
    if upstream.registration_endpoint:
        return upstream.registration_endpoint, "configured"
    if metadata.registration_endpoint:
        return metadata.registration_endpoint, "metadata"
    if upstream.issuer is not None or upstream.resource is None:
        # Only an operator-configured issuer may have its /register guessed.
        return synthesized_registration_endpoint(metadata.issuer), "guessed"
    raise errors.NoDynamicRegistration(
        "the AS metadata has no registration_endpoint; configure a static client or "
        "registration_endpoint", step="register", upstream=upstream.name)


@dataclass(frozen=True)
class Registration:
    client: RegisteredClient
    endpoint: str
    provenance: Provenance


def choose_method(upstream: Upstream, metadata: Metadata) -> str:
    """The token endpoint auth method to register (design.md §3.3), or a typed error."""
    try:
        return select_auth_method(
            upstream.token_endpoint_auth_methods,
            metadata.get_list("token_endpoint_auth_methods_supported"),
            metadata.get_list("code_challenge_methods_supported"),
            upstream.client_profile,
            metadata.get_list("token_endpoint_auth_signing_alg_values_supported"),
        )
    except NoCommonMethod as exc:
        raise errors.NoAuthMethod(exc.reason, step="select_auth_method",
                                  upstream=upstream.name) from exc


class Registrar:
    def __init__(self, outbound: Outbound, redactor: Redactor) -> None:
        self.outbound = outbound
        self.redactor = redactor
        self.rfc7592 = Rfc7592(outbound)

    def choose_method(self, upstream: Upstream, metadata: Metadata) -> str:
        return choose_method(upstream, metadata)

    async def register(self, upstream: Upstream, metadata: Metadata,
                       key: KeyBinding | None = None) -> Registration:
        """Register a client; `key` is the public side of the private_key_jwt key pair. The
        caller tells the redactor of the secrets issued, with the generation that holds them."""
        method = self.choose_method(upstream, metadata)
        endpoint, provenance = registration_endpoint(upstream, metadata)
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        iat = read_secret(upstream.initial_access_token)
        if iat:
            check_iat_destination(upstream, endpoint)  # before any connection
            self.redactor.remember(iat)
            headers["Authorization"] = f"Bearer {iat.reveal()}"
        body = build_request(profile_of(upstream, self.outbound.settings), method, key)
        response = await self.outbound.request(
            "POST", endpoint, step="register", upstream=upstream.name, headers=headers,
            data=json.dumps(body).encode())
        try:
            client = self._judge(upstream, response.status, response, body, endpoint)
        except errors.InsufficientRegistration as exc:
            await self._delete_refused(upstream, response, endpoint, exc)
            raise
        for warning in client.warnings:
            log.warning("registration_warning", upstream=upstream.name, detail=warning)
        return Registration(client, endpoint, provenance)

    async def _delete_refused(self, upstream: Upstream, response: Response, endpoint: str,
                              cause: errors.InsufficientRegistration) -> None:
        """The AS created a client the sidecar will not use: delete it (RFC 7592 §2.3) when the
        answer lets us, so a refusal leaves no orphan. Never raises: `cause` is the answer."""
        try:
            document = response.json()
        except ProtocolError:
            document = None
        client_id = document.get("client_id") if isinstance(document, dict) else None
        shown = clean_text(client_id, 128) if isinstance(client_id, str) else None
        management = management_of(document, endpoint,
                                   self.outbound.settings.security.allow_http)
        deleted = False
        if management is not None:
            self.redactor.remember(management[1])
            try:
                deleted = await self.rfc7592.delete_at(upstream, management)
            except errors.UpstreamError as exc:
                log.warning("orphan_delete_failed", upstream=upstream.name, client_id=shown,
                            detail=exc.description)
        audit.warning("orphan_deleted" if deleted else "orphan_left", upstream=upstream.name,
                      client_id=shown, cause_step="register", cause=cause.description,
                      manageable=management is not None)

    def _judge(self, upstream: Upstream, status: int, response: Any, body: dict[str, Any],
               endpoint: str) -> RegisteredClient:
        name = upstream.name
        if status in (200, 201):
            try:
                return check_response(
                    response.json(), body, registration_endpoint=endpoint,
                    allow_http_hosts=self.outbound.settings.security.allow_http,
                    now=time.time())
            except InsufficientResponse as exc:
                raise errors.InsufficientRegistration(
                    f"registration answer unusable: {exc.reason}", step="register",
                    upstream=name) from exc
            except ProtocolError as exc:
                raise errors.InsufficientRegistration(exc.reason, step="register",
                                                      upstream=name) from exc
        if status in (404, 405, 501):
            raise errors.NoDynamicRegistration(
                f"{safe_url(endpoint)} answered HTTP {status}: this AS offers no dynamic client "
                "registration; configure a static client (client_id/client_secret)",
                step="register", upstream=name)
        if status in (301, 302, 303, 307, 308):
            raise errors.PolicyRefused(
                f"{safe_url(endpoint)} answered a redirect to the registration request; "
                "requests carrying credentials never follow redirects", step="register",
                upstream=name)
        if status == 429 or status >= 500:
            raise errors.Unavailable(
                f"{safe_url(endpoint)} answered HTTP {status} to the registration",
                step="register", upstream=name,
                retry_after=parse_retry_after(response.headers.get("Retry-After"), time.time()))
        try:
            document = response.json()
        except ProtocolError:
            document = None
        rejected = parse_error_response(status, document)
        raise errors.RegistrationRejected(
            rejected.reason, step="register", upstream=name, as_error=rejected.error,
            as_error_description=rejected.error_description)

