"""What every handler shares, behind one typed app key."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from dcr_sidecar import errors
from dcr_sidecar.config import Settings, Upstream
from dcr_sidecar.metrics import Metrics
from dcr_sidecar.net import Outbound
from dcr_sidecar.resolver import Resolver
from dcr_sidecar.store.flows import FlowStore


@dataclass
class Runtime:
    settings: Settings
    resolver: Resolver
    outbound: Outbound
    flows: FlowStore
    metrics: Metrics = field(default_factory=lambda: Metrics(None))

    def upstream(self, name: str) -> Upstream:
        upstream = self.settings.upstream(name)
        if upstream is None:
            raise errors.NotFound(f"no upstream named {name!r} is configured")
        return upstream

    def app_issuer(self, upstream: Upstream, as_issuer: str) -> str:
        """The issuer the app discovered: the AS's, or the sidecar's (`app_issuer`)."""
        if upstream.app_issuer == "sidecar":
            return self.settings.sidecar_issuer(upstream.name)
        return as_issuer


RUNTIME = web.AppKey("runtime", Runtime)
