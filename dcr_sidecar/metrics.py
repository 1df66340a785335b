"""Prometheus metrics (design.md §2.3 ``GET /metrics``), one registry per sidecar.

Invariants:
- Every metric lives in the :class:`Metrics` object's own ``CollectorRegistry``, never in the
  process-global one, so tests and several in-process sidecars never collide.
- Label values are bounded: ``upstream`` is a configured upstream name or ``unknown``; ``route``
  is a route template from the router (``/{name}/token``) or ``unknown``; ``endpoint``, ``outcome``
  and ``operation`` come from fixed tables in the code. Nothing a client sends becomes a label.
- Gauges that describe the resolver's state (secret expiry, backoff) are computed when scraped,
  from the live state, so they can never drift from it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNKNOWN = "unknown"
MAX_CACHED_SERIES = 4096  # the label sets are bounded anyway; this bounds the cache's keys
# Seconds; the sidecar's own work is fast, an AS call can take the whole `timeouts.total`.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)


class _PlainValue:
    """prometheus_client's value without its mutex: every recording runs on the event loop's
    thread (the request boundary, the forwarder, the resolver), and so does the scrape."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float) -> None:
        self.value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.value = value

    def get(self) -> float:
        return self.value

    def set_exemplar(self, exemplar: Any) -> None:  # no exemplars are recorded
        pass

    def get_exemplar(self) -> None:
        return None


class _Counter(Counter):
    """A Counter whose series count in a plain float; exposition is prometheus_client's own
    (``_total``, ``_created``)."""

    def _metric_init(self) -> None:
        super()._metric_init()
        self._value = _PlainValue()

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if exemplar is not None or amount < 0 or not self._labelvalues:
            super().inc(amount, exemplar)  # prometheus_client's checks and errors
            return
        self._value.value += amount


class _Histogram(Histogram):
    """A Histogram whose series keep plain floats and find their bucket by bisection
    (prometheus_client scans the bounds and takes a mutex per value); exposition is
    prometheus_client's own (cumulative ``_bucket``, ``_count``, ``_sum``, ``_created``)."""

    def _metric_init(self) -> None:
        super()._metric_init()
        self._sum = _PlainValue()
        self._buckets = [_PlainValue() for _ in self._upper_bounds]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar is not None or not self._labelvalues or amount != amount:  # noqa: PLR0124
            # prometheus_client's checks and errors; a NaN lands in no bucket
            super().observe(amount, exemplar)
            return
        self._sum.value += amount
        # The first bound >= amount: the bucket prometheus_client's scan picks (+Inf last).
        self._buckets[bisect_left(self._upper_bounds, amount)].value += 1


class HasClientId(Protocol):
    @property
    def client_id(self) -> str: ...


@dataclass(frozen=True)
class UpstreamGauges:
    """What the scrape-time collector reads from the resolver, per upstream."""

    name: str
    secret_expires_at: int | None  # None: no dynamic credentials held; 0: never expires
    backoff_active: bool
    mechanism: str | None = None  # static | cimd | dcr once resolved (design.md §3.11)
    generation: int | None = None  # the dynamic client generation served
    renew_at: float | None = None  # when renewal of the current secret starts (Unix time)


