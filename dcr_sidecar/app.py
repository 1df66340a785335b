"""Assembling the service: the back-channel app, the management app, and their lifetime.

:class:`Sidecar` owns the process's resources — the metrics registry, the outbound session, the
store, the resolver — and tears them down in reverse order. Tests start it in-process on port 0.

Invariants (design.md §3.10):
- ``stop()`` first stops accepting on every listener, then waits for in-flight requests up to
  ``shutdown.grace`` (the value in force at that moment), then closes.
- ``reload()`` swaps the one settings reference (``LiveSettings``, read by the Sidecar, the
  Runtime, the resolver and the outbound client) in one assignment, to a complete validated
  object in which the restart-only keys keep their running values.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import structlog
from aiohttp import web
from aiohttp.abc import AbstractResolver
from pydantic import ValidationError

from dcr_sidecar import errors
from dcr_sidecar.clock import Clock
from dcr_sidecar.config import NAME_PATTERN, LiveSettings, Settings, Upstream, validation_messages
from dcr_sidecar.errors import ConfigError
from dcr_sidecar.front_tls import FrontTls
from dcr_sidecar.listeners import ListenerRunner, handler_args
from dcr_sidecar.management import redacted
from dcr_sidecar.management import routes as management_routes
from dcr_sidecar.metrics import Metrics, UpstreamGauges
from dcr_sidecar.net import Outbound
from dcr_sidecar.observability import Redactor, set_level
from dcr_sidecar.proxy import authorize, callback, cimd, metadata, token
from dcr_sidecar.proxy.boundary import InFlight, boundary, counted_boundary
from dcr_sidecar.proxy.runtime import RUNTIME, Runtime
from dcr_sidecar.resolver import MAX_RECORD_AGE, Resolver
from dcr_sidecar.store import CredentialStore, open_store
from dcr_sidecar.store.flows import BoundedFlowStore, FlowCache, FlowStore

log = structlog.get_logger(__name__)
NAME = f"{{name:{NAME_PATTERN}}}"
# design.md §2.2: these need a restart; everything else is applied by a reload.
RESTART_KEYS = ("listen", "front", "management", "store", "public_base_url",
                "backchannel_base_url")


def create_app(runtime: Runtime, in_flight: InFlight | None = None) -> web.Application:
    """The back-channel (and, without `front`, front-channel) application."""
    app = web.Application(middlewares=[counted_boundary(in_flight)],
                          client_max_size=runtime.settings.limits.max_request_bytes)
    app[RUNTIME] = runtime
    app.add_routes([
        # The token-like routes first: aiohttp tries dynamic resources in order, and these
        # are the hot path.
        *(web.post(f"/{NAME}/{route}", token.handler(route)) for route in token.ROUTES),
        web.get(f"/{NAME}/authorize", authorize.authorize),
        web.get(f"/{NAME}/callback", callback.callback),
        *(cimd_routes() if runtime.settings.front is None else ()),
        web.get(f"/{NAME}/client", metadata.client),
        web.get(f"/{NAME}/.well-known/openid-configuration", metadata.metadata),
        web.get(f"/{NAME}/.well-known/oauth-authorization-server", metadata.metadata),
        web.get(f"/.well-known/oauth-authorization-server/{NAME}", metadata.metadata),
    ])
    return app


def cimd_routes() -> list[web.RouteDef]:
    """The public CIMD documents (design.md §3.11): on `front` when set, else on `listen`."""
    return [web.get(f"/{NAME}/client-metadata.json", cimd.document),
            web.get(f"/{NAME}/jwks.json", cimd.jwks)]


def front_routes() -> list[web.RouteDef]:
    """The browser-facing routes (design.md §2.3 front channel), nothing else."""
    return [web.get(f"/{NAME}/authorize", authorize.authorize),
            web.get(f"/{NAME}/callback", callback.callback), *cimd_routes()]


def create_front_app(runtime: Runtime, in_flight: InFlight | None = None) -> web.Application:
    """The `front` listener's application: only the front-channel routes, no request body."""
    app = web.Application(middlewares=[counted_boundary(in_flight)], client_max_size=1024)
    app[RUNTIME] = runtime
    app.add_routes(front_routes())
    return app


