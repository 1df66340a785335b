"""Configuration (d): the do-it-yourself baseline — the least an aiohttp developer would write.

One shared ClientSession; each POST is forwarded to one token endpoint with a fixed
``Authorization: Basic`` header; status, body and the caching headers come back. No
configuration, no validation, no logging, no error mapping: what the sidecar does beyond this
is what its extra cost buys.

    python -m bench.forwarder --port 8081 --upstream http://127.0.0.1:8082/token \
        --authorization 'Basic ...' [--loop uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)
RELAYED = ("Cache-Control", "Pragma")


def create_app(upstream: str, authorization: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[SESSION] = aiohttp.ClientSession()
        yield
        await app[SESSION].close()

    async def forward(request: web.Request) -> web.Response:
        headers = {"Authorization": authorization,
                   "Content-Type": request.headers.get("Content-Type", "")}
        async with request.app[SESSION].post(upstream, data=await request.read(),
                                             headers=headers) as resp:
            body = await resp.read()
            kept = {k: resp.headers[k] for k in RELAYED if k in resp.headers}
            return web.Response(status=resp.status, body=body, headers=kept,
                                content_type=resp.content_type)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.forwarder")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--authorization", required=True)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(create_app(args.upstream, args.authorization), host="127.0.0.1",
                port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
