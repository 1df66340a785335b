"""The token-like hop as pure functions (design.md §2.3, §3.4, §3.5): the request the AS sees,
built from the app's form and the client's authentication parts, and what to do once the AS
has answered. No I/O: the forwarder (:mod:`dcr_sidecar.forward`) calls these.

Invariants:
- The outbound form is the app's pairs without any client-authentication parameter, then the
  injected method's pairs (encoded once per plan when they do not change per request), then
  ``client_id`` where the route needs it as a request parameter; the whole form encoded afresh
  (``application/x-www-form-urlencoded``, RFC 6749 App. B). Concatenating separately encoded
  parts with ``&`` gives exactly the bytes of encoding them together.
- The outbound headers are an allow-list (``Accept``, ``User-Agent``), the request id, the form
  content type and the method's headers (HTTP Basic); nothing else the app sent.
- :func:`retry_decision` retries at most once, and only where the AS's answer says the client
  (``invalid_client``) or a superseded generation (``invalid_grant`` on a code or refresh
  grant) is the cause.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from enum import Enum
from urllib.parse import quote_plus, urlencode

from dcr_sidecar.oauth.client_auth import CLIENT_AUTH_PARAMS

Pairs = list[tuple[str, str]]
FORM_TYPE = "application/x-www-form-urlencoded"
REQUEST_ID = "X-Request-Id"
FORWARDED_REQUEST_HEADERS = ("Accept", "User-Agent")  # plus X-Request-Id and Content-Type
# Retry-After: an AS's 429 (RFC 6585 §4) or 503 (RFC 9110 §10.2.3) tells the app when to retry.
RELAYED_RESPONSE_HEADERS = ("Content-Type", "Cache-Control", "Pragma", "WWW-Authenticate",
                            "Retry-After")
CLIENT_CREDENTIALS = "client_credentials"
GRACE_GRANTS = frozenset({"authorization_code", "refresh_token"})
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")  # what quote_plus leaves as it is (safe="")


def encode_auth_form(form: Iterable[tuple[str, str]], client_id: str | None = None) -> str:
    """The injected method's form pairs, encoded (the tail of every outbound form); `client_id`
    is appended as a request parameter when the method does not carry it already."""
    pairs = list(form)
    if client_id is not None and not any(k == "client_id" for k, _ in pairs):
        pairs.append(("client_id", client_id))
    return urlencode(pairs)


def form_quote(text: str) -> str:
    """``quote_plus(text)`` (what :func:`urllib.parse.urlencode` applies to each name and
    value), with the common case — only characters it never escapes — answered by one match."""
    return text if _PLAIN.fullmatch(text) else quote_plus(text)


def build_form(pairs: Iterable[tuple[str, str]], auth_tail: str) -> bytes:
    """The app's form without its client authentication, then `auth_tail`
    (:func:`encode_auth_form`): the bytes ``urlencode`` gives for the same pairs."""
    head = "&".join([f"{form_quote(k)}={form_quote(v)}" for k, v in pairs
                     if k not in CLIENT_AUTH_PARAMS])
    if head and auth_tail:
        return f"{head}&{auth_tail}".encode("ascii")
    return (head or auth_tail).encode("ascii")


def build_headers(incoming: Mapping[str, str], request_id: str,
                  auth_headers: Mapping[str, str]) -> dict[str, str]:
    """The outbound headers: the allow-listed ones the app sent, then the sidecar's."""
    headers = _present(incoming, FORWARDED_REQUEST_HEADERS)
    headers[REQUEST_ID] = request_id
    headers["Content-Type"] = FORM_TYPE
    if auth_headers:
        headers.update(auth_headers)
    return headers


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The AS's response headers the app gets (an allow-list)."""
    return _present(headers, RELAYED_RESPONSE_HEADERS)


def _present(headers: Mapping[str, str], names: Iterable[str]) -> dict[str, str]:
    """`names` that `headers` holds, with their (first) values: one lookup per name."""
    found = {}
    for name in names:
        value = headers.get(name)
        if value is not None:
            found[name] = value
    return found


def oauth_error(status: int, body: bytes) -> str | None:
    """The RFC 6749 §5.2 `error` code of a 400/401 answer (parsed only on those)."""
    if status not in (400, 401):
        return None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    error = document.get("error") if isinstance(document, dict) else None
    return error if isinstance(error, str) else None


def accepted(status: int, error: str | None) -> bool:
    """Did the AS accept the client's authentication? A 2xx, or an OAuth error about something
    else than the client (invalid_grant, invalid_scope ...)."""
    return 200 <= status < 300 or error not in (None, "invalid_client")


def grant_type(pairs: Iterable[tuple[str, str]]) -> str | None:
    return next((v for k, v in pairs if k == "grant_type"), None)


class Next(Enum):
    """What the forwarder does after the AS answered."""

    RELAY = "relay"  # relay the answer as it is
    RECOVER = "recover"  # let the resolver find out why the client failed; relay the answer
    RECOVER_AND_RETRY = "recover_and_retry"  # ... and replay once with what it recovered
    RETRY_SUPERSEDED = "retry_superseded"  # replay once with the superseded generation


def retry_decision(error: str | None, *, route: str, grant: str | None, static: bool,
                   mediated: bool) -> Next:
    """design.md §3.4, §3.5. `error` is the answer's :func:`oauth_error`; `grant` the form's
    grant_type (token route only); `static` a configured client (never recovered); `mediated`
    under ``callback: sidecar`` (the flow record names the generation instead of the grace).
    The answer to a replay is relayed whatever it says: the caller never asks twice.

    ``invalid_client`` for a dynamic client: the resolver finds out why and recovers; only a
    client_credentials grant is replayed transparently (a code or refresh token belongs to the
    failed client). ``invalid_grant`` for a code or refresh grant: the superseded generation,
    still within its grace, may be the one it was issued to."""
    token_grant = grant if route == "token" else None
    if error == "invalid_client" and not static:
        return Next.RECOVER_AND_RETRY if token_grant == CLIENT_CREDENTIALS else Next.RECOVER
    if error == "invalid_grant" and token_grant in GRACE_GRANTS and not mediated:
        return Next.RETRY_SUPERSEDED
    return Next.RELAY
