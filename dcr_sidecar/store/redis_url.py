"""Where the redis store connects: the `store.url` forms, parsed without I/O.

- ``redis://[[user]:password@]host[:port][/db]`` and ``rediss://...`` (TLS): one instance,
  handed to redis-py as written (its query options, e.g. ``?ssl_ca_certs=/path``, apply).
- ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]``
  (``rediss+sentinel://`` for TLS to sentinels and data nodes): Redis Sentinel. The hosts are
  sentinels (port 26379 by default); ``service_name`` is the monitored master's name; the
  userinfo authenticates to the master (data) nodes. Query options: ``sentinel_password``
  (when the sentinels require AUTH), ``ssl_ca_certs`` and ``replica_acks``.
- ``redis+cluster://[[user]:password@]host:port[,host:port...]`` (``rediss+cluster://`` for
  TLS): Redis Cluster. The hosts are seed nodes (port 6379 by default); the cluster has one
  database (0). Query options: ``ssl_ca_certs`` and ``replica_acks``.

``replica_acks`` (sentinel and cluster; default 1): how many replicas must acknowledge a lease
or credential-record write (``WAIT``) before it counts as done (design.md §3.4); 0 turns the
wait off (asynchronous replication: a failover may lose the last write).

Error messages never repeat the URL (it may hold a password).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

SENTINEL_PORT = 26379
REDIS_PORT = 6379
_SENTINEL_QUERY = frozenset({"sentinel_password", "ssl_ca_certs", "replica_acks"})
_CLUSTER_QUERY = frozenset({"ssl_ca_certs", "replica_acks"})
REPLICA_ACKS = 1  # the default for targets that fail over (sentinel, cluster)
_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel", "redis+cluster",
            "rediss+cluster")


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
    cluster_nodes: tuple[tuple[str, int], ...] = ()
    replica_acks: int = 0

    @property
    def sentinel(self) -> bool:
        return bool(self.sentinels)

    @property
    def cluster(self) -> bool:
        return bool(self.cluster_nodes)

    @property
    def fails_over(self) -> bool:
        """A master can be replaced under the client (sentinel promotion, cluster failover)."""
        return self.sentinel or self.cluster

    def describe(self) -> str:
        """For logs and messages: scheme, hosts, service and db — never the password."""
        if self.sentinel:
            hosts = ",".join(f"{_bracket(h)}:{p}" for h, p in self.sentinels)
            scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
            return f"{scheme}://{hosts}/{self.service_name}/{self.db}"
        if self.cluster:
            hosts = ",".join(f"{_bracket(h)}:{p}" for h, p in self.cluster_nodes)
            return f"{'rediss' if self.tls else 'redis'}+cluster://{hosts}"
        parts = urlsplit(self.url)
        host = _bracket(parts.hostname or "")
        return f"{parts.scheme}://{host}:{parts.port or REDIS_PORT}/{self.db}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_redis_url(url: str) -> RedisTarget:
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError("must be a redis://, rediss://, redis+sentinel://, "
                         "rediss+sentinel://, redis+cluster:// or rediss+cluster:// URL")
    if scheme.endswith("+sentinel"):
        return _sentinel(url, tls=scheme.startswith("rediss"))
    if scheme.endswith("+cluster"):
        return _cluster(url, tls=scheme.startswith("rediss"))
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


def _split(url: str, known: frozenset[str]) -> tuple[str | None, str | None, str, str,
                                                    dict[str, list[str]]]:
    """username, password, hosts text, path and query options of a multi-host URL."""
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
    options = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown query option(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    return username, password, hosts_text, path, options


def _replica_acks(options: dict[str, list[str]]) -> int:
    text = options.get("replica_acks", [str(REPLICA_ACKS)])[-1]
    if not text.isdigit() or int(text) > 16:
        raise ValueError("replica_acks must be a number of replicas from 0 to 16")
    return int(text)


def _cluster(url: str, *, tls: bool) -> RedisTarget:
    username, password, hosts_text, path, options = _split(url, _CLUSTER_QUERY)
    nodes = tuple(_host_port(h, REDIS_PORT) for h in hosts_text.split(",") if h)
    if not nodes:
        raise ValueError("needs at least one cluster node host:port")
    if path.strip("/"):
        raise ValueError("a cluster has one database: nothing may follow the hosts")
    return RedisTarget(url=url, tls=tls, cluster_nodes=nodes, username=username,
                       password=password, ssl_ca_certs=options.get("ssl_ca_certs", [None])[-1],
                       replica_acks=_replica_acks(options))


def _sentinel(url: str, *, tls: bool) -> RedisTarget:
    username, password, hosts_text, path, options = _split(url, _SENTINEL_QUERY)
    sentinels = tuple(_host_port(h) for h in hosts_text.split(",") if h)
    if not sentinels:
        raise ValueError("needs at least one sentinel host:port")
    segments = [s for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError("needs the service name after the hosts "
                         "(redis+sentinel://host:26379/mymaster[/db])")
    return RedisTarget(
        url=url, tls=tls, sentinels=sentinels, service_name=unquote(segments[0]),
        db=_db(segments[1]) if len(segments) > 1 else 0, username=username, password=password,
        sentinel_password=options.get("sentinel_password", [None])[-1],
        ssl_ca_certs=options.get("ssl_ca_certs", [None])[-1],
        replica_acks=_replica_acks(options))


def _host_port(text: str, default_port: int = SENTINEL_PORT) -> tuple[str, int]:
    if text.startswith("["):
        host, _, tail = text[1:].partition("]")
        port_text = tail.removeprefix(":")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError("has an empty host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("has an invalid port")
    return host, int(port_text)
