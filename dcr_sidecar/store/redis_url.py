"""Where the redis store connects: the `store.url` forms, parsed without I/O.

- ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://...`` (TLS): one instance,
  handed to redis-py as written (its query options, e.g. ``?ssl_ca_certs=/path``, apply).
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]``
  (``rediss+sentinel://`` for TLS to sentinels and data nodes): Redis Sentinel. The hosts are
  sentinels (port 26379 by default); ``service_name`` is the monitored master's name; the
  userinfo authenticates to the master (data) nodes. Query options: ``sentinel_password``
  (when the sentinels require AUTH) and ``ssl_ca_certs``.

Error messages never repeat the URL (it may hold a password).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_PORT = 26379
REDIS_PORT = 6379
_SENTINEL_QUERY = frozenset({"sentinel_password", "ssl_ca_certs"})


@dataclass(frozen=True)
class RedisTarget:
    url: str
    tls: bool
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None
    ssl_ca_certs: str | None = None

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """For logs and messages: scheme, hosts, service and db — never the password."""
        if self.sentinel:
            hosts = ",".join(f"{_bracket(h)}:{p}" for h, p in self.sentinels)
            scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
            return f"{scheme}://{hosts}/{self.service_name}/{self.db}"
        parts = urlsplit(self.url)
        host = _bracket(parts.hostname or "")
        return f"{parts.scheme}://{host}:{parts.port or REDIS_PORT}/{self.db}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_redis_url(url: str) -> RedisTarget:
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in ("redis", "rediss", "redis+sentinel", "rediss+sentinel"):
        raise ValueError("must be a redis://, rediss://, redis+sentinel:// or "
                         "rediss+sentinel:// URL")
    if scheme.endswith("+sentinel"):
        return _sentinel(url, tls=scheme.startswith("rediss"))
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("has an invalid host or port") from None
    if not parts.hostname:
        raise ValueError("needs a host (redis://host:port/db)")
    return RedisTarget(url=url, tls=scheme == "rediss", db=_db(parts.path.strip("/") or "0"),
                       username=unquote(parts.username) if parts.username else None,
                       password=unquote(parts.password) if parts.password else None)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ValueError("the database must be a number (…/0)")
    return int(text)


def _sentinel(url: str, *, tls: bool) -> RedisTarget:
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    if "#" in rest or "#" in query:
        raise ValueError("must not have a fragment")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts_text = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon and pw else None
    sentinels = tuple(_host_port(h) for h in hosts_text.split(",") if h)
    if not sentinels:
        raise ValueError("needs at least one sentinel host:port")
    segments = [s for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError("needs the service name after the hosts "
                         "(redis+sentinel://host:26379/mymaster[/db])")
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - _SENTINEL_QUERY)
    if unknown:
        raise ValueError(f"unknown query option(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(_SENTINEL_QUERY))}")
    return RedisTarget(
        url=url, tls=tls, sentinels=sentinels, service_name=unquote(segments[0]),
        db=_db(segments[1]) if len(segments) > 1 else 0, username=username, password=password,
        sentinel_password=options.get("sentinel_password", [None])[-1],
        ssl_ca_certs=options.get("ssl_ca_certs", [None])[-1])


def _host_port(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError("has an empty sentinel host")
    if not port_text:
        return host, SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("has an invalid sentinel port")
    return host, int(port_text)
