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

The fast path (the warm hop). With ``inbound.client_id`` set, the canonical Basic value —
``Basic base64(form-urlencoded id ":" form-urlencoded secret)``, RFC 6749 §2.3.1, what
:func:`~dcr_sidecar.oauth.client_auth.basic_authorization` builds — is computed once per
settings object, and only its SHA-256 digest is kept. A presented ``Authorization`` header (with
no ``client_secret`` in the form, no repeated parameter) whose digest equals it is accepted
after ONE constant-time comparison of two 32-byte digests
(:func:`~dcr_sidecar.oauth.secret.matches_digest`). Why this leaks nothing:

- the two compared values always have the same length (32 bytes), whatever the header's and
  the secret's lengths, so the comparison never takes its unequal-length exit (which would tell
  the expected length, hence roughly the secret's); hashing the presented header costs time in
  proportion to the *presented* length only, which the client already knows;
- id and secret are compared together (one digest), so nothing tells which part was wrong;
- a header that does not match (any other encoding of the same credentials, lower-case
  ``basic``, a wrong secret) goes on to the full path below, which stays the authority for
  every case; the time the fast path added is the same whatever the secret. The only thing the
  split tells is "the canonical value was sent", i.e. "accepted", which the answer says anyway.
"""

from __future__ import annotations

from collections.abc import Mapping

from dcr_sidecar import errors
from dcr_sidecar.config import Inbound
from dcr_sidecar.oauth.client_auth import basic_authorization, parse_basic
from dcr_sidecar.oauth.secret import constant_time_equal, digest, matches_digest


def canonical_digest(inbound: Inbound) -> bytes | None:
    """SHA-256 of the canonical Basic value of `inbound` (see the module); None when there is
    no fast path (no inbound secret, or any client_id accepted)."""
    if inbound.client_secret is None or inbound.client_id is None:
        return None
    value = basic_authorization(inbound.client_id, inbound.client_secret.reveal())
    return digest(value)


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


def _fast_accept(expected: bytes, header: str, form: list[tuple[str, str]]) -> bool:
    """True when `header` is the canonical Basic value and the form carries no client_secret
    and no repeated client_id (what :func:`presented` refuses); False sends the request to the
    full path, which decides."""
    ids = 0
    for name, _ in form:
        if name == "client_secret":
            return False
        if name == "client_id":
            ids += 1
    if ids > 1:
        return False
    return matches_digest(expected, header)


class InboundCheck:
    """The inbound check with the fast path's digest made once per settings object (a reload
    brings a new object, hence a new digest). One per forwarder; nothing module-wide."""

    __slots__ = ("_digest", "_for")

    def __init__(self) -> None:
        self._for: Inbound | None = None
        self._digest: bytes | None = None

    def __call__(self, inbound: Inbound, headers: Mapping[str, str],
                 form: list[tuple[str, str]]) -> None:
        if inbound.client_secret is None:
            return
        if inbound is not self._for:
            self._digest, self._for = canonical_digest(inbound), inbound
        expected = self._digest
        if expected is not None:
            header = headers.get("Authorization")
            if header is not None and _fast_accept(expected, header, form):
                return
        full_check(inbound, headers, form)


def check(inbound: Inbound, headers: Mapping[str, str], form: list[tuple[str, str]]) -> None:
    """One check, fast path included (the digest made for this call)."""
    InboundCheck()(inbound, headers, form)


def full_check(inbound: Inbound, headers: Mapping[str, str],
               form: list[tuple[str, str]]) -> None:
    """The authority for every case (the fast path only ever accepts what this accepts)."""
    if inbound.client_secret is None:
        return
    client_id, secret = presented(headers, form)
    id_ok = inbound.client_id is None or constant_time_equal(inbound.client_id, client_id or "")
    secret_ok = inbound.client_secret.matches(secret or "")
    if not (id_ok and secret_ok and secret is not None):
        raise errors.InboundUnauthorized(
            "this back channel requires the sidecar's inbound client credentials")
