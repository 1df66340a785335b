"""PKCE (RFC 7636)."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

_VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")


def make_verifier() -> str:
    """A 43-character verifier from 256 random bits (RFC 7636 §4.1, §7.1)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def s256_challenge(verifier: str) -> str:
    """BASE64URL(SHA256(ASCII(verifier))) without padding (RFC 7636 §4.2)."""
    if not _VERIFIER_RE.fullmatch(verifier):  # match() and $ would allow a trailing newline
        raise ValueError("a code_verifier is 43-128 characters of [A-Za-z0-9-._~]")
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