def create_management_app(runtime: Runtime,
                          in_flight: InFlight | None = None) -> web.Application:
    """Every answer, the boundary's errors included, leaves through `redacted`."""
    middlewares = [redacted, boundary] if in_flight is None else [in_flight.middleware,
                                                                   redacted, boundary]
    app = web.Application(middlewares=middlewares)
    app[RUNTIME] = runtime
    app.add_routes(management_routes())
    return app


@dataclass
class Bound:
    host: str
    port: int
    scheme: str = "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


@dataclass
class ReloadResult:
    changed: list[str] = field(default_factory=list)  # top-level keys applied
    restart_required: list[str] = field(default_factory=list)  # changed, kept until restart
    added: list[str] = field(default_factory=list)  # upstream names
    updated: list[str] = field(default_factory=list)  # configuration changed: state afresh
    removed: list[str] = field(default_factory=list)


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    keys = [key for key in RESTART_KEYS if getattr(old, key) != getattr(new, key)]
    if old.log.format != new.log.format:
        keys.append("log.format")
    # Applied for what the sidecar checks itself, but sized into aiohttp at start:
    if new.limits.max_header_bytes > old.limits.max_header_bytes:
        keys.append("limits.max_header_bytes")  # the HTTP parser's own limit (only raising)
    return keys


def combine(old: Settings, new: Settings) -> Settings:
    """`new` with the restart-only keys of the running `old`, validated as a whole (so e.g.
    a kept non-loopback listener still demands inbound credentials)."""
    fields = dict(new)  # shallow: nested models and Secret values stay as they are
    fields.update({key: getattr(old, key) for key in RESTART_KEYS})
    fields["log"] = new.log.model_copy(update={"format": old.log.format})
    try:
        return Settings.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(validation_messages(exc, fields))
        raise ConfigError("the new configuration does not fit the settings that need a "
                          f"restart (kept from the running one): {problems}") from None


def _flow_store(store: CredentialStore) -> FlowStore:
    """Callback-mediation records live in Redis with the redis store (any replica finishes a
    login), else in process memory (a single process finishes its own flows)."""
    if store.name == "redis":
        from dcr_sidecar.store.redis import RedisStore, flow_cache

        assert isinstance(store, RedisStore)
        return flow_cache(store)
    return FlowCache.in_memory()


def _bounded(settings: Settings, flows: FlowStore) -> FlowStore:
    """Every flow store behind the budget of `limits` (store/flows.py)."""
    limits = settings.limits
    return BoundedFlowStore(flows, max_entries=limits.flow_records,
                            max_bytes=limits.flow_record_bytes,
                            per_client=limits.flow_records_per_client)


