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
    POST_PROBE_BODY,
    POST_PROBE_HEADERS,
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


@dataclass(frozen=True)
class ResourceFetch:
    """The protected-resource metadata in use (RFC 9728), and how to ask whether it changed."""

    metadata: ResourceMetadata
    url: str
    exact: bool  # the document must name the resource exactly (RFC 9728 §3.3)
    etag: str | None = None
    last_modified: str | None = None

    def conditional_headers(self) -> dict[str, str]:
        """RFC 9110 §13.1: If-None-Match with the entity tag, else If-Modified-Since."""
        if self.etag:
            return {"If-None-Match": self.etag}
        return {"If-Modified-Since": self.last_modified} if self.last_modified else {}


@dataclass
class DiscoveryResult:
    metadata: Metadata
    source_url: str | None
    ttl: float
    attempts: list[Attempt] = field(default_factory=list)
    resource: ResourceFetch | None = None  # `resource` sources: the document that named the AS
    fetched_at: float = field(default_factory=time.time)  # wall clock, for /client


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
        fetch = await self._resource_metadata(upstream, resource, attempts)
        result = await self.via_resource_metadata(upstream, fetch, need_registration, await_all)
        result.attempts[:0] = attempts
        return result

    async def via_resource_metadata(self, upstream: Upstream, fetch: ResourceFetch,
                                    need_registration: bool,
                                    await_all: bool = False) -> DiscoveryResult:
        """The AS metadata of the first authorization server `fetch` names that validates."""
        resource, prm = upstream.resource or fetch.metadata.resource, fetch.metadata
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
            result.resource = fetch
            return result
        raise errors.DiscoveryFailed(
            f"no authorization server named by {safe_url(resource)} validated: "
            f"{' | '.join(failures)}", step="discover", upstream=upstream.name)

    async def _resource_metadata(self, upstream: Upstream, resource: str,
                                 attempts: list[Attempt]) -> ResourceFetch:
        """The configured `resource_metadata` URL; else the one the resource's challenge names;
        else the well-known locations. A named document must name the resource exactly."""
        if upstream.resource_metadata is not None:
            found = await self._fetch_resource_metadata(
                upstream, resource, upstream.resource_metadata, True, attempts)
            if found is not None:
                return found
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
            found = await self._fetch_resource_metadata(upstream, resource, url, exact, attempts)
            if found is not None:
                return found
        raise self._failure(upstream, attempts, f"protected resource {safe_url(resource)!r}")

    async def _fetch_resource_metadata(self, upstream: Upstream, resource: str, url: str,
                                       exact: bool,
                                       attempts: list[Attempt]) -> ResourceFetch | None:
        attempt = Attempt(url)
        attempts.append(attempt)
        try:
            response = await self._get_following(upstream, attempt)
        except errors.UpstreamError as exc:
            attempt.outcome, attempt.detail = "failed", exc.description
            attempt.transient = not isinstance(exc, errors.PolicyRefused)
            return None
        attempt.status = response.status
        if response.status != 200:
            attempt.outcome = "skipped"
            return None
        try:
            prm = validate_resource_metadata(response.json(), resource, exact=exact)
        except ProtocolError as exc:
            attempt.outcome, attempt.detail = "skipped", exc.reason
            return None
        attempt.outcome = "used"
        return ResourceFetch(prm, url, exact, response.headers.get("ETag"),
                             response.headers.get("Last-Modified"))

    async def recheck_resource(self, upstream: Upstream,
                               known: ResourceFetch) -> ResourceFetch | None:
        """Ask again for the document in use, conditionally (RFC 9110 §13.1.1-2): None when it
        is unchanged (304); the new document when it validates under the same rules; a typed
        error otherwise (the caller keeps what it has)."""
        attempt = Attempt(known.url)
        response = await self._get_following(upstream, attempt, known.conditional_headers())
        if response.status == 304:
            return None
        if response.status != 200:
            raise errors.DiscoveryFailed(
                f"re-checking {safe_url(known.url)}: HTTP {response.status}", step="discover",
                upstream=upstream.name)
        configured = upstream.resource
        assert configured is not None  # only `resource` sources have a ResourceFetch
        try:
            prm = validate_resource_metadata(response.json(), configured, exact=known.exact)
        except ProtocolError as exc:
            raise errors.DiscoveryFailed(f"re-checking {safe_url(known.url)}: {exc.reason}",
                                         step="discover", upstream=upstream.name) from exc
        return ResourceFetch(prm, known.url, known.exact, response.headers.get("ETag"),
                             response.headers.get("Last-Modified"))

    async def _challenge_url(self, upstream: Upstream, resource: str,
                             attempts: list[Attempt]) -> str | None:
        """Probe the resource without a token; a 401 may name its metadata in WWW-Authenticate
        (RFC 9728 §5.1). GET, or under `resource_probe: post` a JSON-RPC ping (MCP servers)."""
        attempt = Attempt(resource)
        attempts.append(attempt)
        post = upstream.resource_probe == "post"
        try:
            response = await self.outbound.request(
                "POST" if post else "GET", resource, step="discover", upstream=upstream.name,
                headers=POST_PROBE_HEADERS if post else None,
                data=POST_PROBE_BODY if post else None)
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
            raise self._failure(upstream, attempts, f"issuer {clean_text(expected)!r}")
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

    async def _get_following(self, upstream: Upstream, attempt: Attempt,
                             headers: dict[str, str] | None = None) -> Response:
        """GET with discovery's redirect rules: same origin, at most 5, never https->http."""
        url = attempt.url
        for _ in range(MAX_REDIRECTS + 1):
            response = await self.outbound.request(
                "GET", url, step="discover", upstream=upstream.name,
                headers={"Accept": "application/json", **(headers or {})})
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
                 subject: str) -> errors.UpstreamError:
        """`subject` names what was looked for: "issuer 'x'" or "protected resource 'y'"."""
        summary = "; ".join(a.line() for a in attempts)
        rejected = next((a for a in attempts if a.certificate), None)
        if rejected is not None:  # the cause, said once rather than per candidate URL
            return errors.CertificateRejected(rejected.detail, step="discover",
                                              upstream=upstream.name)
        error: errors.UpstreamError
        if attempts and all(a.timed_out for a in attempts):
            headline = f"discovery for {subject} timed out"
            error = errors.UpstreamTimeout(f"{headline}: {summary}", step="discover",
                                           upstream=upstream.name)
        elif any(a.transient for a in attempts):
            waits = [a.retry_after for a in attempts if a.retry_after is not None]
            headline = f"discovery for {subject} failed"
            error = errors.Unavailable(
                f"{headline}: {summary}", step="discover", upstream=upstream.name,
                retry_after=max(waits, default=None))
        else:
            headline = f"no usable metadata for {subject}"
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
