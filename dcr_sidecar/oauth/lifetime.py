"""Client-secret lifetime arithmetic (design.md §3.5) and RFC 7592 wire shapes.

`client_secret_expires_at` = 0 means never (RFC 7591 §3.2.1). Renewal starts at expiry - margin,
margin = min(max(60 s, 10 % of the lifetime), lifetime / 2), the lifetime measured from the local
time the credentials were received (so a skewed AS clock cannot make us renew late).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# RFC 7592 §2.2: an update request MUST NOT include these.
UPDATE_FORBIDDEN = frozenset({
    "registration_access_token", "registration_client_uri", "client_secret_expires_at",
    "client_id_issued_at", "client_secret",
})


def renewal_margin(expires_at: float, received_at: float) -> float:
    lifetime = max(0.0, expires_at - received_at)
    return min(max(60.0, 0.1 * lifetime), lifetime / 2)


def renew_at(expires_at: float, received_at: float) -> float | None:
    """When renewal should start; None for secrets that never expire."""
    if expires_at == 0:
        return None
    return expires_at - renewal_margin(expires_at, received_at)


def update_body(document: Mapping[str, Any], client_id: str) -> dict[str, Any]:
    """An RFC 7592 §2.2 PUT body from the current client information: the full metadata
    (omitted fields would be deleted), `client_id` included, the forbidden fields removed."""
    body = {k: v for k, v in document.items() if k not in UPDATE_FORBIDDEN}
    body["client_id"] = client_id
    return body


def management_fields(document: Mapping[str, Any]) -> tuple[str | None, str | None, int | None]:
    """(new client_secret, new registration_access_token, client_secret_expires_at) as the
    answer states them (RFC 7592 §2.1: new values replace the old ones at once)."""
    secret = document.get("client_secret")
    token = document.get("registration_access_token")
    expires = document.get("client_secret_expires_at")
    finite = (isinstance(expires, int) or (isinstance(expires, float) and math.isfinite(expires))
              ) and not isinstance(expires, bool) and expires >= 0
    return (
        secret if isinstance(secret, str) and secret else None,
        token if isinstance(token, str) and token else None,
        int(expires) if finite else None,  # type: ignore[arg-type]
    )
