"""Logging as data: structlog configured once (by the CLI), with a redaction processor.

The redaction processor is the last line of defence for design.md §3.8/§3.9, applied to every log
line — the sidecar's own and, through the standard library bridge, aiohttp's:
- known secret keys, ``Authorization``-style values, credential-bearing parameters and every
  secret value the process holds (registered with :func:`remember_secret`) are masked;
- URLs lose userinfo, query and fragment, in URL-named fields and inside free text alike;
- control and bidi characters are removed (a newline kept only in rendered tracebacks), so
  nothing an AS or a client said can forge a log line.
The canonical request line costs a few µs (docs/benchmarks.md, "The canonical log line"): its
bound logger is assembled once per logging configuration (:class:`CachedLogger`), orjson renders
it, numbers and ``None`` skip the string scans, and level and timestamp are added after
redaction (they are made here, never secret).

Requests that aiohttp's HTTP parser rejects are logged by aiohttp with the first bytes of the
offending line; those bytes (possibly a credential) are dropped before rendering.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from typing import Any, TextIO

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from dcr_sidecar.oauth.secret import MASK, Secret
from dcr_sidecar.oauth.text import safe_url, strip_controls

SECRET_KEYS = frozenset({
    "client_secret", "registration_access_token", "initial_access_token", "access_token",
    "refresh_token", "id_token", "code", "code_verifier", "password", "authorization",
    "client_assertion", "token", "software_statement", "secret", "assertion", "cookie",
    "set-cookie", "device_code", "user_code", "private_key", "encryption_keys",
})
URL_KEYS = frozenset({"url", "endpoint", "location", "redirect_uri", "registration_client_uri"})
MULTILINE_KEYS = frozenset({"exception", "stack"})
_CREDENTIAL_RE = re.compile(
    r"(?i)\b(basic|bearer|dpop)\s+[A-Za-z0-9._~+/=-]+|"
    r"((?:client_secret|access_token|refresh_token|id_token|code|code_verifier|"
    r"client_assertion|registration_access_token|token)=)[^&\s\"']+")
# A URL inside prose: an IPv6 literal or a host, then anything up to a delimiter; trailing
# sentence punctuation is not part of it.
_URL_RE = re.compile(r"(?i)\bhttps?://(?:\[[0-9a-f:.%]+\]|[^\s\"'<>()\[\]{},;/?#]+)"
                     r"[^\s\"'<>()\[\]{},;]*")
_TRAILING = ".:!?"
_MAY_HOLD_CREDENTIAL = re.compile(r"[\s=]")
_known_secrets: set[str] = set()


def remember_secret(value: Secret | str | None) -> None:
    """Every secret the process holds is scrubbed from log values wherever it appears."""
    text = value.reveal() if isinstance(value, Secret) else value
    if text and len(text) >= 6:
        _known_secrets.add(text)
        _clean.clear()


def _secrets_in(node: Any) -> Iterator[Secret]:
    if isinstance(node, Secret):
        yield node
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _secrets_in(item)
    elif hasattr(node, "__pydantic_fields__"):
        for name in type(node).__pydantic_fields__:
            yield from _secrets_in(getattr(node, name))


def remember_settings_secrets(settings: Any) -> None:
    """Register every secret written in the configuration (loaded ``Secret`` fields)."""
    for secret in _secrets_in(settings):
        remember_secret(secret)


def _safe_url_in_text(match: re.Match[str]) -> str:
    url = match.group(0)
    kept = url.rstrip(_TRAILING)
    return safe_url(kept) + url[len(kept):]


def scrub(text: str) -> str:
    """Credentials and known secrets masked, URLs without userinfo and query."""
    # Cheap scans first: most log values are short words with no URL and no credential (every
    # _CREDENTIAL_RE match holds whitespace or "="), so the full patterns rarely run.
    if "://" in text:
        text = _URL_RE.sub(_safe_url_in_text, text)
    if _MAY_HOLD_CREDENTIAL.search(text) is not None:
        text = _CREDENTIAL_RE.sub(lambda m: (m.group(2) or (m.group(1) + " ")) + MASK, text)
    return _mask_known(text)


def _mask_known(text: str) -> str:
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_document(node: Any) -> Any:
    """A JSON document with every string in it, keys included, passed through :func:`scrub`
    and stripped of control characters: what leaves the management listener (design.md §3.9).
    Keys are not judged by name (an upstream may be called ``token``)."""
    if isinstance(node, str):
        return strip_controls(scrub(node))
    if isinstance(node, dict):
        return {scrub_document(str(k)): scrub_document(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [scrub_document(v) for v in node]
    return node


# Values that no string scan applies to: only a secret-named key masks them.
_UNSCANNED = frozenset({int, float, bool, type(None)})
# Strings that redaction left unchanged under a plain key (not secret-, URL- or traceback-named),
# and those keys: most log values repeat (event names, methods, routes, upstream names), so a
# repeat skips the scans. Emptied when a secret is remembered (it may hide in one) and when full.
_CLEAN_LIMIT = 4096
# Shorter than a request id (32 hex characters), which never repeats: remembering those would
# only churn the set.
_CLEAN_LENGTH = 31
# Letters, digits, "._-" only (a request id, a client_id, a kid): no URL, no credential pattern
# (those need whitespace, "=" or ":") and no control character can be in it, so only the known
# secrets are looked for.
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9._-]*")
_clean: set[str] = set()
_plain_keys: set[str] = set()


def _redact_value(key: str, value: Any) -> Any:
    cls = value.__class__
    if cls is str and value in _clean and key in _plain_keys:
        return value
    if cls in _UNSCANNED:
        return MASK if value is not None and key.lower() in SECRET_KEYS else value
    lowered = key.lower()
    if isinstance(value, Secret) or (value is not None and lowered in SECRET_KEYS):
        return MASK
    if isinstance(value, str):
        return _redact_text(key, lowered, value)
    if isinstance(value, dict):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(key, v) for v in value]
    return value


def _redact_text(key: str, lowered: str, value: str) -> str:
    if lowered in URL_KEYS or key.endswith("_url"):
        return strip_controls(scrub(safe_url(value)))
    if key in MULTILINE_KEYS:
        return strip_controls(scrub(value), keep="\n\t")
    if _PLAIN_TOKEN.fullmatch(value) is not None:
        redacted = _mask_known(value)
    else:
        redacted = strip_controls(scrub(value))
    if redacted == value and len(value) <= _CLEAN_LENGTH:
        _remember_clean(key, value)
    return redacted


def _remember_clean(key: str, value: str) -> None:
    for known, item in ((_clean, value), (_plain_keys, key)):
        if len(known) >= _CLEAN_LIMIT:
            known.clear()
        known.add(item)


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = _redact_value(key, event_dict[key])
    return event_dict


def _json(event_dict: Any, **_: Any) -> str:
    """orjson, falling back to the standard library for what orjson refuses (a lone
    surrogate from a non-UTF-8 byte, an integer beyond 64 bits); unknown types as ``repr``."""
    try:
        return orjson.dumps(event_dict, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(event_dict, default=repr)


def _renderer(fmt: str) -> Any:
    return (structlog.processors.JSONRenderer(serializer=_json) if fmt == "json"
            else structlog.dev.ConsoleRenderer(colors=False))


def processors(fmt: str) -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.format_exc_info,
        redact,
        # After redaction: both are made here and hold nothing to scan.
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _renderer(fmt),
    ]


class CachedLogger:
    """A named logger whose bound logger is assembled once per logging configuration, not on
    every call as structlog's lazy proxy does (its ``cache_logger_on_first_use`` would keep a
    logger past ``configure_logging`` and ``set_level``). A new configuration (another processor
    list, level or output) is noticed on the next call; ``capture_logs`` edits the processor list
    in place, which the cached logger shares."""

    __slots__ = ("_factory", "_logger", "_processors", "_wrapper", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._processors: Any = None
        self._wrapper: Any = None
        self._factory: Any = None
        self._logger: Any = None

    def bound(self) -> Any:
        config = structlog.get_config()
        if (config["processors"] is not self._processors
                or config["wrapper_class"] is not self._wrapper
                or config["logger_factory"] is not self._factory):
            self._logger = structlog.get_logger(self.name).bind()
            self._processors = config["processors"]
            self._wrapper = config["wrapper_class"]
            self._factory = config["logger_factory"]
        return self._logger

    def __getattr__(self, method: str) -> Any:  # info, warning, exception ...
        return getattr(self.bound(), method)


class _DropParserInput(logging.Filter):
    """aiohttp logs a rejected request with up to 100 bytes of the line that broke its parser
    (a header line may be ``Authorization: Basic ...``): keep the error's name only."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.exc_info = None
            record.msg = f"{record.getMessage()}: {type(exc).__name__} (HTTP {exc.code}); " \
                         "the request was refused by aiohttp's parser, its content not logged"
            record.args = None
        return True


class _Bridge(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler that renders standard-library records; at most one is installed."""


def _bridges() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, _Bridge)]


def _bridge_stdlib(fmt: str, level: int, stream: TextIO) -> None:
    """Render the standard library's log records (aiohttp's) through the same chain."""
    handler = _Bridge(stream)
    handler.setLevel(level)
    handler.addFilter(_DropParserInput())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name,
                           structlog.contextvars.merge_contextvars,
                           structlog.processors.add_log_level,
                           structlog.processors.TimeStamper(fmt="iso", utc=True)],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redact, _renderer(fmt)]))
    root = logging.getLogger()
    for old in _bridges():
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, level))


def configure_logging(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=processors(fmt),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib(fmt, numeric, stream or sys.stderr)


def set_level(level: str) -> None:
    """Change the level at runtime (config reload)."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(numeric))
    for handler in _bridges():
        handler.setLevel(numeric)
