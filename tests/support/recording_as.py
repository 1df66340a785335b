"""A small in-process authorization server on 127.0.0.1 (a :class:`~tests.support.fakes.FakeServer`
with AS routes) that records every request it gets: headers as sent on the wire and the parsed
form or JSON body. For looking at exactly what the
sidecar sends, which a real AS does not show.

    async with RecordingAS(metadata={"token_endpoint_auth_methods_supported": [...]}) as rec:
        rec.issuer                # http://127.0.0.1:PORT
        rec.requests("/token")    # what reached /token, oldest first
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

from aiohttp import web

from tests.support.fakes import FakeServer, Handler

ENDPOINTS = {
    "authorization_endpoint": "/authorize",
    "token_endpoint": "/token",
    "pushed_authorization_request_endpoint": "/par",
    "revocation_endpoint": "/revoke",
    "introspection_endpoint": "/introspect",
    "device_authorization_endpoint": "/device",
    "registration_endpoint": "/register",
}
SECRET_METHODS = ("client_secret_basic", "client_secret_post")


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    form: tuple[tuple[str, str], ...]
    json: Any

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def form_values(self, name: str) -> list[str]:
        return [v for k, v in self.form if k == name]


class RecordingAS:
    """Answers discovery, RFC 7591 registration and every token-like endpoint."""

    def __init__(self, *, metadata: Mapping[str, Any] | None = None,
                 omit: Iterable[str] = ()) -> None:
        self.extra = dict(metadata or {})
        self.omit = set(omit)
        self.recorded: list[Recorded] = []
        self.clients: list[dict[str, Any]] = []
        # path -> (status, body, headers): a canned answer instead of the default one
        self.answers: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.server = FakeServer()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metadata(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"issuer": self.issuer, "code_challenge_methods_supported": ["S256"],
                               "response_types_supported": ["code"]}
        doc.update({member: self.issuer + path for member, path in ENDPOINTS.items()
                    if member not in self.omit})
        doc.update(self.extra)
        return doc

    def requests(self, path: str) -> list[Recorded]:
        return [r for r in self.recorded if r.path == path]

    async def start(self) -> None:
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/.well-known/oauth-authorization-server", self._metadata),
            ("GET", "/.well-known/openid-configuration", self._metadata),
            ("POST", "/register", self._register),
            # RFC 9728: the AS's own origin also stands for a protected resource at /api.
            ("GET", "/.well-known/oauth-protected-resource/api", self._resource_metadata)]
        routes += [("POST", path, self._endpoint) for member, path in ENDPOINTS.items()
                   if member not in ("registration_endpoint", "authorization_endpoint")]
        await self.server.start(routes)

    async def _resource_metadata(self, _: web.Request) -> web.StreamResponse:
        return web.json_response({"resource": f"{self.issuer}/api",
                                  "authorization_servers": [self.issuer]})

    async def stop(self) -> None:
        await self.server.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def _record(self, request: web.Request) -> Recorded:
        body = await request.read()
        form: tuple[tuple[str, str], ...] = ()
        document: Any = None
        if request.content_type == "application/x-www-form-urlencoded":
            form = tuple(parse_qsl(body.decode(), keep_blank_values=True))
        elif request.content_type == "application/json":
            document = await request.json()
        headers = tuple((k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in request.raw_headers)
        recorded = Recorded(request.method, request.path, headers, form, document)
        self.recorded.append(recorded)
        return recorded

    async def _metadata(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.metadata())

    async def _register(self, request: web.Request) -> web.StreamResponse:
        body = (await self._record(request)).json
        if request.path in self.answers:
            status, raw, headers = self.answers[request.path]
            return web.Response(status=status, body=raw, headers=headers)
        client = dict(body, client_id=f"client-{secrets.token_hex(6)}", client_id_issued_at=0)
        if body.get("token_endpoint_auth_method", "client_secret_basic") in SECRET_METHODS:
            client.update(client_secret=secrets.token_urlsafe(24), client_secret_expires_at=0)
        self.clients.append(client)
        return web.json_response(client, status=201)

    async def _endpoint(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if request.path in self.answers:
            status, body, headers = self.answers[request.path]
            return web.Response(status=status, body=body, headers=headers)
        answer = {"/token": {"access_token": secrets.token_urlsafe(16), "token_type": "Bearer"},
                  "/par": {"request_uri": "urn:ietf:params:oauth:request_uri:rec",
                           "expires_in": 60},
                  "/introspect": {"active": False},
                  "/device": {"device_code": "dc", "user_code": "UC", "expires_in": 60,
                              "verification_uri": self.issuer + "/device"}}
        status = 201 if request.path == "/par" else 200
        return web.json_response(answer.get(request.path, {}), status=status,
                                 headers={"Cache-Control": "no-store", "Pragma": "no-cache",
                                          "Set-Cookie": "as=1", "X-Internal": "yes"})

