"""A small authorization server for first-contact and storm scenarios (its own process).

Two path issuers on one port:

- ``/p`` — the first-contact issuer: the RFC 8414 insertion URL
  (``/.well-known/oauth-authorization-server/p``) and the OIDC insertion URL
  (``/.well-known/openid-configuration/p``) wait ``--delay`` s, then answer 404; the OIDC
  appended URL (``/p/.well-known/openid-configuration``) answers at once with valid metadata.
- ``/q`` — the storm issuer: its RFC 8414 insertion URL answers at once.

Registration (``/{p,q}/register``, RFC 7591, echoing the request) and the token endpoint
(``/{p,q}/token``, Basic checked against the registered clients, else 401 invalid_client)
answer at once. ``GET /__bench/stats`` counts what happened; ``POST /__bench/reset`` forgets it.

    python -m bench.fake_as --port 8090 [--delay 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import secrets
import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from dcr_sidecar.oauth.client_auth import parse_basic

ISSUERS = ("p", "q")
STATS = web.AppKey("stats", collections.Counter[str])
CLIENTS = web.AppKey("clients", dict[str, str])
TOKEN = {"access_token": "fake-as-access-token", "token_type": "Bearer", "expires_in": 3600}


def metadata(base: str, tenant: str) -> dict[str, Any]:
    issuer = f"{base}/{tenant}"
    return {
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "registration_endpoint": f"{issuer}/register",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
    }


def create_app(port: int, delay: float) -> web.Application:
    app = web.Application()
    app[STATS] = collections.Counter()
    app[CLIENTS] = {}
    base = f"http://127.0.0.1:{port}"

    async def slow_404(request: web.Request) -> web.Response:
        request.app[STATS]["slow_404"] += 1
        await asyncio.sleep(delay)
        return web.json_response({"error": "not_found"}, status=404)

    async def fast_404(request: web.Request) -> web.Response:
        request.app[STATS]["fast_404"] += 1
        return web.json_response({"error": "not_found"}, status=404)

    def document(tenant: str) -> Handler:
        async def answer(request: web.Request) -> web.Response:
            request.app[STATS][f"metadata_{tenant}"] += 1
            return web.json_response(metadata(base, tenant))
        return answer

    def register(tenant: str) -> Handler:
        async def answer(request: web.Request) -> web.Response:
            wanted = await request.json()
            client_id = f"{tenant}-{secrets.token_hex(8)}"
            secret = secrets.token_urlsafe(24)
            request.app[CLIENTS][client_id] = secret
            request.app[STATS][f"registrations_{tenant}"] += 1
            body = {**wanted, "client_id": client_id, "client_secret": secret,
                    "client_id_issued_at": int(time.time()), "client_secret_expires_at": 0}
            body.setdefault("token_endpoint_auth_method", "client_secret_basic")
            return web.json_response(body, status=201)
        return answer

    def token(tenant: str) -> Handler:
        async def answer(request: web.Request) -> web.Response:
            await request.read()
            given = parse_basic(request.headers.get("Authorization", ""))
            if given is None or request.app[CLIENTS].get(given[0]) != given[1]:
                request.app[STATS][f"token_refused_{tenant}"] += 1
                return web.json_response({"error": "invalid_client"}, status=401)
            request.app[STATS][f"tokens_{tenant}"] += 1
            return web.json_response(TOKEN, headers={"Cache-Control": "no-store"})
        return answer

    async def stats(request: web.Request) -> web.Response:
        counts: collections.Counter[str] = request.app[STATS]
        return web.json_response(dict(counts))

    async def reset(request: web.Request) -> web.Response:
        request.app[STATS].clear()
        request.app[CLIENTS].clear()
        return web.json_response({})

    routes = [
        web.get("/.well-known/oauth-authorization-server/p", slow_404),
        web.get("/.well-known/openid-configuration/p", slow_404),
        web.get("/p/.well-known/openid-configuration", document("p")),
        web.get("/.well-known/oauth-authorization-server/q", document("q")),
        web.get("/.well-known/openid-configuration/q", fast_404),
        web.get("/q/.well-known/openid-configuration", fast_404),
        web.get("/__bench/stats", stats),
        web.post("/__bench/reset", reset),
    ]
    for tenant in ISSUERS:
        routes += [web.post(f"/{tenant}/register", register(tenant)),
                   web.post(f"/{tenant}/token", token(tenant))]
    app.add_routes(routes)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_as")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    web.run_app(create_app(args.port, args.delay), host="127.0.0.1", port=args.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
