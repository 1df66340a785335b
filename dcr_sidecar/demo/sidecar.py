"""The demo app's calls to the sidecar (and to the AS endpoints the sidecar's metadata names):
one JSON request helper that caps bodies, turns every failure into a :class:`DemoError`, and
records each call with the sidecar's ``X-Request-Id`` (shown in the result page's panel)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from yarl import URL

MAX_RESPONSE_BYTES: Final = 1024 * 1024
MAX_DESCRIPTION_CHARS: Final = 500
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class RecordedCall:
    """One call of this login, as the page lists it (the request id finds it in the log)."""

    what: str
    method: str
    url: str
    status: int | None
    request_id: str | None


@dataclass(frozen=True)
class DemoSettings:
    sidecar_url: str
    upstream: str
    public_url: str

    @property
    def upstream_url(self) -> str:
        return f"{self.sidecar_url}/{self.upstream}"

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/callback"


class DemoError(Exception):
    """A failure shown to the user as a friendly page: an OAuth-style code and description."""

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 502,
        hint: str | None = None,
        retry_after: str | None = None,
        title: str = "Login failed",
    ) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
        self.hint = hint
        self.retry_after = retry_after
        self.title = title


def clean(text: object, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    """Remote text made safe to show: control characters removed, length capped."""
    cleaned = _CONTROL_RE.sub(" ", str(text)).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def _display_url(url: str) -> str:
    """A URL without userinfo, query or fragment, for messages."""
    try:
        parsed = URL(url)
        return str(parsed.with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "(invalid URL)"


async def _read_capped(resp: aiohttp.ClientResponse, what: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(65536):
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise DemoError(
                "invalid_response", f"{what} answered more than {MAX_RESPONSE_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _error_from_response(status: int, body: bytes, what: str, retry_after: str | None) -> DemoError:
    payload = _parse_json_object(body)
    page_status = status if status in (503, 504) else 502
    if payload is not None and isinstance(payload.get("error"), str):
        description = payload.get("error_description")
        return DemoError(
            clean(payload["error"], 100),
            clean(description)
            if isinstance(description, str)
            else f"{what} answered HTTP {status}",
            status=page_status,
            retry_after=clean(retry_after, 40) if retry_after else None,
        )
    return DemoError(
        "unexpected_response",
        f"{what} answered HTTP {status} without an OAuth error body",
        status=page_status,
        retry_after=clean(retry_after, 40) if retry_after else None,
    )


def _network_error(exc: BaseException, what: str, url: str) -> DemoError:
    detail = "timed out" if isinstance(exc, TimeoutError) else clean(exc, 300) or type(
        exc).__name__
    return DemoError(
        "network_error",
        f"could not reach {what} at {_display_url(url)}: {detail}",
        status=504 if isinstance(exc, TimeoutError) else 502,
    )


async def request_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    headers: Mapping[str, str] | None = None,
    data: Mapping[str, str] | None = None,
    calls: list[RecordedCall] | None = None,
) -> dict[str, Any]:
    """One request; a 200 JSON object back, anything else a :class:`DemoError`. The call is
    appended to `calls` (with the answer's X-Request-Id) whatever its outcome."""
    all_headers = {"Accept": "application/json", **(headers or {})}
    # Follow redirects only for plain GETs: never re-send a code, verifier or bearer token.
    follow = method == "GET" and not headers
    try:
        async with session.request(
            method, url, headers=all_headers, data=data, allow_redirects=follow
        ) as resp:
            if calls is not None:
                calls.append(RecordedCall(what, method, _display_url(url), resp.status,
                                          resp.headers.get("X-Request-Id")))
            body = await _read_capped(resp, what)
            if resp.status != 200:
                raise _error_from_response(resp.status, body, what, resp.headers.get("Retry-After"))
            payload = _parse_json_object(body)
            if payload is None:
                raise DemoError("invalid_response", f"{what} did not answer a JSON object")
            return payload
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # ValueError: a malformed URL
        if calls is not None and not any(c.url == _display_url(url) for c in calls[-1:]):
            calls.append(RecordedCall(what, method, _display_url(url), None, None))
        raise _network_error(exc, what, url) from exc


def _require_str(doc: Mapping[str, Any], name: str, what: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise DemoError("invalid_response", f"{what} has no {name!r}")
    return value


async def fetch_client(session: aiohttp.ClientSession, settings: DemoSettings,
                       calls: list[RecordedCall] | None = None) -> dict[str, Any]:
    """``GET /{upstream}/client``: the real client_id (re-read per login: generations change it)
    and how the sidecar obtained it (discovery and registration, never a secret)."""
    client = await request_json(
        session, "GET", f"{settings.upstream_url}/client", what="the sidecar's /client",
        calls=calls,
    )
    _require_str(client, "client_id", "the sidecar's /client answer")
    return client


async def fetch_metadata(session: aiohttp.ClientSession, settings: DemoSettings,
                         calls: list[RecordedCall] | None = None) -> dict[str, Any]:
    """The AS metadata as rewritten by the sidecar."""
    metadata = await request_json(
        session,
        "GET",
        f"{settings.upstream_url}/.well-known/openid-configuration",
        what="the sidecar's metadata",
        calls=calls,
    )
    _require_str(metadata, "issuer", "the AS metadata")
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = _require_str(metadata, name, "the AS metadata")
        try:
            scheme = URL(value).scheme
        except ValueError:
            scheme = ""
        if scheme not in ("http", "https"):
            raise DemoError("invalid_response", f"the AS metadata {name!r} is not an http(s) URL")
    return metadata
