"""Where credentials may be sent (design.md §3.8): configured authorities versus server-supplied
endpoints. Both checks run before any connection is attempted.

Definitions:
- An **authority** is (scheme, host, port) as aiohttp dials it (:func:`dcr_sidecar.dial.authority`).
- The **configured authorities** of an upstream are those of the URLs its operator wrote:
  ``issuer``, ``discovery_url``, ``resource``, ``registration_endpoint`` and every ``endpoints``
  URL. Every other authority is server-supplied: only a document named it.

Rules:
- The initial access token goes only to a registration endpoint on a configured authority of
  its own upstream (:func:`check_iat_destination`); else ``PolicyRefused`` (502) naming both.
- A client credential — a secret (``client_secret_basic`` / ``client_secret_post``) or a
  ``private_key_jwt`` assertion, which whoever receives it could replay at the real AS until
  it expires — goes only to an endpoint on a configured authority of its own upstream, or on
  the authority its own upstream's validated metadata document was fetched from (after
  discovery's same-origin redirects) (:func:`check_secret_destination`). A token endpoint on
  any other host — one the AS's document names but the operator never wrote — is refused; pin
  it under ``endpoints`` when it is intended. Public clients (``none``) send no credential and
  are not restricted here; the address policy still applies to every connection.
"""

from __future__ import annotations

from dcr_sidecar import errors
from dcr_sidecar.config import Upstream
from dcr_sidecar.dial import Authority, authority, authority_text
from dcr_sidecar.oauth.metadata import Metadata
from dcr_sidecar.oauth.text import safe_url


def _authority_of(url: str) -> Authority | None:
    try:
        return authority(url)
    except ValueError:
        return None


def configured_authorities(upstream: Upstream) -> set[Authority]:
    return {a for a in map(_authority_of, upstream.configured_urls()) if a is not None}


def secret_authorities(upstream: Upstream, metadata: Metadata) -> set[Authority]:
    """Where a client credential of `upstream` may go: its configured authorities and the
    authority its metadata document came from."""
    allowed = configured_authorities(upstream)
    source = _authority_of(metadata.source) if metadata.source else None
    if source is not None:
        allowed.add(source)
    return allowed


def _listed(authorities: set[Authority]) -> str:
    return ", ".join(sorted(map(authority_text, authorities))) or "none"


def check_iat_destination(upstream: Upstream, endpoint: str) -> None:
    """Refuse to send the initial access token to a server-supplied registration endpoint."""
    target = _authority_of(endpoint)
    configured = configured_authorities(upstream)
    if target is not None and target in configured:
        return
    shown = authority_text(target) if target is not None else "no valid authority"
    raise errors.PolicyRefused(
        "an initial access token is configured but the registration endpoint "
        f"{safe_url(endpoint)} is on {shown}, which the metadata named, not on a configured "
        f"authority ({_listed(configured)}); pin it with registration_endpoint if it is "
        "intended", step="register", upstream=upstream.name)


def check_secret_destination(upstream: Upstream, metadata: Metadata, method: str,
                             url: str) -> None:
    """Refuse to send `upstream`'s client credential to an endpoint outside its authorities."""
    if method == "none":
        return
    target = _authority_of(url)
    allowed = secret_authorities(upstream, metadata)
    if target is not None and target in allowed:
        return
    shown = authority_text(target) if target is not None else "no valid authority"
    raise errors.PolicyRefused(
        f"refusing to send the client credentials of {upstream.name!r} to {safe_url(url)}: "
        f"{shown} is not one of its authorities ({_listed(allowed)}); pin the endpoint under "
        "endpoints if it is intended", step="forward", upstream=upstream.name)