class _StateCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[UpstreamGauges]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        expiry = GaugeMetricFamily(
            "dcr_sidecar_client_secret_expiry_timestamp_seconds",
            "When the current client secret expires (Unix time; 0 = never), per upstream "
            "holding dynamic credentials.", labels=["upstream"])
        backoff = GaugeMetricFamily(
            "dcr_sidecar_backoff_active",
            "1 while the upstream's resolution is backing off after a failure.",
            labels=["upstream"])
        mechanism = GaugeMetricFamily(
            "dcr_sidecar_client_mechanism",
            "1 for the way the upstream's client was obtained: static, cimd or dcr.",
            labels=["upstream", "mechanism"])
        generation = GaugeMetricFamily(
            "dcr_sidecar_client_generation",
            "The client generation this replica serves, per upstream with dynamic credentials "
            "(replicas of one fleet agree within the staleness bound).", labels=["upstream"])
        renew_at = GaugeMetricFamily(
            "dcr_sidecar_client_secret_renew_at_timestamp_seconds",
            "When renewal of the current client secret starts (Unix time: expiry minus the "
            "renewal margin), per upstream whose secret expires.", labels=["upstream"])
        for gauges in self._source():
            if gauges.secret_expires_at is not None:
                expiry.add_metric([gauges.name], float(gauges.secret_expires_at))
            if gauges.generation is not None:
                generation.add_metric([gauges.name], float(gauges.generation))
            if gauges.renew_at is not None:
                renew_at.add_metric([gauges.name], gauges.renew_at)
            backoff.add_metric([gauges.name], 1.0 if gauges.backoff_active else 0.0)
            if gauges.mechanism is not None:
                mechanism.add_metric([gauges.name, gauges.mechanism], 1.0)
        yield expiry
        yield backoff
        yield mechanism
        yield generation
        yield renew_at

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    """The sidecar's metrics. ``Metrics(None)`` records into metrics no registry exports."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.registry = registry
        self._names: frozenset[str] = frozenset()
        # Label children per label tuple: .labels() validates and locks on every call.
        self._request_series: dict[tuple[str | None, str | None, int],
                                   tuple[Counter, Histogram]] = {}
        self.requests = _Counter(
            "dcr_sidecar_requests", "Requests answered, by upstream, route and status code.",
            ["upstream", "route", "code"], registry=registry)
        self.request_duration = _Histogram(
            "dcr_sidecar_request_duration_seconds", "Time to answer a request.",
            ["upstream", "route"], buckets=REQUEST_BUCKETS, registry=registry)
        self.upstream_call_duration = _Histogram(
            "dcr_sidecar_upstream_call_duration_seconds",
            "Time of one outbound call to an authorization server, by endpoint (the "
            "resolution step: discover, register, renew; or the token-like route forwarded).",
            ["upstream", "endpoint"], buckets=REQUEST_BUCKETS, registry=registry)
        self.registrations = Counter(
            "dcr_sidecar_registrations", "RFC 7591 registrations, by outcome.",
            ["upstream", "outcome"], registry=registry)
        self.renewals = Counter(
            "dcr_sidecar_renewals", "RFC 7592 renewals of an expiring client secret, by "
            "outcome (a failure keeps the current secret until it expires).",
            ["upstream", "outcome"], registry=registry)
        self.discoveries = Counter(
            "dcr_sidecar_discovery", "Metadata discoveries, by outcome.",
            ["upstream", "outcome"], registry=registry)
        self.store_errors = Counter(
            "dcr_sidecar_store_errors", "Credential store failures, by operation.",
            ["operation"], registry=registry)
        self.cimd_invalid_clients = Counter(
            "dcr_sidecar_cimd_invalid_client",
            "invalid_client answers the AS gave a CIMD client (relayed; nothing to re-register).",
            ["upstream"], registry=registry)
        self.client_id_changes = Counter(
            "dcr_sidecar_client_id_changes",
            "Times the client_id served for an upstream changed (a new client generation).",
            ["upstream"], registry=registry)

    @classmethod
    def create(cls) -> Metrics:
        return cls(CollectorRegistry(auto_describe=False))

    # ----------------------------------------------------------------- wiring

    def set_upstreams(self, names: Iterable[str]) -> None:
        """The configured upstream names: the only `upstream` label values besides unknown."""
        self._names = frozenset(names)
        self._request_series = {}  # a name may have become known or unknown

    def watch(self, source: Callable[[], Iterable[UpstreamGauges]]) -> None:
        """Export the resolver's state gauges, read from `source` at each scrape."""
        if self.registry is not None:
            self.registry.register(_StateCollector(source))

    def upstream_label(self, name: str | None) -> str:
        return name if name is not None and name in self._names else UNKNOWN

    def render(self) -> bytes:
        return generate_latest(self.registry) if self.registry is not None else b""

    # ----------------------------------------------------------------- request boundary

    def request(self, upstream: str | None, route: str | None, code: int,
                seconds: float) -> None:
        key = (upstream, route, code)
        series = self._request_series.get(key)
        if series is None:
            label = self.upstream_label(upstream)
            template = route or UNKNOWN
            series = (self.requests.labels(label, template, str(code)),
                      self.request_duration.labels(label, template))
            if len(self._request_series) >= MAX_CACHED_SERIES:
                self._request_series.clear()
            self._request_series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def upstream_call(self, upstream: str | None, endpoint: str, seconds: float) -> None:
        """One outbound call; `endpoint` is the resolution step or the route forwarded."""
        self.upstream_call_timer(upstream, endpoint).observe(seconds)

    def upstream_call_timer(self, upstream: str | None, endpoint: str) -> Histogram:
        """The duration series of (upstream, endpoint), for a caller that keeps it."""
        return self.upstream_call_duration.labels(self.upstream_label(upstream), endpoint)

    # ----------------------------------------------------------------- resolver events

    def registration(self, upstream: str, outcome: str) -> None:
        self.registrations.labels(self.upstream_label(upstream), outcome).inc()

    def renewal(self, upstream: str, outcome: str) -> None:
        self.renewals.labels(self.upstream_label(upstream), outcome).inc()

    def discovery(self, upstream: str, outcome: str) -> None:
        self.discoveries.labels(self.upstream_label(upstream), outcome).inc()

    def resolution_failed(self, upstream: str, step: str) -> None:
        """A failed resolution counts against the step that failed."""
        if step == "register":
            self.registration(upstream, "failure")
        elif step == "discover":
            self.discovery(upstream, "failure")

    def store_error(self, operation: str) -> None:
        self.store_errors.labels(operation).inc()

    def cimd_invalid_client(self, upstream: str) -> None:
        self.cimd_invalid_clients.labels(self.upstream_label(upstream)).inc()

    def client_id_seen(self, upstream: str, previous: HasClientId | None,
                       current: HasClientId) -> None:
        """Count a switch of client_id; the first one a process learns is no switch."""
        if previous is not None and previous.client_id != current.client_id:
            self.client_id_changes.labels(self.upstream_label(upstream)).inc()

