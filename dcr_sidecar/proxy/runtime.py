"""What every handler shares, behind one typed app key."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from dcr_sidecar import errors
from dcr_sidecar.config import LiveSettings, Settings, Upstream
from dcr_sidecar.forward import Forwarder
from dcr_sidecar.metrics import Metrics
from dcr_sidecar.net import Outbound
from dcr_sidecar.oauth.resource import ResourceMetadata
from dcr_sidecar.observability import Redactor
from dcr_sidecar.resolver import Resolver
from dcr_sidecar.store.flows import FlowStore


@dataclass
class Runtime:
    live: LiveSettings  # the process's one settings reference: `settings` reads it
    resolver: Resolver
    outbound: Outbound
    flows: FlowStore
    redactor: Redactor  # the process's: error descriptions and management answers
    metrics: Metrics = field(default_factory=lambda: Metrics(None))
    forwarder: Forwarder = field(init=False)  # the token-like routes' plans (forward.py)

    def __post_init__(self) -> None:
        self.forwarder = Forwarder(self.outbound, self.resolver)

    @property
    def settings(self) -> Settings:
        return self.live.current

    def upstream(self, name: str) -> Upstream:
        upstream = self.settings.upstream(name)
        if upstream is None:
            raise errors.NotFound(f"no upstream named {name!r} is configured")
        return upstream

    def resource_metadata(self, upstream: Upstream) -> ResourceMetadata | None:
        """The protected-resource metadata that named the AS (`resource` sources), once read."""
        fetch = self.resolver.snapshot(upstream.name).resource
        return fetch.metadata if fetch is not None else None

    def default_resource(self, upstream: Upstream) -> str | None:
        """The RFC 8707 `resource` added when the app named none (`resource_indicator`): the
        identifier the resource's metadata publishes (RFC 9728 §3.3; the configured URL, or
        its parent under the root-document relaxation of design.md §3.1), else the configured
        URL."""
        configured = upstream.default_resource
        prm = self.resource_metadata(upstream)
        return prm.resource if configured is not None and prm is not None else configured

    def resource_scopes(self, upstream: Upstream) -> tuple[str, ...] | None:
        prm = self.resource_metadata(upstream)
        return prm.scopes_supported if prm is not None else None

    def app_issuer(self, upstream: Upstream, as_issuer: str) -> str:
        """The issuer the app discovered: the AS's, or the sidecar's (`app_issuer`)."""
        if upstream.app_issuer == "sidecar":
            return self.settings.sidecar_issuer(upstream.name)
        return as_issuer


RUNTIME = web.AppKey("runtime", Runtime)
