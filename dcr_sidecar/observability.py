"""Logging as data: structlog configured once (by the CLI), with a redaction processor.

The redaction processor — a :class:`Redactor`, made once per process and passed to what needs it
— is the last line of defence for design.md §3.8/§3.9, applied to every log line: the sidecar's
own and, through the standard library bridge, aiohttp's:
- known secret keys, ``Authorization``-style values, credential-bearing parameters and every
  secret value the process holds (registered with :meth:`Redactor.remember`) are masked;
- URLs lose userinfo, query and fragment, in URL-named fields and inside free text alike;
- control and bidi characters are removed (a newline kept only in rendered tracebacks), so
  nothing an AS or a client said can forge a log line.
The canonical request line costs a few µs (docs/benchmarks.md, "The canonical log line"): its
bound logger is assembled once per logging configuration (:class:`CachedLogger`), orjson renders
it, numbers and ``None`` skip the string scans, and level and timestamp are added after
redaction (they are made here, never secret). Lines are written by a :class:`LineWriter`: those
at info and below logged on the event loop share one write per loop iteration (design.md §3.10).

Requests that aiohttp's HTTP parser rejects are logged by aiohttp with the first bytes of the
offending line; those bytes (possibly a credential) are dropped before rendering.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from asyncio import events
from collections.abc import Collection, Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import parse_qsl, unquote, urlsplit

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError
from structlog._config import _CONFIG
from structlog.contextvars import _CONTEXT_VARS, STRUCTLOG_KEY_PREFIX

from dcr_sidecar.oauth.secret import MASK, Secret
from dcr_sidecar.oauth.text import safe_url, strip_controls

if TYPE_CHECKING:
    from dcr_sidecar.store.records import Generation

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
def _secrets_in(node: Any) -> Iterator[Secret]:
    if isinstance(node, Secret):
        yield node
    elif isinstance(node, list | tuple):
        for item in node:
            yield from _secrets_in(item)
    elif hasattr(node, "__pydantic_fields__"):
        for name in type(node).__pydantic_fields__:
            yield from _secrets_in(getattr(node, name))


def _safe_url_in_text(match: re.Match[str]) -> str:
    url = match.group(0)
    kept = url.rstrip(_TRAILING)
    return safe_url(kept) + url[len(kept):]


def scrub_patterns(text: str) -> str:
    """Credentials masked, URLs without userinfo and query; the secrets a :class:`Redactor`
    knows are masked by :meth:`Redactor.scrub`, which builds on this."""
    # Cheap scans first: most log values are short words with no URL and no credential (every
    # _CREDENTIAL_RE match holds whitespace or "="), so the full patterns rarely run.
    if "://" in text:
        text = _URL_RE.sub(_safe_url_in_text, text)
    if _MAY_HOLD_CREDENTIAL.search(text) is not None:
        text = _CREDENTIAL_RE.sub(lambda m: (m.group(2) or (m.group(1) + " ")) + MASK, text)
    return text


_PREFIX_LEN = len(STRUCTLOG_KEY_PREFIX)
_REQUEST_ID_VAR = f"{STRUCTLOG_KEY_PREFIX}request_id"
# Values that no string scan applies to: only a secret-named key masks them.
_UNSCANNED = frozenset({int, float, bool, type(None)})
# A redactor remembers strings it found clean under a plain key (not secret-, URL- or
# traceback-named), and those keys: most log values repeat (event names, methods, routes,
# upstream names), so a repeat skips the scans. Emptied when a secret is remembered (it may hide
# in one) and when full.
_CLEAN_LIMIT = 4096
# Shorter than a request id (32 hex characters), which never repeats: remembering those would
# only churn the set.
_CLEAN_LENGTH = 31
# Letters, digits, "._-" only (a request id, a client_id, a kid): no URL, no credential pattern
# (those need whitespace, "=" or ":") and no control character can be in it, so only the known
# secrets are looked for.
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9._-]*")
# The members of a private JWK that are secret (RFC 7518 §6.2.2, §6.3.2).
_JWK_PRIVATE = ("d", "p", "q", "dp", "dq", "qi")
# Shorter values are not remembered: they would mask ordinary words.
_MIN_SECRET = 6
# Who holds a secret: a client generation of an upstream, or the process itself (PROCESS: the
# configuration, the store's password, key files), which is never forgotten.
Holder = tuple[str, int]
PROCESS: Holder = ("", -1)


def _texts(value: Secret | str | None) -> list[str]:
    """The strings to mask for one secret: itself, and the private members of a private JWK."""
    text = value.reveal() if isinstance(value, Secret) else value
    if not text or len(text) < _MIN_SECRET:
        return []
    found = [text]
    if "://" in text:  # a URL (store.url): its userinfo password and *password parameters
        with contextlib.suppress(ValueError):
            parts = urlsplit(text)
            candidates = [unquote(parts.password or "")] + [
                v for k, v in parse_qsl(parts.query) if k.endswith("password")]
            found += [v for v in candidates if len(v) >= _MIN_SECRET]
    if text.startswith("{") and '"kty"' in text:
        with contextlib.suppress(ValueError):
            jwk = json.loads(text)
            if isinstance(jwk, dict):
                found += [v for k in _JWK_PRIVATE if isinstance(v := jwk.get(k), str)
                          and len(v) >= _MIN_SECRET]
    return found


class Redactor:
    """The process's log and answer redaction: the registry of every secret the process holds,
    and what masks them — the structlog processor (the instance is called as one), :meth:`scrub`
    for text and :meth:`scrub_document` for the management listener's answers (design.md §3.9).

    One per process, made by the CLI (or a test) and passed to what learns secrets or answers
    with text: logging (:func:`configure_logging`), the Sidecar (configuration), the resolver
    (each generation it adopts), the error boundary and the management app. A secret is held by
    the process (:data:`PROCESS`: never forgotten) or by client generations; when the resolver
    says a generation is gone (:meth:`forget_generation`), the secrets no other holder shares
    are forgotten, so the registry does not grow with every rotation.
    """

    __slots__ = ("_clean", "_holders", "_plain_keys", "_secrets")

    def __init__(self) -> None:
        self._holders: dict[str, set[Holder]] = {}
        self._secrets: tuple[str, ...] = ()  # the keys of _holders, iterated per value
        self._clean: set[str] = set()
        self._plain_keys: set[str] = set()

    # ------------------------------------------------------------------ the registry

    @property
    def known(self) -> frozenset[str]:
        """Every secret masked now."""
        return frozenset(self._secrets)

    def remember(self, value: Secret | str | None, holder: Holder = PROCESS) -> None:
        """Mask `value` (and, for a private JWK, its private members) wherever it appears, until
        every holder is gone. Values shorter than 6 characters are ignored."""
        added = False
        for text in _texts(value):
            holders = self._holders.get(text)
            if holders is None:
                self._holders[text] = {holder}
                added = True
            else:
                holders.add(holder)
        if added:
            self._secrets = tuple(self._holders)
            self._clean.clear()  # a clean value may hold the new secret

    def remember_settings(self, settings: Any) -> None:
        """Every secret written in a configuration (its loaded ``Secret`` fields)."""
        for secret in _secrets_in(settings):
            self.remember(secret)

    def remember_generation(self, upstream: str, gen: Generation) -> None:
        """The secrets of a client generation, held by it until :meth:`forget_generation`."""
        holder = (upstream, gen.generation)
        for secret in (gen.client_secret, gen.registration_access_token, gen.private_key):
            self.remember(secret, holder)

    def forget_generation(self, upstream: str, generation: int) -> None:
        """Generation `generation` of `upstream` is gone: forget the secrets only it held."""
        holder = (upstream, generation)
        gone = [text for text, holders in self._holders.items()
                if holder in holders and not holders - {holder}]
        for holders in self._holders.values():
            holders.discard(holder)
        for text in gone:
            del self._holders[text]
        if gone:
            self._secrets = tuple(self._holders)

    def retain_generations(self, upstream: str, numbers: Collection[int]) -> None:
        """The store holds only generations `numbers` of `upstream`: the others are gone
        (deleted by another replica, or never stored), so forget them as
        :meth:`forget_generation` does."""
        gone = {holder for holders in self._holders.values() for holder in holders
                if holder[0] == upstream and holder != PROCESS and holder[1] not in numbers}
        for holder in gone:
            self.forget_generation(*holder)

    # ------------------------------------------------------------------ masking

    def _mask_known(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def scrub(self, text: str) -> str:
        """:func:`scrub_patterns`, then every known secret masked."""
        return self._mask_known(scrub_patterns(text))

    def scrub_document(self, node: Any) -> Any:
        """A JSON document with every string in it, keys included, passed through :meth:`scrub`
        and stripped of control characters: what leaves the management listener (design.md
        §3.9). Keys are not judged by name (an upstream may be called ``token``)."""
        if isinstance(node, str):
            return strip_controls(self.scrub(node))
        if isinstance(node, dict):
            return {self.scrub_document(str(k)): self.scrub_document(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [self.scrub_document(v) for v in node]
        return node

    def __call__(self, _: Any, __: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        """The structlog processor: every value of the event redacted."""
        # The commonest cases inline (as in _redact_value): a string found clean before under
        # a plain key, another string under a plain key (a request id: no key checks), a
        # number or None under a key that is not secret.
        clean, plain_keys, redact = self._clean, self._plain_keys, self._redact_value
        for key, value in list(event_dict.items()):
            cls = value.__class__
            if cls is str:
                if key in plain_keys:
                    if value not in clean:
                        event_dict[key] = self._redact_plain(key, value)
                    continue
            elif cls in _UNSCANNED and (value is None or key.lower() not in SECRET_KEYS):
                continue
            event_dict[key] = redact(key, value)
        return event_dict

    def _redact_value(self, key: str, value: Any) -> Any:
        cls = value.__class__
        if cls is str and value in self._clean and key in self._plain_keys:
            return value
        if cls in _UNSCANNED:
            return MASK if value is not None and key.lower() in SECRET_KEYS else value
        lowered = key.lower()
        if isinstance(value, Secret) or (value is not None and lowered in SECRET_KEYS):
            return MASK
        if isinstance(value, str):
            return self._redact_text(key, lowered, value)
        if isinstance(value, dict):
            return {k: self._redact_value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._redact_value(key, v) for v in value]
        return value

    def _redact_text(self, key: str, lowered: str, value: str) -> str:
        if lowered in URL_KEYS or key.endswith("_url"):
            return strip_controls(self.scrub(safe_url(value)))
        if key in MULTILINE_KEYS:
            return strip_controls(self.scrub(value), keep="\n\t")
        return self._redact_plain(key, value)

    def _redact_plain(self, key: str, value: str) -> str:
        """A string under a key that is not secret-, URL- or traceback-named."""
        if _PLAIN_TOKEN.fullmatch(value) is not None:
            redacted = self._mask_known(value)
        else:
            redacted = strip_controls(self.scrub(value))
        if redacted == value:
            self._remember_clean(key, value)
        return redacted

    def _remember_clean(self, key: str, value: str) -> None:
        """`key` is plain (whatever the value's length); a short `value` is clean."""
        pairs = ((self._clean, value), (self._plain_keys, key)) if len(value) <= _CLEAN_LENGTH \
            else ((self._plain_keys, key),)
        for known, item in pairs:
            if len(known) >= _CLEAN_LIMIT:
                known.clear()
            known.add(item)


def _json(_: Any, __: str, event_dict: Any) -> str:
    """The JSON renderer (as structlog's ``JSONRenderer``, one call less): orjson, falling back
    to the standard library for what orjson refuses (a lone surrogate from a non-UTF-8 byte, an
    integer beyond 64 bits); unknown types as ``repr``."""
    try:
        return orjson.dumps(event_dict, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(event_dict, default=repr)


def _renderer(fmt: str) -> Any:
    return _json if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)


def _merge_contextvars(_: Any, __: str,
                       event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog's ``merge_contextvars``, reading the variables structlog made for its keys
    instead of copying and scanning the whole context (the event loop's, aiohttp's ...)."""
    for name, var in _CONTEXT_VARS.items():
        value = var.get()
        if value is not Ellipsis:
            event_dict.setdefault(name[_PREFIX_LEN:], value)
    return event_dict


def new_request_context(request_id: str) -> None:
    """``clear_contextvars()`` then ``bind_contextvars(request_id=...)``, for the start of a
    request (proxy/boundary.py), without scanning the whole context twice."""
    for var in _CONTEXT_VARS.values():
        if var.get() is not Ellipsis:
            var.set(Ellipsis)
    request_var = _CONTEXT_VARS.get(_REQUEST_ID_VAR)
    if request_var is None:  # the first request: structlog makes the variable
        structlog.contextvars.bind_contextvars(request_id=request_id)
    else:
        request_var.set(request_id)


class _UtcTimestamp:
    """``timestamp``: ISO 8601 in UTC with microseconds, byte for byte what structlog's
    ``TimeStamper(fmt="iso", utc=True)`` writes (``2026-12-06T00:35:28.123456Z``; no fraction
    when it is zero, as ``datetime.isoformat`` does), the date and time of the second formatted
    once per second rather than on every line."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # one attribute: threads read it consistently

    def __call__(self, _: Any, __: str,
                 event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        cached, prefix = self._second
        if cached != second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, prefix)
        event_dict["timestamp"] = f"{prefix}.{micro:06d}Z" if micro else f"{prefix}Z"
        return event_dict


def processors(fmt: str, redactor: Redactor) -> list[Any]:
    return [
        _merge_contextvars,
        structlog.processors.format_exc_info,
        redactor,
        # After redaction: both are made here and hold nothing to scan.
        structlog.processors.add_log_level,
        _UtcTimestamp(),
        _renderer(fmt),
    ]


# Lines waiting for the end of the event loop's iteration are written at the latest when they
# reach this many characters.
_PENDING_LIMIT = 64 * 1024


class LineWriter:
    """Writes rendered log lines to one stream, a line never split nor interleaved with another.

    A debug or info line logged on a thread running an event loop waits in a buffer that is
    written with one ``write`` and one ``flush`` at the end of the loop's current iteration
    (a callback scheduled with ``call_soon``), or as soon as the buffer holds
    :data:`_PENDING_LIMIT` characters: under load, many requests' lines share one system call
    instead of one each. A warning or worse, a line from a thread without a running loop,
    :meth:`flush` (logging reconfigured, shutdown, process exit) write the buffer, in order,
    at once. A crash loses at most the lines of the iteration it happens in (design.md §3.10)."""

    __slots__ = ("_lock", "_pending", "_scheduled", "_size", "stream")

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._size = 0
        self._scheduled: object = None  # the loop a flush is scheduled on

    def _after_fork(self) -> None:
        """In a forked child: the waiting lines are the parent's to write, the lock may have
        been held by a thread the child does not have."""
        self._lock = threading.Lock()
        self._pending = []
        self._size = 0
        self._scheduled = None

    def later(self, line: str) -> None:
        """`line` (with its newline) at the end of this loop iteration; at once without a
        running loop."""
        loop = events._get_running_loop()
        if loop is None:
            self.now(line)
            return
        with self._lock:
            self._pending.append(line)
            self._size += len(line)
            if self._size >= _PENDING_LIMIT:
                self._write_pending()
            elif self._scheduled is not loop:
                self._scheduled = loop
                loop.call_soon(self.flush)

    def now(self, line: str) -> None:
        """`line`, after whatever waits, written and flushed now."""
        with self._lock:
            self._pending.append(line)
            self._write_pending()

    def flush(self) -> None:
        with self._lock:
            self._scheduled = None
            if self._pending:
                self._write_pending()

    def _write_pending(self) -> None:
        text = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        self.stream.write(text)
        self.stream.flush()


class _LineLogger:
    """structlog's wrapped logger (as its ``PrintLogger``, one per output): debug and info
    lines written at the end of the loop iteration, the others at once (:class:`LineWriter`)."""

    __slots__ = ("_writer",)

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def info(self, message: str) -> None:
        self._writer.later(message + "\n")

    debug = msg = log = info

    def warning(self, message: str) -> None:
        self._writer.now(message + "\n")

    warn = error = err = critical = fatal = exception = failure = warning


class _LineLoggerFactory:
    __slots__ = ("writer",)

    def __init__(self, writer: LineWriter) -> None:
        self.writer = writer

    def __call__(self, *_: Any) -> _LineLogger:
        return _LineLogger(self.writer)


_writers: list[LineWriter] = []  # the one in use (the last configured), if any


def flush_logs() -> None:
    """Write every log line still waiting (shutdown; also at process exit)."""
    for writer in _writers:
        writer.flush()


def _writers_after_fork() -> None:
    for writer in _writers:
        writer._after_fork()


atexit.register(flush_logs)
os.register_at_fork(after_in_child=_writers_after_fork)


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
        # structlog's own configuration object, read directly: get_config() builds a dict of
        # it on every call.
        config = _CONFIG
        if (config.default_processors is not self._processors
                or config.default_wrapper_class is not self._wrapper
                or config.logger_factory is not self._factory):
            self._logger = structlog.get_logger(self.name).bind()
            self._processors = config.default_processors
            self._wrapper = config.default_wrapper_class
            self._factory = config.logger_factory
        return self._logger

    def info(self, event: str, **fields: Any) -> Any:
        """Defined, not found by ``__getattr__``: a failed attribute lookup costs more than
        the call (the request line is at info)."""
        return self.bound().info(event, **fields)

    def __getattr__(self, method: str) -> Any:  # warning, exception ...
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
    """The root handler that renders standard-library records; at most one is installed. It
    writes through the structlog lines' :class:`LineWriter`, so the two stay in order."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__(writer.stream)
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if record.levelno >= logging.WARNING:
                self.writer.now(line)
            else:
                self.writer.later(line)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.writer.flush()


def _bridges() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, _Bridge)]


def _bridge_stdlib(fmt: str, level: int, writer: LineWriter, redactor: Redactor) -> None:
    """Render the standard library's log records (aiohttp's) through the same chain."""
    handler = _Bridge(writer)
    handler.setLevel(level)
    handler.addFilter(_DropParserInput())
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name,
                           _merge_contextvars,
                           structlog.processors.add_log_level,
                           _UtcTimestamp()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, redactor,
                    _renderer(fmt)]))
    root = logging.getLogger()
    for old in _bridges():
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.WARNING, level))


def configure_logging(redactor: Redactor, fmt: str = "json", level: str = "info",
                      stream: TextIO | None = None) -> None:
    """structlog, and the standard library's records, rendered through `redactor` and written by
    one :class:`LineWriter` to `stream` (standard error by default). Lines still waiting for
    the previous configuration's writer are written first."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    flush_logs()
    writer = LineWriter(stream or sys.stderr)
    _writers[:] = [writer]
    structlog.configure(
        processors=processors(fmt, redactor),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_LineLoggerFactory(writer),
        cache_logger_on_first_use=False,
    )
    _bridge_stdlib(fmt, numeric, writer, redactor)


def set_level(level: str) -> None:
    """Change the level at runtime (config reload)."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(numeric))
    for handler in _bridges():
        handler.setLevel(numeric)
