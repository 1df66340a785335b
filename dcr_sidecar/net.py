"""The outbound HTTP client for all OAuth traffic: address policy, transport rules, read caps,
and the one place where foreign exceptions become sidecar errors.

Invariants:
- One pooled ``ClientSession`` per process, ``trust_env=False`` (no egress proxies in v1),
  connections capped per host:port (``limits.connections_per_upstream``).
- Redirects are never followed here; discovery follows them itself under its own rules.
- Every destination address is checked at dial time by :class:`PolicyResolver` (DNS answers)
  or :meth:`Outbound._check_destination` (IP literals, which aiohttp never resolves); the
  connection uses the address that was checked, so a rebinding DNS answer cannot swap it.
- Every body read is capped while reading.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDictProxy

from dcr_sidecar import errors
from dcr_sidecar.config import Settings
from dcr_sidecar.metrics import Metrics
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.addresses import IPNetwork, refusal
from dcr_sidecar.oauth.text import safe_url


class AddressRefused(OSError):
    """A destination address the policy forbids (raised inside the connector)."""

    def __init__(self, host: str, address: str, reason: str) -> None:
        super().__init__(f"{host} resolves to {address} ({reason}), which the policy forbids")
        self.reason = reason


def authority(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, the port made explicit."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


class AddressPolicy:
    """Which addresses may be dialled for which host:port (DESIGN §3.8).

    Private-network allow-listing applies only to configured authorities; a host:port that
    only a remote document named gets no exemptions.
    """

    def __init__(self, allowed: Sequence[IPNetwork], configured: set[tuple[str, int]]) -> None:
        self.allowed = tuple(allowed)
        self.configured = configured

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressPolicy:
        configured = set()
        for upstream in settings.upstreams:
            for url in upstream.configured_urls():
                _, host, port = authority(url)
                configured.add((host, port))
        return cls(settings.security.allow_private_networks, configured)

    def refusal(self, host: str, port: int, address: str) -> str | None:
        allowed = self.allowed if (host.lower(), port) in self.configured else ()
        return refusal(ipaddress.ip_address(address.split("%", 1)[0]), allowed)


class PolicyResolver(AbstractResolver):
    """Resolves with the default resolver, then drops every forbidden address."""

    def __init__(self, policy: AddressPolicy) -> None:
        self.policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if self.policy.refusal(host, port, r["host"]) is None]
        if not kept:
            first = results[0]["host"] if results else "?"
            reason = self.policy.refusal(host, port, first) if results else "no address"
            raise AddressRefused(host, first, reason or "refused")
        return kept

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(f"{safe_url(self.url)} answered HTTP {self.status} with a body "
                                "that is not JSON") from None


class Outbound:
    """The process's outbound client. Create with :meth:`start`, close with :meth:`close`."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics(None)
        self.policy = AddressPolicy.from_settings(settings)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        limits = self.settings.limits
        connector = aiohttp.TCPConnector(
            resolver=PolicyResolver(self.policy),
            limit=0,
            limit_per_host=limits.connections_per_upstream,
            ttl_dns_cache=10,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            auto_decompress=True,
            timeout=self._timeout(),
            headers={"User-Agent": "dcr-sidecar"},
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self) -> aiohttp.ClientTimeout:
        timeouts = self.settings.timeouts
        return aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read)

    def update(self, settings: Settings) -> None:
        """Apply a reloaded configuration: timeouts, limits on reads and the address policy
        take effect for the next request (the connection pool size needs a restart)."""
        self.settings = settings
        fresh = AddressPolicy.from_settings(settings)
        self.policy.allowed, self.policy.configured = fresh.allowed, fresh.configured

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Outbound.start() was not awaited")
        return self._session

    def check_url(self, url: str, *, step: errors.Step, upstream: str | None) -> None:
        """https only (or an allow_http host), and IP literals through the address policy."""
        scheme, host, port = authority(url)
        if scheme == "http" and host not in self.settings.security.allow_http:
            raise errors.PolicyRefused(
                f"refusing plain http to {safe_url(url)} (only security.allow_http hosts may "
                "use http)", step=step, upstream=upstream)
        if scheme not in ("http", "https") or not host:
            raise errors.PolicyRefused(f"refusing the URL {safe_url(url)}", step=step,
                                       upstream=upstream)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return
        reason = self.policy.refusal(host, port, host)
        if reason is not None:
            raise errors.PolicyRefused(
                f"refusing {safe_url(url)}: {host} is a {reason} address and not allowed for "
                "this authority", step=step, upstream=upstream)

    async def request(
        self,
        method: str,
        url: str,
        *,
        step: errors.Step,
        upstream: str | None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        json_body: object = None,
        limit: int | None = None,
        error_limit: int | None = None,
    ) -> Response:
        """One request, no redirects; the body is read up to `limit` (or `error_limit` for
        4xx/5xx answers) and the request fails beyond it."""
        self.check_url(url, step=step, upstream=upstream)
        limits = self.settings.limits
        started = time.perf_counter()
        try:
            with self.translate(step=step, upstream=upstream, url=url):
                async with self.session.request(
                    method, url, headers=headers, data=data, json=json_body,
                    allow_redirects=False, timeout=self._timeout(),
                ) as resp:
                    cap = (limit or limits.max_response_bytes) if resp.status < 400 else (
                        error_limit or limits.max_error_body_bytes)
                    body = await read_capped(resp, cap, url, step=step, upstream=upstream)
                    return Response(resp.status, resp.headers, body, url)
        finally:
            self.metrics.upstream_call(upstream, step, time.perf_counter() - started)

    @contextlib.contextmanager
    def translate(self, *, step: errors.Step, upstream: str | None, url: str) -> Iterator[None]:
        """Foreign exceptions -> sidecar errors, always chained (``raise ... from``)."""
        shown = safe_url(url)
        try:
            yield
        except errors.SidecarError:
            raise
        except aiohttp.ClientConnectorDNSError as exc:
            if isinstance(exc.os_error, AddressRefused):
                raise errors.PolicyRefused(f"refusing {shown}: {exc.os_error}", step=step,
                                           upstream=upstream) from exc
            raise errors.Unavailable(f"cannot resolve the host of {shown}", step=step,
                                     upstream=upstream) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise errors.UpstreamTimeout(f"{shown} did not answer in time", step=step,
                                         upstream=upstream) from exc
        except aiohttp.InvalidURL as exc:
            raise errors.BadUpstream(f"invalid URL {shown}", step=step,
                                     upstream=upstream) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise errors.Unavailable(f"cannot reach {shown}: {type(exc).__name__}", step=step,
                                     upstream=upstream) from exc


class BodyTooLarge(errors.BadUpstream):
    pass


async def read_capped(
    resp: aiohttp.ClientResponse, cap: int, url: str, *, step: errors.Step = "forward",
    upstream: str | None = None,
) -> bytes:
    """Read at most `cap` bytes; fail as soon as the body goes beyond (never buffer it whole)."""
    declared = resp.content_length
    if declared is not None and declared > cap:
        raise BodyTooLarge(f"{safe_url(url)} announced a {declared}-byte body; the limit is "
                           f"{cap}", step=step, upstream=upstream)
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.content.read(min(65536, cap + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(f"{safe_url(url)} sent more than {cap} bytes", step=step,
                               upstream=upstream)
        chunks.append(chunk)

