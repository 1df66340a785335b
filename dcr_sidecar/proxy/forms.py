"""Reading form bodies and queries within limits, with a clear 400 for malformed input.

Forms (RFC 6749 App. B) and the authorization request's query are parsed by the same strict
rules: UTF-8 after percent-decoding, every ``%`` followed by two hex digits, every field a
``name=value`` pair, at most :data:`MAX_FIELDS` fields. aiohttp's own query parser is lenient
(it keeps ``%zz`` and turns bad UTF-8 into U+FFFD), so its result is not used for OAuth input.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import unquote

from aiohttp import web

from dcr_sidecar import errors

MAX_FIELDS = 256
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it goes beyond `limit`."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise errors.PayloadTooLarge(f"the request body exceeds {limit} bytes")
    if declared == 0:
        return b""
    if declared is not None and "Content-Encoding" not in request.headers:
        # aiohttp's parser stops at Content-Length (within the limit), nothing decompressed
        # beyond it: one read. A client gone before the end fails the read as below.
        content = request.content
        head = content.read_nowait(declared)  # usually all of it, already buffered
        if len(head) == declared:
            return head
        try:
            return head + await content.readexactly(declared - len(head))
        except asyncio.IncompleteReadError as exc:  # only when the connection was lost
            raise ConnectionResetError("the client left before the end of its body") from exc
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_urlencoded(text: str, what: str) -> list[tuple[str, str]]:
    """application/x-www-form-urlencoded pairs in order; 400 naming `what` when malformed.

    Exactly :func:`urllib.parse.parse_qsl` with ``keep_blank_values``, ``strict_parsing`` (for
    a non-empty text), ``errors="strict"`` and ``max_num_fields``, after the escape check
    (:func:`strict_pairs`; tests/test_forms_parser.py holds them equal on random input) —
    without parse_qsl's per-call argument coercion, and ``unquote`` only on fields holding a
    ``%``."""
    if "%" in text and _BAD_ESCAPE.search(text):
        raise errors.BadRequest(f"the {what} has a malformed percent-escape")
    try:
        return strict_pairs(text)
    except UnicodeDecodeError:
        raise errors.BadRequest(f"the {what} is not UTF-8 after percent-decoding") from None
    except ValueError:
        raise errors.BadRequest(f"the {what} is not valid "
                                "application/x-www-form-urlencoded") from None


def strict_pairs(text: str) -> list[tuple[str, str]]:
    """The pairs of `text` (escapes already checked); ValueError for a field without ``=``
    (an empty one included) or more than :data:`MAX_FIELDS` fields, UnicodeDecodeError for an
    escape sequence that is not UTF-8."""
    if not text:
        return []
    fields = text.split("&")
    if len(fields) > MAX_FIELDS:
        raise ValueError("Max number of fields exceeded")
    pairs = []
    for field in fields:
        name, sep, value = field.partition("=")
        if not sep:
            raise ValueError("bad query field")
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = unquote(name, errors="strict")
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = unquote(value, errors="strict")
        pairs.append((name, value))
    return pairs


def parse_form(body: bytes) -> list[tuple[str, str]]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.BadRequest("the form body is not UTF-8") from None
    return parse_urlencoded(text, "form body")


def parse_query(request: web.Request) -> list[tuple[str, str]]:
    """The request's query pairs, from the raw (still percent-encoded) query string."""
    return parse_urlencoded(request.rel_url.raw_query_string, "query")


def single(pairs: list[tuple[str, str]], name: str) -> str | None:
    """A parameter that must not repeat (RFC 6749 §3.1, §3.2)."""
    values = [v for k, v in pairs if k == name]
    if len(values) > 1:
        raise errors.BadRequest(f"the parameter {name} is repeated")
    return values[0] if values else None
