"""Small in-process stand-ins for faults no real AS produces on demand.

Everything here listens on and resolves to 127.0.0.0/8 only: other loopback addresses
(127.0.0.2, 127.0.0.3, ...) stand for "internal" and "foreign" hosts, and :class:`MapResolver`
maps test names (``as.test``, ``internal.test``) onto them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


@dataclass
class FakeServer:
    """One aiohttp app on one loopback address; records every request it sees."""

    host: str
    port: int = 0
    hits: list[Hit] = field(default_factory=list)
    runner: web.AppRunner | None = None

    tls: bool = False

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def paths(self) -> list[str]:
        return [hit.path for hit in self.hits]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FakeServers:
    """Starts :class:`FakeServer` instances; stops them all at the end of the test."""

    def __init__(self) -> None:
        self.started: list[FakeServer] = []

    async def start(self, routes: Iterable[tuple[str, str, Handler]], *,
                    host: str = "127.0.0.1", port: int = 0,
                    ssl_context: ssl.SSLContext | None = None) -> FakeServer:
        """`ssl_context` serves https (a test CA's certificate: see tests/test_tls.py)."""
        server = FakeServer(_loopback_only(host), tls=ssl_context is not None)

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            body = await request.read() if request.can_read_body else b""
            server.hits.append(Hit(request.method, request.path, dict(request.headers), body))
            return await handler(request)

        app = web.Application(middlewares=[record])
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        server.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await server.runner.setup()
        site = web.TCPSite(server.runner, host, port, ssl_context=ssl_context)
        await site.start()
        server.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.started.append(server)
        return server

    async def stop(self) -> None:
        for server in reversed(self.started):
            if server.runner is not None:
                await server.runner.cleanup()


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
