"""Assembling the service: the back-channel app, the management app, and their lifetime.

:class:`Sidecar` owns the process's resources — the outbound session, the store, the resolver —
and tears them down in reverse order. Tests start it in-process on port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from dcr_sidecar.config import Settings
from dcr_sidecar.management import routes as management_routes
from dcr_sidecar.net import Outbound
from dcr_sidecar.proxy import authorize, metadata, token
from dcr_sidecar.proxy.boundary import boundary
from dcr_sidecar.proxy.runtime import RUNTIME, Runtime
from dcr_sidecar.resolver import Resolver, wait_backoff
from dcr_sidecar.store import CredentialStore, open_store

log = structlog.get_logger(__name__)
NAME = "{name:[a-z0-9][a-z0-9-]{0,62}}"


def create_app(runtime: Runtime) -> web.Application:
    """The back-channel (and, without `front`, front-channel) application."""
    app = web.Application(middlewares=[boundary],
                          client_max_size=runtime.settings.limits.max_request_bytes)
    app[RUNTIME] = runtime
    app.add_routes([
        web.get(f"/{NAME}/authorize", authorize.authorize),
        web.get(f"/{NAME}/client", metadata.client),
        web.get(f"/{NAME}/.well-known/openid-configuration", metadata.metadata),
        web.get(f"/{NAME}/.well-known/oauth-authorization-server", metadata.metadata),
        web.get(f"/.well-known/oauth-authorization-server/{NAME}", metadata.metadata),
        *(web.post(f"/{NAME}/{route}", token.handler(route)) for route in token.ROUTES),
    ])
    return app


def create_management_app(runtime: Runtime) -> web.Application:
    app = web.Application(middlewares=[boundary])
    app[RUNTIME] = runtime
    app.add_routes(management_routes())
    return app


def _handler_args(settings: Settings) -> dict[str, Any]:
    # aiohttp's own parser limits sit above ours so the sidecar's JSON 431 answers first.
    size = settings.limits.max_header_bytes + 1024
    return {"max_line_size": size, "max_field_size": size, "max_headers": 256}


@dataclass
class Bound:
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class Sidecar:
    """One sidecar process: start() binds the listeners, stop() drains and closes."""

    def __init__(self, settings: Settings, store: CredentialStore | None = None) -> None:
        self.settings = settings
        self.outbound = Outbound(settings)
        self.store = store or open_store(settings.store)
        self.resolver = Resolver(settings, self.outbound, self.store)
        self.runtime = Runtime(settings, self.resolver, self.outbound,
                               settings.public_base, settings.backchannel_base)
        self._runners: list[web.AppRunner] = []
        self._background: list[asyncio.Task[None]] = []
        self.listen = Bound(settings.listen.host, settings.listen.port)
        self.management = Bound(settings.management.host, settings.management.port)

    @property
    def ephemeral(self) -> bool:
        """Storage that dies with the process: delete our own clients on clean shutdown."""
        return self.settings.store.ephemeral or self.settings.store.backend == "memory"

    async def start(self) -> None:
        await self.outbound.start()
        try:
            await self.store.open()  # a wrong encryption key stops here, having changed nothing
            self.listen = await self._serve(create_app(self.runtime), self.settings.listen.host,
                                            self.settings.listen.port)
            self.management = await self._serve(create_management_app(self.runtime),
                                                self.settings.management.host,
                                                self.settings.management.port)
        except BaseException:
            await self.stop()
            raise
        # Port 0 (tests) is only known once bound.
        if self.settings.listen.port == 0:
            if not self.settings.public_base_url:
                self.runtime.public_base = f"http://127.0.0.1:{self.listen.port}"
            if not self.settings.backchannel_base_url:
                self.runtime.backchannel_base = f"http://127.0.0.1:{self.listen.port}"
        for upstream in self.settings.upstreams:
            if upstream.prefetch or upstream.required:
                self._background.append(asyncio.create_task(self._prefetch(upstream.name)))
            self._background.append(asyncio.create_task(self.resolver.maintain(upstream.name)))
        log.info("sidecar_started", listen=self.listen.url, management=self.management.url,
                 upstreams=[u.name for u in self.settings.upstreams], store=self.store.name)

    async def _serve(self, app: web.Application, host: str, port: int) -> Bound:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.settings.shutdown.grace,
                               **_handler_args(self.settings))
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server  # the bound socket tells the real port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else port
        return Bound(host, bound_port)

    async def _prefetch(self, name: str) -> None:
        """Resolve at start-up; on failure, retry when the backoff ends (never crash)."""
        while True:
            try:
                await self.resolver.credentials(name)
                return
            except Exception:  # the resolver logged and typed it already
                await wait_backoff(self.resolver.state(name))

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.ephemeral:
            await self.resolver.delete_own_clients()
        await self.resolver.close()
        await self.outbound.close()
        with contextlib.suppress(Exception):
            await self.store.close()
