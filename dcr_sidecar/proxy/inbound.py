"""Inbound client authentication on back-channel routes (design.md §2.4 `inbound`).

The app presents sidecar-local credentials as its client authentication, HTTP Basic or the
form (RFC 6749 §2.3.1); the sidecar checks them in constant time and swaps them for the real
ones. With no inbound secret configured, whatever the app sent is simply removed.

Rules, when ``inbound.client_secret`` is set:
- exactly one method: Basic, or ``client_secret`` in the form — both at once is 400 (RFC 6749
  §2.3: a client MUST NOT use more than one); any other ``Authorization`` scheme is 401;
- ``inbound.client_id: null`` accepts any client_id and checks only the secret (OIDC apps send
  the real client_id); else the client_id must match too;
- both comparisons always run, over SHA-256 digests, so neither the time taken nor an early
  exit tells which part was wrong or how long the secret is.
"""

from __future__ import annotations

from collections.abc import Mapping

from dcr_sidecar import errors
from dcr_sidecar.config import Inbound
from dcr_sidecar.oauth.client_auth import parse_basic
from dcr_sidecar.oauth.secret import constant_time_equal


def presented(headers: Mapping[str, str],
              form: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(client_id, client_secret) the app sent, from Basic or the form."""
    ids = [v for k, v in form if k == "client_id"]
    secrets = [v for k, v in form if k == "client_secret"]
    if len(ids) > 1 or len(secrets) > 1:
        raise errors.BadRequest("client_id or client_secret is repeated")
    header = headers.get("Authorization")
    if header is not None:
        if secrets:
            raise errors.BadRequest("the client authenticated with both HTTP Basic and "
                                    "client_secret in the body; use one method (RFC 6749 §2.3)")
        decoded = parse_basic(header)
        if decoded is None:
            raise errors.InboundUnauthorized("the Authorization header is not valid HTTP Basic")
        return decoded
    return (ids[0] if ids else None), (secrets[0] if secrets else None)


def check(inbound: Inbound, headers: Mapping[str, str], form: list[tuple[str, str]]) -> None:
    if inbound.client_secret is None:
        return
    client_id, secret = presented(headers, form)
    id_ok = inbound.client_id is None or constant_time_equal(inbound.client_id, client_id or "")
    secret_ok = inbound.client_secret.matches(secret or "")
    if not (id_ok and secret_ok and secret is not None):
        raise errors.InboundUnauthorized(
            "this back channel requires the sidecar's inbound client credentials")