class Sidecar:
    """One sidecar process: start() binds the listeners, stop() drains and closes."""

    def __init__(self, settings: Settings, store: CredentialStore | None = None,
                 flows: FlowStore | None = None,
                 resolver: AbstractResolver | None = None, *, redactor: Redactor,
                 clock: Clock | None = None, max_record_age: float = MAX_RECORD_AGE) -> None:
        """`resolver` is for tests only: the name resolver under the address policy.
        `redactor` is the process's, the one its logging renders through (cli.py). `clock` and
        `max_record_age` are the credential resolver's (tests: a hand-moved clock, a lower
        staleness bound); the service keeps the real clock and the default."""
        self.redactor = redactor
        redactor.remember_settings(settings)
        self.live = LiveSettings(settings)  # the one reference every part reads
        self.metrics = Metrics.create()
        self.metrics.set_upstreams(u.name for u in settings.upstreams)
        self.outbound = Outbound(self.live, self.metrics, resolver)
        self.store = store or open_store(settings.store)
        self.resolver = Resolver(self.live, self.outbound, self.store, redactor=redactor,
                                 metrics=self.metrics, clock=clock,
                                 max_record_age=max_record_age)
        self.runtime = Runtime(self.live, self.resolver, self.outbound,
                               _bounded(settings, flows if flows is not None
                                        else _flow_store(self.store)),
                               redactor, self.metrics)
        self.metrics.watch(self._gauges)
        self.in_flight = InFlight()
        self._runners: list[web.AppRunner] = []
        self._adopted_port: int | None = None
        self._background: list[asyncio.Task[None]] = []
        self.listen = Bound(settings.listen.host, settings.listen.port)
        self.management = Bound(settings.management.host, settings.management.port)
        self.front: Bound | None = None
        self.tls: FrontTls | None = None

    @property
    def settings(self) -> Settings:
        """The settings in force (read through the one reference)."""
        return self.live.current

    def _put_in_force(self, settings: Settings) -> None:
        """The outbound client adjusts (comparing with the settings in force), then the one
        reference is swapped: no await in between, so no request sees a mix."""
        self.outbound.update(settings)
        self.live.current = settings

    async def start(self) -> None:
        await self.outbound.start()
        try:
            await self.store.open()  # a wrong encryption key stops here, having changed nothing
            self.listen = await self._serve(create_app(self.runtime, self.in_flight),
                                            self.settings.listen.host, self.settings.listen.port,
                                            key="listen")
            await self._serve_front()
            self.management = await self._serve(create_management_app(self.runtime,
                                                                      self.in_flight),
                                                self.settings.management.host,
                                                self.settings.management.port, key="management")
        except BaseException:
            await self.stop()
            raise
        # Port 0 (tests) is only known once bound.
        if self.settings.listen.port == 0:
            self._adopt_port(self.listen.port)
        self._start_prefetch(self.settings.upstreams)
        self._start_cimd_keys(self.settings.upstreams)
        if self.settings.inbound.allow_unauthenticated and self.settings.inbound.client_secret \
                is None:
            log.warning("inbound_unauthenticated", listen=self.listen.url,
                        detail="inbound.allow_unauthenticated is true: anyone who can reach the "
                               "back channel can use the app's client credentials")
        log.info("sidecar_started", listen=self.listen.url, management=self.management.url,
                 front=self.front.url if self.front else None,
                 upstreams=[u.name for u in self.settings.upstreams], store=self.store.name)

    async def _serve_front(self) -> None:
        front = self.settings.front
        if front is None:
            return
        if front.tls is not None:
            self.tls = FrontTls(front.tls)
        self.front = await self._serve(create_front_app(self.runtime, self.in_flight),
                                       front.host, front.port, key="front",
                                       ssl_context=self.tls.context if self.tls else None)
        if front.port == 0 and not self.settings.public_base_url:
            # Port 0 (tests): the default public base URL derives from the bound port.
            self._put_in_force(self.settings.model_copy(update={"front": front.model_copy(
                update={"port": self.front.port})}))

    def _start_cimd_keys(self, upstreams: Iterable[Upstream]) -> None:
        """Key sets of `registration: cimd` upstreams are made at start-up (under the lock/lease),
        so the JWKS exists before any AS asks for it; a failure is logged and retried by the
        first request. Under `auto` they are made when CIMD is chosen or the JWKS is asked for."""
        async def make(name: str) -> None:
            try:
                await self.resolver.cimd_jwks(name)
            except errors.SidecarError as exc:
                log.warning("cimd_keys_not_ready", upstream=name, detail=exc.description)

        for upstream in upstreams:
            if upstream.registration == "cimd" and upstream.cimd.auth_method == "private_key_jwt":
                self._background.append(asyncio.create_task(make(upstream.name)))

    def _adopt_port(self, port: int) -> None:
        """Port 0 (tests) is only known once bound; the default base URLs, and the callback
        URI registered from them, derive from it, so every part gets the bound port."""
        self._adopted_port = port
        self._put_in_force(self.settings.model_copy(
            update={"listen": self.settings.listen.model_copy(update={"port": port})}))

    def _start_prefetch(self, upstreams: Iterable[Upstream]) -> None:
        """Prefetch (for `prefetch`/`required`) and background maintenance per upstream."""
        for upstream in upstreams:
            if upstream.prefetch or upstream.required:
                self._background.append(asyncio.create_task(self._prefetch(upstream.name)))
            self._background.append(asyncio.create_task(self.resolver.maintain(upstream.name)))

    def _gauges(self) -> Iterator[UpstreamGauges]:
        for name in self.resolver.names():
            snap = self.resolver.snapshot(name)
            creds = snap.credentials
            dynamic = creds is not None and creds.mechanism == "dcr"
            yield UpstreamGauges(
                name=name,
                secret_expires_at=creds.expires_at if creds and dynamic else None,
                backoff_active=snap.backing_off, mechanism=snap.mechanism,
                generation=creds.generation if creds and dynamic else None,
                renew_at=snap.renew_at if dynamic else None)

    async def _serve(self, app: web.Application, host: str, port: int, *, key: str,
                     ssl_context: ssl.SSLContext | None = None) -> Bound:
        # In-flight requests are awaited by stop() itself (with the grace in force then);
        # the runner's own timeout only bounds the cancellation of what is left after that.
        runner = ListenerRunner(app, deadlines=lambda: self.settings.timeouts,
                                access_log=None, shutdown_timeout=1.0,
                                **handler_args(self.settings))
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:  # say which setting: "address already in use" alone names none
            raise OSError(exc.errno, f"cannot listen on {host}:{port} ({key}.host / {key}.port): "
                                     f"{exc.strerror or exc}") from exc
        server = site._server  # the bound socket tells the real port when 0 was asked for
        sockets = getattr(server, "sockets", None) or []
        bound_port = sockets[0].getsockname()[1] if sockets else port
        return Bound(host, bound_port, "https" if ssl_context is not None else "http")

    async def _prefetch(self, name: str) -> None:
        """Resolve at start-up; on failure, retry when the backoff ends (never crash); stop
        when a reload removed the upstream."""
        while name in self.resolver.names():
            try:
                await self.resolver.credentials(name)
                return
            except Exception:  # the resolver logged and typed it already
                if name in self.resolver.names():
                    await self.resolver.wait_backoff(name)

    def reload(self, new: Settings) -> ReloadResult:
        """Apply what design.md §2.2 lists as reloadable; raise ConfigError (and change
        nothing) when `new` cannot be combined with the running restart-only settings."""
        old = self.settings
        if self._adopted_port is not None and new.listen.port == 0:
            # Port 0 was bound to a real port at start; the file still says 0: no change.
            new = new.model_copy(update={"listen": new.listen.model_copy(
                update={"port": self._adopted_port})})
        applied = combine(old, new)
        result = ReloadResult(
            changed=[k for k in Settings.model_fields
                     if k not in RESTART_KEYS and getattr(old, k) != getattr(applied, k)],
            restart_required=restart_only_changes(old, new),
            added=[u.name for u in applied.upstreams if old.upstream(u.name) is None],
            updated=[u.name for u in applied.upstreams
                     if old.upstream(u.name) not in (None, u)],
            removed=[u.name for u in old.upstreams if applied.upstream(u.name) is None])
        self.metrics.set_upstreams(u.name for u in applied.upstreams)
        self.redactor.remember_settings(applied)  # before anything can log the new secrets
        fresh = set(self.resolver.reload(applied))
        if applied.log.level != old.log.level:
            set_level(applied.log.level)
        self._put_in_force(applied)  # one assignment: handlers see old or new, never a mix
        # New and changed upstreams start afresh: resolve those marked prefetch/required now
        # (from the store when their registration is unaffected), so readiness recovers.
        self._start_prefetch([u for u in applied.upstreams if u.name in fresh])
        return result

    @property
    def ephemeral(self) -> bool:
        """Storage that dies with the process: delete our own clients on clean shutdown."""
        return self.settings.store.ephemeral or self.settings.store.backend == "memory"

    async def stop(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        # Stop accepting everywhere first, then drain what is in flight (design.md §3.10).
        for runner in self._runners:
            for site in list(runner.sites):
                await site.stop()
        grace = self.settings.shutdown.grace
        log.info("shutdown_draining", in_flight=self.in_flight.count, grace_s=grace)
        if not await self.in_flight.wait_idle(grace):
            log.warning("shutdown_grace_expired", grace_s=grace, in_flight=self.in_flight.count)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self.ephemeral:
            await self.resolver.delete_own_clients()
        await self.resolver.close()
        await self.outbound.close()
        with contextlib.suppress(Exception):
            await self.store.close()
