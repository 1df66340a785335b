"""Logging as data: structlog configured once (by the CLI), with a redaction processor.

The redaction processor is the last line of defence for DESIGN §3.9: known secret keys,
``Authorization`` values, credential-bearing parameters and every secret value the process has
seen (registered with :func:`remember_secret`) are masked; URLs lose userinfo and query.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from dcr_sidecar.oauth.secret import MASK, Secret
from dcr_sidecar.oauth.text import safe_url

SECRET_KEYS = frozenset({
    "client_secret", "registration_access_token", "initial_access_token", "access_token",
    "refresh_token", "id_token", "code", "code_verifier", "password", "authorization",
    "client_assertion", "token", "software_statement", "secret", "assertion", "cookie",
    "set-cookie", "device_code", "user_code", "private_key", "encryption_keys",
})
URL_KEYS = frozenset({"url", "endpoint", "location", "redirect_uri", "registration_client_uri"})
_CREDENTIAL_RE = re.compile(
    r"(?i)\b(basic|bearer|dpop)\s+[A-Za-z0-9._~+/=-]+|"
    r"((?:client_secret|access_token|refresh_token|id_token|code|code_verifier|"
    r"client_assertion|registration_access_token|token)=)[^&\s\"']+")
# Every _CREDENTIAL_RE match holds whitespace (after the scheme) or "=" (after the parameter),
# so a value with neither cannot match: one character-class scan instead of the full pattern
# on the many short values of each log line (the same result, several times cheaper).
_MAY_HOLD_CREDENTIAL = re.compile(r"[\s=]")
_known_secrets: set[str] = set()


def remember_secret(value: Secret | str | None) -> None:
    """Every secret the process holds is scrubbed from log values wherever it appears."""
    text = value.reveal() if isinstance(value, Secret) else value
    if text and len(text) >= 6:
        _known_secrets.add(text)


def scrub(text: str) -> str:
    if _MAY_HOLD_CREDENTIAL.search(text) is not None:
        text = _CREDENTIAL_RE.sub(lambda m: (m.group(2) or (m.group(1) + " ")) + MASK,
                                  text)
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _redact_value(key: str, value: Any) -> Any:
    lowered = key.lower()
    if isinstance(value, Secret) or (value is not None and lowered in SECRET_KEYS):
        return MASK
    if isinstance(value, str):
        if lowered in URL_KEYS or key.endswith("_url"):
            return scrub(safe_url(value))
        return scrub(value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def processors(fmt: str) -> list[Any]:
    renderer: Any = (structlog.processors.JSONRenderer() if fmt == "json"
                     else structlog.dev.ConsoleRenderer(colors=False))
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ]


def configure_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    structlog.configure(
        processors=processors(fmt),
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def set_level(level: str) -> None:
    """Change the level at runtime (config reload)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(
        logging.getLevelNamesMapping()[level.upper()]))
