"""Discovery I/O (design.md §3.1): probe candidates, apply the pure rules, record every answer.

``serve`` takes the first valid document to arrive and cancels the other probes (but awaits them
when the winner lacks ``registration_endpoint`` and DCR is needed); ``doctor`` awaits all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

from dcr_sidecar import errors
from dcr_sidecar.config import Upstream
from dcr_sidecar.net import Outbound, Response, authority
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.metadata import (
    IssuerMismatch,
    Metadata,
    cache_lifetime,
    issuer_candidates,
    issuer_from_discovery_url,
    validate_metadata,
)
from dcr_sidecar.oauth.resource import (
    ResourceMetadata,
    resource_candidates,
    validate_resource_metadata,
)
from dcr_sidecar.oauth.retry import parse_retry_after
from dcr_sidecar.oauth.text import clean_text, safe_url
from dcr_sidecar.oauth.www_authenticate import parse_www_authenticate, resource_metadata_url

MAX_REDIRECTS = 5


@dataclass
class Attempt:
    """One candidate URL and what became of it (shown by `doctor` and in error messages)."""

    url: str
    outcome: str = "pending"  # used | valid | skipped | failed | cancelled
    status: int | None = None
    detail: str = ""
    transient: bool = False
    timed_out: bool = False
    retry_after: float | None = None
    certificate: bool = False  # the host's TLS certificate failed verification

    def report(self) -> dict[str, object]:
        return {"url": safe_url(self.url), "outcome": self.outcome, "status": self.status,
                "detail": self.detail}

    def line(self) -> str:
        status = f"HTTP {self.status}" if self.status is not None else "no answer"
        return f"{safe_url(self.url)} -> {self.outcome} ({status}{': ' if self.detail else ''}" \
               f"{self.detail})"


@dataclass
class DiscoveryResult:
    metadata: Metadata
    source_url: str | None
    ttl: float
    attempts: list[Attempt] = field(default_factory=list)


class Discoverer:
    def __init__(self, outbound: Outbound) -> None:
        self.outbound = outbound

    async def discover(self, upstream: Upstream, *, need_registration: bool,
                       await_all: bool = False) -> DiscoveryResult:
        if upstream.endpoints is not None:
            assert upstream.issuer is not None  # config validation guarantees it
            meta = Metadata(upstream.issuer, upstream.endpoints.as_metadata(upstream.issuer))
            return DiscoveryResult(meta, None, float("inf"))
        if upstream.discovery_url is not None:
            expected = upstream.issuer or issuer_from_discovery_url(upstream.discovery_url)
            return await self._probe_all(upstream, [upstream.discovery_url], expected,
                                         need_registration, await_all=True)
        if upstream.resource is not None:
            return await self._via_resource(upstream, upstream.resource, need_registration,
                                            await_all)
        assert upstream.issuer is not None
        return await self._probe_all(upstream, issuer_candidates(upstream.issuer),
                                     upstream.issuer, need_registration, await_all)

    # ------------------------------------------------------------------ RFC 9728

    async def _via_resource(self, upstream: Upstream, resource: str, need_registration: bool,
                            await_all: bool) -> DiscoveryResult:
        """The resource names its AS (RFC 9728); the first AS whose metadata validates wins."""
        attempts: list[Attempt] = []
        prm = await self._resource_metadata(upstream, resource, attempts)
        if upstream.issuer is not None:
            if upstream.issuer not in prm.authorization_servers:
                named = ", ".join(map(clean_text, prm.authorization_servers))
                raise errors.DiscoveryFailed(
                    f"the pinned issuer {upstream.issuer!r} is not among the resource's "
                    f"authorization_servers ({named})", step="discover", upstream=upstream.name)
            issuers = [upstream.issuer]
        else:
            issuers = list(prm.authorization_servers)
        failures: list[str] = []
        for issuer in issuers[:5]:
            try:
                result = await self._probe_all(upstream, issuer_candidates(issuer), issuer,
                                               need_registration, await_all)
            except errors.UpstreamError as exc:
                failures.append(exc.description)
                continue
            result.attempts[:0] = attempts
            return result
        raise errors.DiscoveryFailed(
            f"no authorization server named by {safe_url(resource)} validated: "
            f"{' | '.join(failures)}", step="discover", upstream=upstream.name)

    async def _resource_metadata(self, upstream: Upstream, resource: str,
                                 attempts: list[Attempt]) -> ResourceMetadata:
        candidates: list[tuple[str, bool]] = []
        header_url = await self._challenge_url(upstream, resource, attempts)
        if header_url is not None:
            candidates.append((header_url, True))
        else:
            wanted = resource_candidates(resource)
            # The path-inserted document must name the resource exactly (RFC 9728 §3.3); the
            # root document may name a parent (the MCP-compatible relaxation, documented).
            candidates += [(url, index == 0 and len(wanted) > 1) for index, url in
                           enumerate(wanted)]
        for url, exact in candidates:
            attempt = Attempt(url)
            attempts.append(attempt)
            try:
                response = await self._get_following(upstream, attempt)
            except errors.UpstreamError as exc:
                attempt.outcome, attempt.detail = "failed", exc.description
                attempt.transient = not isinstance(exc, errors.PolicyRefused)
                continue
            attempt.status = response.status
            if response.status != 200:
                attempt.outcome = "skipped"
                continue
            try:
                prm = validate_resource_metadata(response.json(), resource, exact=exact)
            except ProtocolError as exc:
                attempt.outcome, attempt.detail = "skipped", exc.reason
                continue
            attempt.outcome = "used"
            return prm
        raise self._failure(upstream, attempts, f"protected resource {resource}")

    async def _challenge_url(self, upstream: Upstream, resource: str,
                             attempts: list[Attempt]) -> str | None:
        """GET the resource; a 401 may name its metadata in WWW-Authenticate (RFC 9728 §5.1)."""
        attempt = Attempt(resource)
        attempts.append(attempt)
        try:
            response = await self.outbound.request("GET", resource, step="discover",
                                                   upstream=upstream.name)
        except errors.UpstreamError as exc:
            attempt.outcome, attempt.detail = "failed", exc.description
            return None
        attempt.status = response.status
        challenges = []
        for value in response.headers.getall("WWW-Authenticate", []):
            try:
                challenges += parse_www_authenticate(value)
            except ProtocolError as exc:
                attempt.detail = exc.reason
        url = resource_metadata_url(challenges) if response.status == 401 else None
        attempt.outcome = "used" if url else "skipped"
        if url:
            attempt.detail = f"WWW-Authenticate names {safe_url(url)}"
            return urljoin(resource, url)
        return None

    async def _probe_all(self, upstream: Upstream, urls: list[str], expected: str,
                         need_registration: bool, await_all: bool) -> DiscoveryResult:
        attempts = [Attempt(url) for url in urls]
        tasks = [asyncio.create_task(self._probe(upstream, a, expected)) for a in attempts]
        winner: tuple[Attempt, Metadata, float] | None = None
        fallback: tuple[Attempt, Metadata, float] | None = None
        try:
            for next_done in asyncio.as_completed(tasks):
                found = await next_done
                if found is None:
                    continue
                if not need_registration or found[1].registration_endpoint:
                    # serve: the first to arrive; doctor (await_all): the first in order.
                    if winner is None or urls.index(found[0].url) < urls.index(winner[0].url):
                        winner = found
                    if not await_all:
                        break
                elif fallback is None or urls.index(found[0].url) < urls.index(fallback[0].url):
                    fallback = found
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for attempt in attempts:
                if attempt.outcome == "pending":
                    attempt.outcome = "cancelled"
        chosen = winner or fallback
        if chosen is None:
            raise self._failure(upstream, attempts, expected)
        chosen[0].outcome = "used"
        return DiscoveryResult(chosen[1], chosen[0].url, chosen[2], attempts)

    async def _probe(self, upstream: Upstream, attempt: Attempt,
                     expected: str) -> tuple[Attempt, Metadata, float] | None:
        try:
            response = await self._get_following(upstream, attempt)
        except errors.BadUpstream as exc:  # refused, too many redirects, body over the cap
            attempt.outcome, attempt.detail = "failed", exc.description
            attempt.certificate = isinstance(exc, errors.CertificateRejected)
            return None
        except errors.UpstreamError as exc:
            attempt.outcome, attempt.detail = "failed", exc.description
            attempt.transient = isinstance(exc, errors.Unavailable)
            attempt.timed_out = isinstance(exc, errors.UpstreamTimeout)
            return None
        attempt.status = response.status
        if response.status != 200:
            attempt.outcome = "skipped"
            attempt.transient = response.status in (408, 425, 429) or response.status >= 500
            attempt.retry_after = parse_retry_after(response.headers.get("Retry-After"),
                                                    time.time())
            return None
        try:
            meta = validate_metadata(response.json(), expected, source=response.url)
        except IssuerMismatch as exc:
            attempt.outcome, attempt.detail = "skipped", exc.reason
            return None
        except ProtocolError as exc:
            attempt.outcome, attempt.detail = "skipped", exc.reason
            return None
        attempt.outcome = "valid"
        settings = self.outbound.settings.discovery
        ttl = cache_lifetime(response.headers.get("Cache-Control"), min_ttl=settings.min_ttl,
                             max_ttl=settings.cache_ttl)
        return attempt, meta, ttl

    async def _get_following(self, upstream: Upstream, attempt: Attempt) -> Response:
        """GET with discovery's redirect rules: same origin, at most 5, never https->http."""
        url = attempt.url
        for _ in range(MAX_REDIRECTS + 1):
            response = await self.outbound.request(
                "GET", url, step="discover", upstream=upstream.name,
                headers={"Accept": "application/json"})
            if response.status not in (301, 302, 303, 307, 308):
                return response
            location = response.headers.get("Location")
            if not location:
                return response
            target = urljoin(url, location)
            if not _same_origin(target, url):  # same scheme too: never https -> http
                raise errors.PolicyRefused(
                    f"discovery redirect from {safe_url(url)} to another origin "
                    f"({safe_url(target)}) refused", step="discover", upstream=upstream.name)
            url = target
        raise errors.DiscoveryFailed(f"more than {MAX_REDIRECTS} redirects from "
                                     f"{safe_url(attempt.url)}", step="discover",
                                     upstream=upstream.name)

    def _failure(self, upstream: Upstream, attempts: list[Attempt],
                 expected: str) -> errors.UpstreamError:
        summary = "; ".join(a.line() for a in attempts)
        rejected = next((a for a in attempts if a.certificate), None)
        if rejected is not None:  # the cause, said once rather than per candidate URL
            return errors.CertificateRejected(rejected.detail, step="discover",
                                              upstream=upstream.name)
        error: errors.UpstreamError
        if attempts and all(a.timed_out for a in attempts):
            headline = f"discovery for {clean_text(expected)!r} timed out"
            error = errors.UpstreamTimeout(f"{headline}: {summary}", step="discover",
                                           upstream=upstream.name)
        elif any(a.transient for a in attempts):
            waits = [a.retry_after for a in attempts if a.retry_after is not None]
            headline = f"discovery for issuer {clean_text(expected)!r} failed"
            error = errors.Unavailable(
                f"{headline}: {summary}", step="discover", upstream=upstream.name,
                retry_after=max(waits, default=None))
        else:
            headline = f"no usable metadata for issuer {clean_text(expected)!r}"
            error = errors.DiscoveryFailed(f"{headline}: {summary}", step="discover",
                                           upstream=upstream.name)
        error.headline = headline
        error.attempts = tuple(a.report() for a in attempts)
        return error


def _same_origin(a: str, b: str) -> bool:
    try:
        return authority(a) == authority(b)
    except ValueError:
        return False
