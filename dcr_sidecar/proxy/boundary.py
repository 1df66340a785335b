"""The one boundary where sidecar errors become HTTP answers (design.md §2.4), plus request ids,
header limits and one canonical log line per request."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import re
import secrets
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from dcr_sidecar import errors
from dcr_sidecar.observability import CachedLogger, Redactor, new_request_context, scrub_patterns
from dcr_sidecar.proxy.runtime import RUNTIME

log = CachedLogger("dcr_sidecar.request")  # the canonical line: assembled once, not per request
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
REQUEST_ID = "X-Request-Id"
MAX_HEADER_COUNT = 100
# The id this request is known by (the app's valid one, else generated); forwarded to the AS.
REQUEST_ID_KEY = web.RequestKey("request_id", str)


class _RequestIds:
    """32 hex characters: a random per-process prefix and a counter. Unique per process and,
    with 64 random bits, across processes; no system call per request (a uuid4 costs a
    getrandom() call each time). A forked child draws its own prefix."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFF_FFFF_FFFF_FFFF:016x}"


_request_ids = _RequestIds()


def request_id_of(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID)
    return given if given is not None and _REQUEST_ID_RE.match(given) else _request_ids.next()


def error_response(exc: errors.SidecarError, redactor: Redactor | None) -> web.Response:
    """`redactor`: the process's (None only for an app without a Runtime: then the credential
    patterns alone)."""
    # Descriptions are written without secrets; scrubbing is the backstop for anything an AS
    # echoed (a secret it was sent, a URL with a query) inside one.
    scrub = redactor.scrub if redactor is not None else scrub_patterns
    body = {"error": exc.error, "error_description": scrub(exc.description)}
    headers = {"Cache-Control": "no-store", **exc.headers()}
    return web.json_response(body, status=exc.status, headers=headers)


def _from_http_exception(exc: web.HTTPException) -> errors.SidecarError:
    if exc.status == 404:
        return errors.NotFound("no such route")
    if exc.status == 405:
        return errors.BadRequest(f"method not allowed here: {exc.reason}")
    if exc.status == 413:
        return errors.PayloadTooLarge("the request body is too large")
    return errors.BadRequest(exc.reason)


def _check_headers(request: web.Request, limit: int) -> None:
    """`limits.max_header_bytes` over all fields, and at most MAX_HEADER_COUNT fields. aiohttp's
    parser limits (app.py) sit above both, so these JSON 431s answer first."""
    raw = request.raw_headers
    if len(raw) > MAX_HEADER_COUNT:
        raise errors.HeadersTooLarge(f"more than {MAX_HEADER_COUNT} request header fields")
    size = sum(len(k) + len(v) + 4 for k, v in raw)
    if size > limit:
        raise errors.HeadersTooLarge(f"request headers exceed {limit} bytes")


def _route_label(match_info: web.UrlMappingMatchInfo) -> str:
    """The route template (``/{name}/token``), never the path a client sent."""
    resource = match_info.route.resource
    return resource.canonical if resource is not None else "unknown"


def _client_gone(request: web.Request, exc: Exception) -> bool:
    """The client closed its connection before it was answered: aiohttp fails the read of
    its body with ConnectionResetError. A normal event, not a crash (design.md §2.4)."""
    transport = request.transport
    return isinstance(exc, ConnectionResetError) and (transport is None
                                                      or transport.is_closing())


class InFlight:
    """Counts requests being handled, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.count += 1
        self._idle.clear()
        try:
            return await handler(request)
        finally:
            self.done()

    def done(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, deadline_s: float) -> bool:
        """True when no request is in flight, False when `deadline_s` ran out first."""
        try:
            await asyncio.wait_for(self._idle.wait(), deadline_s)
        except TimeoutError:
            return False
        return True


def counted_boundary(in_flight: InFlight | None) -> Middleware:
    """The boundary, counting its requests in `in_flight` itself: one middleware where
    `[in_flight.middleware, boundary]` were two (every middleware is one more frame resumed
    each time a request's coroutine chain wakes)."""
    if in_flight is None:
        return boundary
    counted = functools.partial(_boundary, in_flight=in_flight)
    return web.middleware(counted)


async def _boundary(request: web.Request, handler: Handler,
                    in_flight: InFlight | None = None) -> web.StreamResponse:
    if in_flight is not None:
        in_flight.count += 1
        in_flight._idle.clear()
    try:
        started = time.perf_counter()
        request_id = request[REQUEST_ID_KEY] = request_id_of(request)
        new_request_context(request_id)  # clear the context, bind the id
        runtime = request.app.get(RUNTIME)
        match_info = request.match_info
        route = _route_label(match_info)
        name = match_info.get("name")
        known = runtime is not None and name is not None and runtime.settings.upstream(name)
        redactor = runtime.redactor if runtime is not None else None
        try:
            if runtime is not None:
                _check_headers(request, runtime.settings.limits.max_header_bytes)
            # The handler is awaited here, not through a helper: every frame of the await chain
            # is walked again each time the request resumes.
            response = await handler(request)
        except errors.SidecarError as exc:
            response = error_response(exc, redactor)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_response(_from_http_exception(exc), redactor)
        except Exception as exc:
            if _client_gone(request, exc):
                # Nobody is left to answer: one info line, no status, nothing counted.
                log.info("client_disconnected", method=request.method, route=route,
                         upstream=name if known else None,
                         duration_ms=round((time.perf_counter() - started) * 1000, 2))
                return web.Response(status=400)
            log.exception("request_crashed", path=request.path)
            response = error_response(errors.SidecarError("internal error; see the sidecar's log "
                                                          f"for request id {request_id}"), redactor)
        response.headers[REQUEST_ID] = request_id
        elapsed = time.perf_counter() - started
        log.info("request_handled", method=request.method, route=route,
                 upstream=name if known else None, status=response.status,
                 duration_ms=round(elapsed * 1000, 2))
        if runtime is not None:
            runtime.metrics.request(name, route, response.status, elapsed)
        return response
    finally:
        if in_flight is not None:
            in_flight.done()


boundary = web.middleware(_boundary)
