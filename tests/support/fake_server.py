"""Small in-process HTTP servers for faults no real AS produces on demand.

A :class:`FakeServer` binds an aiohttp app on a loopback address (127.0.0.1 by default; other
127.0.0.x addresses stand for "internal" or "foreign" hosts) and counts every request it gets.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.app = web.Application()
        self.hits: collections.Counter[str] = collections.Counter()
        self.bodies: list[tuple[str, bytes, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._handlers: dict[tuple[str, str], Handler] = {}
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def route(self, method: str, path: str, handler: Handler) -> None:
        self._handlers[(method, path)] = handler

    def json(self, method: str, path: str, body: Any, status: int = 200,
             headers: dict[str, str] | None = None) -> None:
        async def answer(_: web.Request) -> web.StreamResponse:
            return web.Response(status=status, text=json.dumps(body),
                                content_type="application/json", headers=headers)

        self.route(method, path, answer)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.hits[f"{request.method} {request.path}"] += 1
        self.bodies.append((request.path, await request.read(), dict(request.headers)))
        handler = self._handlers.get((request.method, request.path))
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request)

    def count(self, method: str, path: str) -> int:
        return self.hits[f"{method} {path}"]

    def total(self) -> int:
        return sum(self.hits.values())

    async def start(self) -> FakeServer:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def as_metadata(issuer: str, **extra: Any) -> dict[str, Any]:
    """A minimal valid AS metadata document for `issuer`."""
    doc: dict[str, Any] = {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "registration_endpoint": f"{issuer}/register",
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "response_types_supported": ["code"],
    }
    doc.update(extra)
    return doc
