"""The outbound HTTP client for all OAuth traffic: transport rules, per-upstream connection caps,
read caps, and the one place where foreign exceptions become sidecar errors.

Invariants:
- One pooled ``ClientSession`` per process, ``trust_env=False`` (the environment's proxy
  variables count only through ``egress.from_environment``), no cookies, the ``timeouts`` of
  the configuration on every request.
- TLS is always verified against the ``security.tls`` anchors, read again when their files
  change (:mod:`dcr_sidecar.tls`); a failed check becomes ``CertificateRejected`` naming the
  host, the check and the setting that fixes it.
- https only, except ``security.allow_http`` hosts (:meth:`Outbound.check_url`).
- Every connection passes the dial-time address policy of :mod:`dcr_sidecar.dial`; the request
  names its destination authority so the policy knows whether it is a configured one.
- At most ``limits.connections_per_upstream`` requests (hence connections) per upstream at a
  time, whichever hosts they go to; waiting for a slot counts against ``timeouts.total``, so
  a stalled AS exhausts only its own upstream's slots and never another upstream's.
- With ``egress.proxy`` (or ``egress.from_environment``), https to any host outside
  ``egress.no_proxy`` is tunnelled with HTTP CONNECT: the sidecar resolves the target and
  checks the answer against the address policy itself, then CONNECTs to that checked address
  while TLS still verifies (and SNI names) the real host. A refused target never reaches the
  proxy. Plain http never goes through the proxy (it would read the traffic): refused. Only
  the CONNECT line and Proxy-Authorization reach the proxy; credentials travel inside TLS.
- Redirects are never followed here; discovery follows them itself under its own rules.
- Every body read is capped while reading, and the connection is dropped at the cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDictProxy
from yarl import URL

from dcr_sidecar import errors
from dcr_sidecar.config import LiveSettings, Settings
from dcr_sidecar.dial import (
    AddressPolicy,
    AddressRefused,
    Authority,
    PolicyResolver,
    authority,
    authority_text,
    destination,
    guarded_socket_factory,
    name_destination,
    unname_destination,
)
from dcr_sidecar.metrics import Metrics
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.text import safe_url
from dcr_sidecar.slot import Slot
from dcr_sidecar.tls import AnchorError, TrustAnchors, describe_failure

__all__ = ["BodyTooLarge", "Outbound", "Response", "authority", "read_capped"]


@dataclass(frozen=True)
class Route:
    """How one request is sent: `url` as dialled (the checked address behind a proxy), the
    authority the connector's policy judges (`named`), and the proxy's parts."""

    url: str
    named: Authority
    host_header: str | None = None
    server_hostname: str | None = None
    proxy: str | None = None
    proxy_headers: Mapping[str, str] | None = None  # Proxy-Authorization, on the CONNECT only


@dataclass(frozen=True, slots=True)
class Target:
    """A destination planned once (:meth:`Outbound.target`) and sent to many times
    (:meth:`Outbound.send`): the URL already checked and parsed, the authority the dial-time
    policy judges, the upstream's slot and its metrics series. Valid while
    :attr:`Outbound.epoch` is unchanged."""

    url: str
    dialled: URL
    named: Authority
    upstream: str
    tls: bool
    slot: Slot
    timer: Any  # the upstream-call histogram child for (upstream, endpoint)
    epoch: int


@dataclass(frozen=True)
class Response:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ProtocolError(f"{safe_url(self.url)} answered HTTP {self.status} with a body "
                                "that is not JSON") from None


MAX_REMEMBERED_URLS = 4096


class Outbound:
    """The process's outbound client. Create with :meth:`start`, close with :meth:`close`.

    `resolver` replaces the name resolver under the address policy; only tests pass one (to
    map names onto loopback addresses). The policy applies to its answers like to any other.
    """

    def __init__(self, live: LiveSettings, metrics: Metrics | None = None,
                 resolver: AbstractResolver | None = None) -> None:
        self.live = live  # the process's one settings reference (read, never assigned here)
        settings = live.current
        self.metrics = metrics or Metrics(None)
        self.policy = AddressPolicy.from_settings(settings)
        self.trust = TrustAnchors(settings.security.tls)
        self._resolver = resolver
        self._targets = PolicyResolver(self.policy, resolver)  # targets behind the proxy
        self._session: aiohttp.ClientSession | None = None
        self._slots: dict[str, Slot] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._passed: set[str] = set()  # URLs check_url accepted under the current settings
        self.epoch = 0  # bumped by update(): a Target of another epoch is planned again
        self._client_timeout = self._timeout()
        self._call_timeout = self._timeout(total=False)  # under send's own deadline

    @property
    def settings(self) -> Settings:
        return self.live.current

    async def start(self) -> None:
        self._session = self._new_session()

    def _new_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            resolver=PolicyResolver(self.policy, self._resolver),
            use_dns_cache=False,  # a cached answer would skip the policy of another authority
            socket_factory=guarded_socket_factory(self.policy),
            limit=0,  # bounded per upstream by the slots in request()
            limit_per_host=0,
            enable_cleanup_closed=False,
        )
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,
            auto_decompress=True,  # decompressed bytes are what read_capped counts
            timeout=self._client_timeout,
            headers={"User-Agent": "dcr-sidecar"},
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()  # _close_later closes its session when cancelled
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._targets.close()

    def _timeout(self, settings: Settings | None = None, *,
                 total: bool = True) -> aiohttp.ClientTimeout:
        timeouts = (settings or self.settings).timeouts
        return aiohttp.ClientTimeout(total=timeouts.total if total else None,
                                     sock_connect=timeouts.connect, sock_read=timeouts.read)

    def update(self, settings: Settings) -> None:
        """Prepare for `settings`, about to be put in force (the caller swaps the settings
        reference right after, with no await between): the settings in force now are the old
        ones. The client timeouts are made anew, read limits are read from the reference per
        request, connections_per_upstream gets fresh slots, the address policy is replaced and
        the epoch moves on (plans are made again). A changed
        policy also retires the connection pool, so no keep-alive connection checked under the
        old policy is reused; the old pool closes once its requests are over (after
        timeouts.total)."""
        if settings.limits.connections_per_upstream != (
                self.settings.limits.connections_per_upstream):
            self._slots = {}  # requests holding an old slot release it into the old semaphore
        fresh = AddressPolicy.from_settings(settings)
        changed = fresh.key() != self.policy.key() or settings.egress != self.settings.egress
        if settings.security.tls != self.settings.security.tls:
            self.trust = TrustAnchors(settings.security.tls)
        self._client_timeout = self._timeout(settings)
        self._call_timeout = self._timeout(settings, total=False)
        self.epoch += 1
        self._passed = set()  # security settings may have changed: judge every URL again
        self.policy.replace(fresh)
        if changed and self._session is not None:
            self._retire_pool(self._session, settings)

    def _retire_pool(self, old: aiohttp.ClientSession, settings: Settings) -> None:
        self._session = self._new_session()
        grace = settings.timeouts.total + 1
        loop = asyncio.get_running_loop()
        task = loop.create_task(_close_later(old, grace))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Outbound.start() was not awaited")
        return self._session

    def check_url(self, url: str, *, step: errors.Step, upstream: str | None) -> None:
        """https only (or an allow_http host), and IP literals through the address policy,
        before any connection is attempted. A URL that passed is remembered until the security
        settings change (the answer depends only on the URL and them); a refused one is judged
        again every time."""
        if url in self._passed:
            return
        self._check_url(url, step=step, upstream=upstream)
        if len(self._passed) >= MAX_REMEMBERED_URLS:
            self._passed.clear()
        self._passed.add(url)

    def _check_url(self, url: str, *, step: errors.Step, upstream: str | None) -> None:
        try:
            dest = authority(url)
        except ValueError:
            raise errors.PolicyRefused(f"refusing the URL {safe_url(url)}", step=step,
                                       upstream=upstream) from None
        scheme, host, _ = dest
        if scheme not in ("http", "https"):
            raise errors.PolicyRefused(f"refusing the URL {safe_url(url)}", step=step,
                                       upstream=upstream)
        if scheme == "http" and host not in self.settings.security.allow_http:
            raise errors.PolicyRefused(
                f"refusing plain http to {safe_url(url)} (only security.allow_http hosts may "
                "use http)", step=step, upstream=upstream)
        reason = _literal_refusal(self.policy, dest)
        if reason is not None:
            raise errors.PolicyRefused(
                f"refusing {safe_url(url)}: {host} is a {reason} address, not allowed for "
                f"{authority_text(dest)}{self.policy.allow_hint(dest, host, reason)}",
                step=step, upstream=upstream)

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
        endpoint: str | None = None,
    ) -> Response:
        """One request, no redirects; the body is read up to `limit` (or `error_limit` for
        4xx/5xx answers) and the request fails beyond it. `endpoint` labels the call's
        duration metric (default: the step)."""
        self.check_url(url, step=step, upstream=upstream)
        limits = self.settings.limits
        dest = authority(url)
        started = time.perf_counter()
        try:
            with self.translate(step=step, upstream=upstream, url=url):
                async with asyncio.timeout(self.settings.timeouts.total):
                    egress = self.settings.egress
                    route = Route(url, dest) if egress.proxy is None or egress.bypasses(
                        dest[1]) else await self._proxied(url, dest, step=step,
                                                          upstream=upstream)
                    if route.host_header is not None:
                        headers = {**(headers or {}), "Host": route.host_header}
                    with destination(route.named):
                        async with self._slot(upstream or authority_text(dest)), \
                                self._open_session(step, upstream).request(
                                    method, route.url, headers=headers, data=data,
                                    json=json_body, allow_redirects=False,
                                    timeout=self._client_timeout,
                                    ssl=self.trust.context(),
                                    server_hostname=route.server_hostname,
                                    proxy=route.proxy,
                                    proxy_headers=route.proxy_headers) as resp:
                            cap = (limit or limits.max_response_bytes) if resp.status < 400 \
                                else (error_limit or limits.max_error_body_bytes)
                            body = await read_capped(resp, cap, url, step=step,
                                                     upstream=upstream)
                            return Response(resp.status, resp.headers, body, url)
        finally:
            self.metrics.upstream_call(upstream, endpoint or step,
                                       time.perf_counter() - started)

    def target(self, url: str, *, upstream: str, endpoint: str) -> Target | None:
        """`url` checked (:meth:`check_url`; raises PolicyRefused) and planned for
        :meth:`send`; None when it goes through the egress proxy (then :meth:`request`, which
        resolves and checks the target per request)."""
        self._check_url(url, step="forward", upstream=upstream)
        dest = authority(url)
        egress = self.settings.egress
        if egress.proxy is not None and not egress.bypasses(dest[1]):
            return None
        return Target(url, URL(url), dest, upstream, dest[0] == "https",
                      self._slot_for(upstream), self.metrics.upstream_call_timer(
                          upstream, endpoint), self.epoch)

    def send(self, target: Target, *, headers: Mapping[str, str], data: bytes,
             error_limit: int | None = None) -> Coroutine[Any, Any, Response]:
        """POST `data` to a planned target: :meth:`request`'s guarantees (the slot, the
        dial-time policy for `target.named`, timeouts.total over the wait and the call, no
        redirects, capped reads, translated errors) with nothing recomputed per request.

        A free slot: the call at once under the client timeouts (aiohttp's `total` covers the
        connection, the request and the body read). No free slot: one deadline
        (timeouts.total) over the wait and the call, and the call under the client timeouts
        without a `total` of their own — one timer, not two. A plain function: the free path
        adds no coroutine frame (the caller awaits the call itself, which takes the free slot
        before anything else runs)."""
        if target.slot.locked():
            return self._send_waiting(target, headers, data, error_limit)
        return self._send(target, headers, data, error_limit=error_limit,
                          client_timeout=self._client_timeout, started=time.perf_counter())

    async def _send_waiting(self, target: Target, headers: Mapping[str, str], data: bytes,
                            error_limit: int | None) -> Response:
        started = time.perf_counter()
        settings = self.settings
        try:
            async with asyncio.timeout(settings.timeouts.total):
                return await self._send(target, headers, data, error_limit=error_limit,
                                        client_timeout=self._call_timeout, started=started)
        except TimeoutError as exc:  # the deadline, in the wait or the call
            raise _translated(exc, target.url, "forward", target.upstream, settings) from exc

    async def _send(self, target: Target, headers: Mapping[str, str], data: bytes, *,
                    error_limit: int | None, client_timeout: aiohttp.ClientTimeout,
                    started: float) -> Response:
        upstream = target.upstream
        slot = target.slot
        settings = self.settings
        token = None
        acquired = False
        try:
            await slot.acquire()
            acquired = True
            session = self._session
            if session is None or session.closed:
                raise errors.Unavailable("the sidecar is shutting down", step="forward",
                                         upstream=upstream)
            token = name_destination(target.named)
            async with session.request(
                    "POST", target.dialled, headers=headers, data=data,
                    allow_redirects=False, timeout=client_timeout,
                    ssl=self.trust.context() if target.tls else True) as resp:
                status = resp.status
                limits = settings.limits
                cap = limits.max_response_bytes if status < 400 \
                    else (error_limit or limits.max_error_body_bytes)
                body = await read_capped(resp, cap, target.url, step="forward",
                                         upstream=upstream)
                return Response(status, resp.headers, body, target.url)
        except errors.SidecarError:
            raise
        except AnchorError as exc:
            raise errors.CertificateRejected(f"cannot verify {safe_url(target.url)}: {exc}",
                                             step="forward", upstream=upstream) from exc
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            raise _translated(exc, target.url, "forward", upstream, settings) from exc
        finally:
            if token is not None:
                unname_destination(token)
            if acquired:
                slot.release()
            target.timer.observe(time.perf_counter() - started)

    async def _proxied(self, url: str, dest: Authority, *, step: errors.Step,
                       upstream: str | None) -> Route:
        """Through the egress proxy to the address checked here (see the module)."""
        egress = self.settings.egress
        scheme, host, port = dest
        if scheme != "https":
            raise errors.PolicyRefused(
                f"refusing plain http to {safe_url(url)}: it would cross the egress proxy in "
                f"clear; list {host} in egress.no_proxy to reach it directly", step=step,
                upstream=upstream)
        address = await self._checked_address(dest, url, step=step, upstream=upstream)
        proxy_authority = egress.proxy_authority()
        assert proxy_authority is not None
        auth = egress.proxy_auth
        literal = address == host
        return Route(
            str(URL(url).with_host(address)) if not literal else url,
            named=proxy_authority,
            host_header=None if literal else (host if port == 443 else f"{host}:{port}"),
            server_hostname=None if literal else host,
            proxy=egress.proxy,
            proxy_headers={"Proxy-Authorization": aiohttp.encode_basic_auth(
                auth.username, auth.password.reveal() if auth.password is not None else "")}
            if auth is not None else None)

    async def _checked_address(self, dest: Authority, url: str, *, step: errors.Step,
                               upstream: str | None) -> str:
        """The first address of `dest`'s host that the policy allows for `dest` (an IP literal
        was judged by check_url already)."""
        host, port = dest[1], dest[2]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return host
        with destination(dest):
            try:
                answers = await self._targets.resolve(host, port, socket.AF_UNSPEC)
            except AddressRefused:
                raise
            except OSError as exc:
                raise errors.Unavailable(f"cannot resolve the host name of {host}",
                                         step=step, upstream=upstream) from exc
        return str(answers[0]["host"])

    def _open_session(self, step: errors.Step, upstream: str | None) -> aiohttp.ClientSession:
        """The session, or 503 when it closed while this request waited for a slot (shutdown)."""
        if self._session is None or self._session.closed:
            raise errors.Unavailable("the sidecar is shutting down", step=step,
                                     upstream=upstream)
        return self._session

    def _slot_for(self, key: str) -> Slot:
        slot = self._slots.get(key)
        if slot is None:
            slot = Slot(self.settings.limits.connections_per_upstream)
            self._slots[key] = slot
        return slot

    @contextlib.asynccontextmanager
    async def _slot(self, key: str) -> AsyncIterator[None]:
        slot = self._slot_for(key)
        await slot.acquire()
        try:
            yield
        finally:
            slot.release()

    @contextlib.contextmanager
    def translate(self, *, step: errors.Step, upstream: str | None, url: str) -> Iterator[None]:
        """Foreign exceptions -> sidecar errors, always chained (``raise ... from``)."""
        try:
            yield
        except errors.SidecarError:
            raise
        except AnchorError as exc:  # the files went away before they were ever loaded
            raise errors.CertificateRejected(f"cannot verify {safe_url(url)}: {exc}", step=step,
                                             upstream=upstream) from exc
        except (aiohttp.ClientError, OSError) as exc:  # TimeoutError is an OSError
            raise _translated(exc, url, step, upstream, self.settings) from exc


def _translated(exc: Exception, url: str, step: errors.Step, upstream: str | None,
                settings: Settings) -> errors.UpstreamError:
    """Say what went wrong as a person would, naming the host once (the URL is the caller's)."""
    host = _host_port(url)
    if isinstance(exc, AddressRefused):  # a target behind the proxy, refused before CONNECT
        return errors.PolicyRefused(f"refusing {safe_url(url)}: {exc.strerror}", step=step,
                                    upstream=upstream)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return errors.Unavailable(
            f"the egress proxy refused the tunnel to {host}: HTTP {exc.status} {exc.message}"
            f"{' (check egress.proxy_auth)' if exc.status == 407 else ''}", step=step,
            upstream=upstream)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return errors.Unavailable(
            f"cannot reach the egress proxy {settings.egress.proxy} (for {host}): "
            f"{exc.os_error.strerror or type(exc.os_error).__name__}", step=step,
            upstream=upstream)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return errors.CertificateRejected(
            describe_failure(exc.certificate_error, exc.host, exc.port), step=step,
            upstream=upstream)
    if isinstance(exc, aiohttp.ClientConnectorError):
        refused = _address_refused(exc)
        if refused is not None:
            return errors.PolicyRefused(f"refusing {safe_url(url)}: {refused}", step=step,
                                        upstream=upstream)
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return errors.Unavailable(f"cannot resolve the host name of {host}", step=step,
                                      upstream=upstream)
        if isinstance(exc, aiohttp.ClientSSLError):
            return errors.BadUpstream(f"TLS: the handshake with {host} failed "
                                      f"({getattr(exc.os_error, 'reason', None) or exc.os_error})",
                                      step=step, upstream=upstream)
        if isinstance(exc.os_error, ConnectionRefusedError):
            return errors.Unavailable(f"connection refused by {host} — is the server running?",
                                      step=step, upstream=upstream)
        return errors.Unavailable(f"cannot connect to {host}: "
                                  f"{exc.os_error.strerror or type(exc.os_error).__name__}",
                                  step=step, upstream=upstream)
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return errors.UpstreamTimeout(
            f"{host} did not answer in time: {_which_timeout(exc, settings)}", step=step,
            upstream=upstream)
    if isinstance(exc, aiohttp.ClientResponseError) and isinstance(exc.__cause__,
                                                                   HttpProcessingError):
        # Not HTTP as aiohttp reads it (e.g. a two-digit status): the AS answered, badly.
        # The offending bytes are the AS's and stay out of the description.
        return errors.BadUpstream(f"{host} answered a malformed status line or header",
                                  step=step, upstream=upstream)
    if isinstance(exc, aiohttp.InvalidURL):
        return errors.BadUpstream(f"invalid URL {safe_url(url)}", step=step, upstream=upstream)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return errors.Unavailable(f"{host} closed the connection without answering", step=step,
                                  upstream=upstream)
    reason = getattr(exc, "strerror", None) or getattr(exc, "message", None) or str(exc)
    return errors.Unavailable(f"cannot reach {host}: {reason or type(exc).__name__}", step=step,
                              upstream=upstream)


def _which_timeout(exc: Exception, settings: Settings) -> str:
    timeouts = settings.timeouts
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return f"could not connect within {timeouts.connect:g} s (timeouts.connect)"
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return f"nothing read for {timeouts.read:g} s (timeouts.read)"
    return f"timed out after {timeouts.total:g} s (timeouts.total)"


def _host_port(url: str) -> str:
    try:
        _, host, port = authority(url)
    except ValueError:
        return safe_url(url)
    return f"{f'[{host}]' if ':' in host else host}:{port}"


def _literal_refusal(policy: AddressPolicy, dest: Authority) -> str | None:
    """The policy's verdict on an IP-literal host (names are judged at dial time)."""
    host = dest[1]
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    return policy.refusal(dest, host)


async def _close_later(session: aiohttp.ClientSession, delay: float) -> None:
    try:
        await asyncio.sleep(delay)
    finally:
        await session.close()


def _address_refused(exc: BaseException) -> AddressRefused | None:
    """The policy refusal behind a connector error, if that is what it was."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if isinstance(seen, AddressRefused):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return None


class BodyTooLarge(errors.BadUpstream):
    pass


async def read_capped(
    resp: aiohttp.ClientResponse, cap: int, url: str, *, step: errors.Step = "forward",
    upstream: str | None = None,
) -> bytes:
    """Read at most `cap` bytes; fail as soon as the body goes beyond (never buffer it whole)
    and drop the connection, whose unread rest must not be drained or reused."""
    declared = resp.content_length
    if declared is not None and declared > cap:
        resp.close()
        raise BodyTooLarge(f"{safe_url(url)} announced a {declared}-byte body; the limit is "
                           f"{cap}", step=step, upstream=upstream)
    if declared is not None and "Content-Encoding" not in resp.headers:
        # The parser stops at Content-Length, which is within the cap (and nothing is
        # decompressed beyond it): one read.
        return await resp.read()
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await resp.content.read(min(65536, cap + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > cap:
            resp.close()
            raise BodyTooLarge(f"{safe_url(url)} sent more than {cap} bytes", step=step,
                               upstream=upstream)
        chunks.append(chunk)
