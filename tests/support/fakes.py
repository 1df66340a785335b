"""Small in-process stand-ins for faults no real AS produces on demand: one :class:`FakeServer`
(routes given up front or scripted per test), the resolver of test names, and AS building blocks.

Everything here listens on and resolves to 127.0.0.0/8 only: other loopback addresses
(127.0.0.2, 127.0.0.3, ...) stand for "internal" and "foreign" hosts, and :class:`MapResolver`
maps test names (``as.test``, ``internal.test``) onto them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult


def _loopback_only(address: str) -> str:
    if not ipaddress.ip_address(address).is_loopback:
        raise AssertionError(f"tests may only use loopback addresses, not {address}")
    return address


class MapResolver(AbstractResolver):
    """Names -> loopback addresses. `sequences` gives a name one answer per lookup (the last
    repeats), to play a rebinding DNS server. Unknown names do not resolve."""

    def __init__(self, names: Mapping[str, str | Sequence[str]] | None = None, *,
                 sequences: Mapping[str, Sequence[Sequence[str]]] | None = None) -> None:
        self.answers: dict[str, list[list[str]]] = {
            name: [[value] if isinstance(value, str) else list(value)]
            for name, value in (names or {}).items()}
        for name, answers in (sequences or {}).items():
            self.answers[name] = [list(answer) for answer in answers]
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.lookups.append(host)
        sequence = self.answers.get(host)
        if not sequence:
            raise OSError(f"{host} does not resolve in this test")
        answer = sequence.pop(0) if len(sequence) > 1 else sequence[0]
        return [{"hostname": host, "host": _loopback_only(address), "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}
                for address in answer]

    async def close(self) -> None:
        return None


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class FakeServer:
    """One aiohttp app on one loopback address that records every request it sees. Its routes
    are given up front (:meth:`FakeServers.start`, aiohttp patterns) or scripted by exact path
    at any time (:meth:`route`, :meth:`json`; the ``fake_server`` fixture); a request nothing
    answers gets 404."""

    def __init__(self, host: str = "127.0.0.1", *, tls: bool = False) -> None:
        self.host = _loopback_only(host)
        self.port = 0
        self.tls = tls
        self.hits: list[Hit] = []
        self.runner: web.AppRunner | None = None
        self._scripted: dict[tuple[str, str], Handler] = {}

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    url = base

    def paths(self) -> list[str]:
        return [hit.path for hit in self.hits]

    def count(self, method: str, path: str) -> int:
        return sum(1 for hit in self.hits if (hit.method, hit.path) == (method, path))

    def total(self) -> int:
        return len(self.hits)

    @property
    def bodies(self) -> list[tuple[str, bytes, dict[str, str]]]:
        return [(hit.path, hit.body, hit.headers) for hit in self.hits]

    def route(self, method: str, path: str, handler: Handler) -> None:
        self._scripted[(method, path)] = handler

    def json(self, method: str, path: str, body: Any, status: int = 200,
             headers: dict[str, str] | None = None) -> None:
        async def answer(_: web.Request) -> web.StreamResponse:
            return web.Response(status=status, text=json.dumps(body),
                                content_type="application/json", headers=headers)

        self.route(method, path, answer)

    async def start(self, routes: Iterable[tuple[str, str, Handler]] = (), *, port: int = 0,
                    ssl_context: ssl.SSLContext | None = None) -> FakeServer:
        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            body = await request.read() if request.can_read_body else b""
            self.hits.append(Hit(request.method, request.path, dict(request.headers), body))
            return await handler(request)

        app = web.Application(middlewares=[record])
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)  # after the given routes
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, port, ssl_context=ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        handler = self._scripted.get((request.method, request.path))
        if handler is None:
            return web.Response(status=404, text="not found")
        return await handler(request)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeServers:
    """Starts :class:`FakeServer` instances; stops them all at the end of the test."""

    def __init__(self) -> None:
        self.started: list[FakeServer] = []

    async def start(self, routes: Iterable[tuple[str, str, Handler]], *,
                    host: str = "127.0.0.1", port: int = 0,
                    ssl_context: ssl.SSLContext | None = None) -> FakeServer:
        """`ssl_context` serves https (a test CA's certificate: see tests/test_tls.py)."""
        server = FakeServer(host, tls=ssl_context is not None)
        self.started.append(server)
        return await server.start(routes, port=port, ssl_context=ssl_context)

    async def stop(self) -> None:
        for server in reversed(self.started):
            await server.stop()


def json_handler(document: Any, status: int = 200,
                 headers: Mapping[str, str] | None = None) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(document, status=status, headers=headers)

    return handle


def metadata_handler(make: Callable[[web.Request], dict[str, Any]]) -> Handler:
    """Metadata built per request (so it can name the server's own port)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(make(request))

    return handle


async def never_answer(request: web.Request) -> web.StreamResponse:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


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


Overrides = Callable[[str], Mapping[str, Any]]
TOKEN_RESPONSE = {"access_token": "fake-access-token-0123456789", "token_type": "Bearer",
                  "expires_in": 300}


def fake_as_routes(overrides: Overrides | None = None, *, client_secret: str = "",
                   prefix: str = "") -> list[tuple[str, str, Handler]]:
    """A minimal RFC 8414 AS at `prefix`: metadata whose issuer is the URL it was asked on
    (``http(s)://{Host}{prefix}``), open registration, and a token endpoint. `overrides` maps
    the issuer to metadata members to replace (e.g. a token_endpoint elsewhere)."""

    def issuer_of(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}{prefix}"

    async def metadata(request: web.Request) -> web.StreamResponse:
        issuer = issuer_of(request)
        document = {
            "issuer": issuer, "token_endpoint": f"{issuer}/token",
            "registration_endpoint": f"{issuer}/register",
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
        }
        document.update(overrides(issuer) if overrides else {})
        return web.json_response(document)

    async def register(request: web.Request) -> web.StreamResponse:
        asked = await request.json()
        answer = {**asked, "client_id": "fake-client-id", "client_secret_expires_at": 0}
        if client_secret:
            answer["client_secret"] = client_secret
        return web.json_response(answer, status=201)

    return [
        ("GET", f"/.well-known/oauth-authorization-server{prefix}", metadata),
        ("GET", f"{prefix}/.well-known/openid-configuration", metadata),
        ("POST", f"{prefix}/register", register),
        ("POST", f"{prefix}/token", json_handler(TOKEN_RESPONSE)),
    ]
