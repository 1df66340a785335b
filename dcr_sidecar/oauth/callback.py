"""Callback mediation (design.md §3.6), the pure parts: which authorization requests can be
mediated, how they are rewritten, the one-time state, the RFC 9207 `iss` check and the redirect
back to the app.

Invariants:
- only `response_type=code` in the query response mode is mediated (a fragment, form_post or
  JARM response, or a signed request object, could not be read or rewritten);
- the sidecar's `state` carries at least 128 bits from `secrets` and means nothing by itself:
  it is a key to a stored :class:`FlowRecord`;
- a record is bound to the upstream (and its issuer) whose /authorize or /par made it: it is
  honoured only at that upstream's /callback and /token (:func:`check_binding`), so a state or
  code cannot cross from one AS's flow into another's (mix-up, RFC 9700 §4.4);
- codes, and the `request_uri`s of requests the sidecar pushed, are stored by their SHA-256,
  never as given; a mediated upstream's /authorize accepts only such a `request_uri`, once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.text import clean_text

STATE_BYTES = 32  # 256 bits; design.md §3.6 asks for at least 128
# What an authorization request's own state and nonce may hold (UTF-8 bytes): the state is stored
# for each mediated flow, so its size is what an unauthenticated caller makes the sidecar keep.
MAX_PARAM_BYTES = {"state": 512, "nonce": 512}
PAR_REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"  # RFC 9126 §2.2
# What the AS may say on the way back that the app gets (RFC 6749 §4.1.2, §4.1.2.1).
ERROR_PARAMS = ("error", "error_description", "error_uri")

Pairs = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One mediated authorization: where the app waits and what the token exchange needs,
    bound to the upstream, issuer and client generation it started with."""

    app_redirect_uri: str
    app_state: str | None
    code_verifier: str | None  # only when the sidecar added PKCE itself
    generation: int
    upstream: str
    issuer: str
    client: str = ""  # the address that started the flow: its budget (store/flows.py)

    def __repr__(self) -> str:  # the verifier stays out of logs
        return (f"FlowRecord({self.app_redirect_uri!r}, upstream={self.upstream!r}, "
                f"generation={self.generation})")


def new_state() -> str:
    return secrets.token_urlsafe(STATE_BYTES)


def state_key(state: str) -> str:
    return f"state:{state}"


def code_key(code: str) -> str:
    return "code:" + hashlib.sha256(code.encode("utf-8")).hexdigest()


def pushed_key(request_uri: str) -> str:
    """The record of a request the sidecar pushed (RFC 9126) under mediation."""
    return "par:" + hashlib.sha256(request_uri.encode("utf-8")).hexdigest()


def pushed_request_uri(body: bytes) -> str | None:
    """The `request_uri` of a PAR answer (RFC 9126 §2.2), when it is one."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    uri = document.get("request_uri") if isinstance(document, dict) else None
    return uri if isinstance(uri, str) and uri.startswith(PAR_REQUEST_URI_PREFIX) else None


def values(pairs: Pairs, name: str) -> list[str]:
    return [v for k, v in pairs if k == name]


def is_par_reference(pairs: Pairs) -> bool:
    """An authorization request that points at a pushed request (RFC 9126 §4)."""
    return any(v.startswith(PAR_REQUEST_URI_PREFIX) for v in values(pairs, "request_uri"))


def check_binding(record: FlowRecord, upstream: str, issuer: str, what: str) -> None:
    """A record is honoured only by the upstream, and the issuer, whose flow made it; `what`
    names the thing presented (``"state"``, ``"code"``) in the refusal."""
    if record.upstream != upstream:
        raise ProtocolError(f"the {what} belongs to another upstream's authorization request "
                            "(mix-up refused)")
    if record.issuer != issuer:  # the upstream moved to another AS since (design.md §3.1)
        raise ProtocolError(f"the {what} belongs to an authorization request made at "
                            f"{record.issuer}, and upstream {upstream!r} has since moved to "
                            f"{issuer}: its client there cannot finish it; start the "
                            "authorization again")


def check_lengths(pairs: Pairs) -> None:
    """`state` and `nonce` within :data:`MAX_PARAM_BYTES`."""
    for name, limit in MAX_PARAM_BYTES.items():
        if any(len(v.encode("utf-8")) > limit for v in values(pairs, name)):
            raise ProtocolError(f"{name} is longer than {limit} bytes")


def check_mediable(pairs: Pairs) -> None:
    """Refuse what the sidecar cannot mediate (design.md §3.6: anything but code + query)."""
    if values(pairs, "response_type") != ["code"]:
        raise ProtocolError("callback mediation handles response_type=code only")
    if values(pairs, "response_mode") not in ([], ["query"]):
        raise ProtocolError("callback mediation handles the query response mode only")
    for name in ("request", "request_uri"):
        if values(pairs, name):
            raise ProtocolError(f"a {name} parameter cannot be mediated: the sidecar must "
                                "rewrite redirect_uri and state (use PAR through the sidecar)")


def rewrite_request(pairs: Pairs, *, redirect_uri: str, state: str,
                    code_challenge: str | None) -> list[tuple[str, str]]:
    """The app's parameters with the sidecar's redirect_uri and state (and S256 PKCE when the
    sidecar made it), everything else kept as sent."""
    kept = [(k, v) for k, v in pairs if k not in ("redirect_uri", "state")]
    kept += [("redirect_uri", redirect_uri), ("state", state)]
    if code_challenge is not None:
        kept += [("code_challenge", code_challenge), ("code_challenge_method", "S256")]
    return kept


def as_advertises_iss(document: Mapping[str, Any]) -> bool:
    """RFC 9207 §3: the AS puts `iss` in every authorization response."""
    return document.get("authorization_response_iss_parameter_supported") is True


def check_iss(received: str | None, expected: str, *, required: bool) -> None:
    """RFC 9207 §2.4: simple string comparison; a missing `iss` is refused when the AS
    advertises `authorization_response_iss_parameter_supported` (mix-up, RFC 9700 §4.4)."""
    if received is None:
        if required:
            raise ProtocolError("the authorization response has no iss although the AS "
                                "advertises authorization_response_iss_parameter_supported")
        return
    if received != expected:
        raise ProtocolError(f"the authorization response comes from issuer "
                            f"{clean_text(received)!r}, not {expected!r} (mix-up refused)")


def app_response(pairs: Pairs, record: FlowRecord, app_issuer: str) -> list[tuple[str, str]]:
    """The parameters for the app's redirect URI: the code or the AS's error, the app's own
    state, and the issuer the app expects (RFC 9207)."""
    code = values(pairs, "code")
    if code:
        out = [("code", code[0])]
    elif values(pairs, "error"):
        out = [(k, v) for k, v in pairs if k in ERROR_PARAMS]
    else:
        raise ProtocolError("the authorization response has neither code nor error")
    if record.app_state is not None:
        out.append(("state", record.app_state))
    out.append(("iss", app_issuer))
    return out
