"""The dial-time address policy (design.md §3.8): which addresses one outbound connection may use.

Invariants:
- The policy of a connection follows its destination **authority** (scheme, host, port), which
  :meth:`Outbound.request` names for the duration of the request (:func:`destination`). A
  configured authority (scheme + host + port of any URL the operator wrote for any upstream)
  may use the allow-listed private networks; any other authority is server-supplied and may
  not. A connection made with no named destination gets the server-supplied policy.
- Names: :class:`PolicyResolver` resolves, then keeps only the addresses the policy allows.
  The connector keeps no DNS cache of its own (``use_dns_cache=False``), so an answer filtered
  for one authority is never reused for another on the same host:port, and what the connector
  dials is exactly the list just checked — a rebinding DNS server gets no second lookup.
- Every socket: :func:`guarded_socket_factory` checks the address the socket is about to
  connect to, IP literals included (aiohttp never resolves those). It is the last word:
  nothing reaches ``connect()`` without passing it.
- Keep-alive reuse is safe: aiohttp pools connections per (host, port, TLS or not), i.e. per
  authority, so a pooled connection was checked under the policy of the authority reusing it.
- The egress proxy (``egress.proxy``) is operator-configured: the connection to the proxy's own
  authority may use any address but the always-blocked ones (cloud metadata). The targets
  behind it are resolved and checked by the sidecar before the CONNECT (:mod:`dcr_sidecar.net`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import socket
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar, Token
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from dcr_sidecar.config import Settings
from dcr_sidecar.oauth.addresses import IPNetwork, always_blocked, parse_address, refusal

# The egress proxy's authority may dial any address the operator's name for it resolves to.
ANYWHERE: tuple[IPNetwork, ...] = (ipaddress.ip_network("0.0.0.0/0"),
                                   ipaddress.ip_network("::/0"))

Authority = tuple[str, str, int]
_DESTINATION: ContextVar[Authority | None] = ContextVar("dcr_sidecar_destination", default=None)


@functools.lru_cache(maxsize=4096)  # pure; every forwarded request asks for the same few URLs
def authority(url: str) -> Authority:
    """(scheme, host, port) of an http(s) URL as aiohttp will dial it: the host lower-cased and
    IDNA-encoded, the port made explicit. Raises ValueError for a URL without a host."""
    parsed = URL(url)
    host = (parsed.raw_host or "").lower()
    if not host or parsed.port is None:
        raise ValueError("the URL has no host")
    return parsed.scheme.lower(), host, parsed.port


def authority_text(value: Authority) -> str:
    scheme, host, port = value
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


@contextlib.contextmanager
def destination(value: Authority) -> Iterator[None]:
    """Name the authority the connections made inside this block are for."""
    token = _DESTINATION.set(value)
    try:
        yield
    finally:
        _DESTINATION.reset(token)


def name_destination(value: Authority) -> Token[Authority | None]:
    """:func:`destination` without the context manager (the planned hot path): name `value`
    until :func:`unname_destination` is given the token back."""
    return _DESTINATION.set(value)


def unname_destination(token: Token[Authority | None]) -> None:
    _DESTINATION.reset(token)


def current_destination(host: str, port: int) -> Authority | None:
    """The named destination when it is the one being dialled, else None (strictest policy)."""
    named = _DESTINATION.get()
    if named is None or named[1:] != (host.lower(), port):
        return None
    return named


class AddressRefused(OSError):
    """A destination address the policy forbids (raised inside the connector)."""

    def __init__(self, host: str, address: str, reason: str, hint: str = "") -> None:
        # errno + strerror, so aiohttp's connector errors show the message.
        super().__init__(errno.EPERM, f"{host} resolves to {address}, a {reason} address, "
                         f"which the address policy forbids for this authority{hint}")
        self.reason = reason


class AddressPolicy:
    """The allow-list and the configured authorities it applies to. Mutable in place so a
    reload reaches the running resolver and socket factory."""

    def __init__(self, allowed: Sequence[IPNetwork], configured: frozenset[Authority],
                 server_supplied: Sequence[IPNetwork] = (),
                 proxies: frozenset[Authority] = frozenset()) -> None:
        self.allowed = tuple(allowed)
        self.configured = configured
        self.server_supplied = tuple(server_supplied)
        self.proxies = proxies

    @classmethod
    def from_settings(cls, settings: Settings) -> AddressPolicy:
        configured = frozenset(authority(url) for upstream in settings.upstreams
                               for url in upstream.configured_urls())
        security = settings.security
        proxy = settings.egress.proxy_authority()
        return cls(security.allow_private_networks, configured,
                   security.allow_private_networks_server_supplied,
                   frozenset([proxy]) if proxy is not None else frozenset())

    def replace(self, other: AddressPolicy) -> None:
        self.allowed, self.configured = other.allowed, other.configured
        self.server_supplied, self.proxies = other.server_supplied, other.proxies

    def key(self) -> tuple[object, ...]:
        """What the verdicts depend on (a change retires the connection pool)."""
        return self.allowed, self.configured, self.server_supplied, self.proxies

    def refusal(self, dest: Authority | None, address: str) -> str | None:
        """Why `address` may not be dialled for `dest` (None: unknown, server-supplied)."""
        configured = dest is not None and dest in self.configured
        allowed = self.allowed if configured else self.server_supplied
        if dest is not None and dest in self.proxies:
            allowed = ANYWHERE
        return refusal(parse_address(address), allowed)

    def allow_hint(self, dest: Authority | None, address: str, reason: str) -> str:
        """How the operator lifts a refusal: the setting and the entry to add (none for cloud
        metadata, which nothing lifts)."""
        if always_blocked(reason):
            return ""
        parsed = parse_address(address)
        key = ("security.allow_private_networks"
               if dest is not None and dest in self.configured
               else "security.allow_private_networks_server_supplied")
        return f" — to allow it, list '{parsed}/{parsed.max_prefixlen}' in {key}"


class PolicyResolver(AbstractResolver):
    """Resolves with an inner resolver, then drops every address the policy forbids.

    `inner` defaults to aiohttp's resolver; tests pass one that maps names onto loopback
    addresses (the only injection point for name resolution).
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        dest = current_destination(host, port)
        results = await self._inner.resolve(host, port, family)
        verdicts = [(r, self.policy.refusal(dest, r["host"])) for r in results]
        kept = [r for r, reason in verdicts if reason is None]
        if not kept:
            if not verdicts:
                raise OSError(f"{host} has no address")
            first, reason = verdicts[0]
            reason = reason or "refused"
            raise AddressRefused(host, first["host"], reason,
                                 self.policy.allow_hint(dest, first["host"], reason))
        return kept

    async def close(self) -> None:
        await self._inner.close()


def guarded_socket_factory(policy: AddressPolicy) -> Callable[[Any], socket.socket]:
    """A TCPConnector ``socket_factory`` that refuses to create a socket for a forbidden
    destination address (the address it is handed is the one ``connect()`` will use)."""

    def factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        address = str(sockaddr[0])
        named = _DESTINATION.get()
        dest = named if named is not None and named[2] == sockaddr[1] else None
        reason = policy.refusal(dest, address)
        if reason is not None:
            host = named[1] if named is not None else address
            raise AddressRefused(host, address, reason, policy.allow_hint(dest, address, reason))
        return socket.socket(family=family, type=type_, proto=proto)

    return factory
