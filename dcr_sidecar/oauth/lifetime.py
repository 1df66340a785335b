"""Client-secret lifetime arithmetic (design.md §3.5) and RFC 7592 wire shapes.

`client_secret_expires_at` = 0 means never (RFC 7591 §3.2.1). Renewal starts at expiry - margin,
margin = min(max(60 s, 10 % of the lifetime), lifetime / 2), the lifetime measured from the local
time the credentials were received (so a skewed AS clock cannot make us renew late).

Timestamps an AS sends are clamped to [0, MAX_TIMESTAMP] when parsed (:func:`timestamp`): a
far-future value means "effectively never" and must not overflow a float, a datetime or a
JSON consumer downstream (2^63-1 and 10^400 are both valid JSON numbers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z: the last second datetime can represent

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


def timestamp(value: object) -> int | None:
    """A JSON NumericDate as an int in [0, MAX_TIMESTAMP]; None when it is not a finite number
    (booleans, strings, NaN, Infinity). Negative values are kept for the caller to refuse."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return int(min(value, MAX_TIMESTAMP))


def management_fields(document: Mapping[str, Any]) -> tuple[str | None, str | None, int | None]:
    """(new client_secret, new registration_access_token, client_secret_expires_at) as the
    answer states them (RFC 7592 §2.1: new values replace the old ones at once)."""
    secret = document.get("client_secret")
    token = document.get("registration_access_token")
    expires = timestamp(document.get("client_secret_expires_at"))
    return (
        secret if isinstance(secret, str) and secret else None,
        token if isinstance(token, str) and token else None,
        expires if expires is not None and expires >= 0 else None,
    )
