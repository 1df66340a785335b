"""Inbound client authentication on back-channel routes (DESIGN §2.4 `inbound`).

The app presents sidecar-local credentials as its client authentication (Basic or form); the
sidecar checks them in constant time and swaps them for the real ones. With no inbound secret
configured, whatever the app sent is simply removed.
"""

from __future__ import annotations

from collections.abc import Mapping

from dcr_sidecar import errors
from dcr_sidecar.config import Inbound
from dcr_sidecar.oauth.client_auth import parse_basic


def presented(headers: Mapping[str, str],
              form: list[tuple[str, str]]) -> tuple[str | None, str | None]:
    """(client_id, client_secret) the app sent, from Basic or the form."""
    header = headers.get("Authorization")
    if header:
        decoded = parse_basic(header)
        if decoded is None:
            raise errors.InboundUnauthorized("the Authorization header is not valid HTTP Basic")
        return decoded
    ids = [v for k, v in form if k == "client_id"]
    secrets = [v for k, v in form if k == "client_secret"]
    if len(ids) > 1 or len(secrets) > 1:
        raise errors.BadRequest("client_id or client_secret is repeated")
    return (ids[0] if ids else None), (secrets[0] if secrets else None)


def check(inbound: Inbound, headers: Mapping[str, str], form: list[tuple[str, str]]) -> None:
    if inbound.client_secret is None:
        return
    client_id, secret = presented(headers, form)
    id_ok = inbound.client_id is None or (client_id is not None
                                          and _equal(inbound.client_id, client_id))
    secret_ok = secret is not None and inbound.client_secret.matches(secret)
    if not (id_ok and secret_ok):
        raise errors.InboundUnauthorized(
            "this back channel requires the sidecar's inbound client credentials")


def _equal(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())
