"""Listener set-up shared by every listener — back channel, front channel, management: aiohttp's
parser limits, and how long a client may take to send a request (design.md §2.2 `timeouts`).

Invariants, per connection:
- `timeouts.client_header`: a request's header is complete within this many seconds of the
  connection's start, or of the first byte of the request that follows on a kept-alive
  connection; otherwise the connection is closed. Bytes dripped one at a time do not extend it.
- `timeouts.client_body`: a request's body is complete within this many seconds of the end of
  its header; otherwise the connection is closed (the handler reading it sees the client gone).
- Idle kept-alive connections are aiohttp's `keepalive_timeout` business, not these.
- The values are read when a connection opens, so a reload applies to new connections.

aiohttp has no header or body deadline of its own; :class:`_ClientDeadlines` adds them to its
request handler, reading two of its attributes (`_request_count`, `_messages`) that
``tests/test_listeners.py`` exercises on every supported aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from dcr_sidecar.config import Settings, Timeouts
from dcr_sidecar.proxy.boundary import MAX_HEADER_COUNT

log = structlog.get_logger("dcr_sidecar.request")


def handler_args(settings: Settings) -> dict[str, Any]:
    """aiohttp's own parser limits sit above the sidecar's (boundary._check_headers), so the
    sidecar's JSON 431 answers first; beyond these, aiohttp's plain 400 (design.md §2.4)."""
    size = settings.limits.max_header_bytes + 1024
    return {"max_line_size": size, "max_field_size": size,
            "max_headers": 2 * MAX_HEADER_COUNT}


class _ClientDeadlines(RequestHandler):
    """aiohttp's request handler with the header and body deadlines of the module docstring.

    The deadlines are timestamps; one timer per connection checks them when it fires, and
    re-arms itself for a deadline that moved later. Arming or clearing a deadline is an
    attribute write: a kept-alive connection does not create and cancel timer handles per
    request (a timer fires at most once per `client_header` seconds while it is busy)."""

    __slots__ = ("_body", "_body_due", "_deadlines", "_header_due", "_timer")

    def __init__(self, manager: web.Server, *, deadlines: Timeouts, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._deadlines = deadlines
        self._header_due: float | None = None
        self._body_due: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header()

    def data_received(self, data: bytes) -> None:
        seen = self._request_count
        in_body = self._body is not None and not self._body.is_eof()
        super().data_received(data)
        if self._request_count > seen:  # a header completed
            self._header_due = None
            payload = self._messages[-1][1] if self._messages else None
            if isinstance(payload, StreamReader) and not payload.is_eof():
                self._watch_body(payload)
        elif data and self._header_due is None and not in_body:
            self._arm_header()  # the first bytes of the next request on this connection

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._header_due = self._body_due = None
        self._body = None
        super().connection_lost(exc)

    def _arm_header(self) -> None:
        self._header_due = due = self._loop.time() + self._deadlines.client_header
        self._wake_by(due)

    def _watch_body(self, payload: StreamReader) -> None:
        self._body = payload
        self._body_due = due = self._loop.time() + self._deadlines.client_body
        self._wake_by(due)

    def _wake_by(self, due: float) -> None:
        """The timer fires no later than `due` (an earlier one re-arms itself when it fires)."""
        timer = self._timer
        if timer is None:
            self._timer = self._loop.call_at(due, self._check)
        elif timer.when() > due:
            timer.cancel()
            self._timer = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self._body is not None and self._body.is_eof():
            self._body = self._body_due = None
        header, body = self._header_due, self._body_due
        if header is not None and header <= now:
            self._header_due = None
            self._expired("header")
        elif body is not None and body <= now:
            self._body_due = None
            self._expired("body")
        else:
            pending = [due for due in (header, body) if due is not None]
            if pending:
                self._timer = self._loop.call_at(min(pending), self._check)

    def _expired(self, phase: str) -> None:
        limit = getattr(self._deadlines, f"client_{phase}")
        log.info("client_too_slow", phase=phase, limit_s=limit,
                 detail=f"the client did not send its request {phase} within "
                        f"timeouts.client_{phase}; connection closed")
        self.force_close()


class _Server(web.Server):
    """aiohttp's low-level server, making :class:`_ClientDeadlines` handlers."""

    def __init__(self, *args: Any, deadlines: Callable[[], Timeouts], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadlines_now = deadlines

    def __call__(self) -> RequestHandler:
        return _ClientDeadlines(self, loop=self._loop, deadlines=self._deadlines_now(),
                                **self._kwargs)


class ListenerRunner(web.AppRunner):
    """An AppRunner whose connections get the client deadlines in force when they open."""

    def __init__(self, app: web.Application, *, deadlines: Callable[[], Timeouts],
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._deadlines = deadlines

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(plain.request_handler, request_factory=plain.request_factory,
                       handler_cancellation=plain.handler_cancellation, loop=plain._loop,
                       deadlines=self._deadlines, **plain._kwargs)
