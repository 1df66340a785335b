"""Reading form bodies and queries within limits, with a clear 400 for malformed input."""

from __future__ import annotations

from urllib.parse import parse_qsl

from aiohttp import web

from dcr_sidecar import errors

MAX_FIELDS = 256


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it goes beyond `limit`."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise errors.PayloadTooLarge(f"the request body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise errors.PayloadTooLarge(f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_form(body: bytes) -> list[tuple[str, str]]:
    """application/x-www-form-urlencoded pairs in order (RFC 6749 App. B)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.BadRequest("the form body is not UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                          max_num_fields=MAX_FIELDS)
    except ValueError:
        raise errors.BadRequest("the form body is not valid "
                                "application/x-www-form-urlencoded") from None
    return pairs


def single(pairs: list[tuple[str, str]], name: str) -> str | None:
    """A parameter that must not repeat (RFC 6749 §3.1, §3.2)."""
    values = [v for k, v in pairs if k == name]
    if len(values) > 1:
        raise errors.BadRequest(f"the parameter {name} is repeated")
    return values[0] if values else None
