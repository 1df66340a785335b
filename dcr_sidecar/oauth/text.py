"""Sanitising text that came from a remote server before it reaches a log or a message."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

# C0/C1 controls, line/paragraph separators and every bidi control (embeddings, overrides,
# isolates, and the implicit marks LRM, RLM, ALM).
_CONTROL = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def strip_controls(text: str, keep: str = "") -> str:
    """Control and bidi characters removed, except those in `keep` (e.g. newlines)."""
    return _CONTROL.sub(lambda m: m.group(0) if m.group(0) in keep else "", text)


def clean_text(value: object, limit: int = 200) -> str:
    """Control and bidi characters removed, length capped (design.md §3.8)."""
    text = strip_controls(str(value))
    return text if len(text) <= limit else text[:limit] + "…"


def safe_url(url: str) -> str:
    """A URL fit for logs: no userinfo, no query, no fragment (design.md §3.9)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return clean_text(urlunsplit((parts.scheme, netloc, parts.path, "", "")), 300)
