"""aiocache's ``RedisCache`` on a redis-py client made elsewhere.

aiocache 0.12 builds its own client from ``endpoint``/``port``/``password``/``ssl``: no CA
file, no ACL user, no Sentinel, no Cluster. The redis store connects to all of those
(store/redis_url.py, ``store.redis.connect``), so :class:`ClientRedisCache` hands aiocache the
store's already-configured ``redis.asyncio`` client (``Redis`` from a URL, a Sentinel
``master_for`` client, or ``RedisCluster``) in place of the one it made. The client aiocache
made is never used and never connects (redis-py connects on the first command). aiocache's
commands then go wherever the store's go: TLS with its CA, the ACL user, the current master
after a failover, the node that owns the key's slot.

Only what a flow record needs is used through it: ``set`` with a float ttl (``PSETEX``),
``raw("getdel", key)``, ``get``/``delete``; each is a single-key command, so it works on a
cluster. Closing it leaves the client open: the credential store owns and closes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiocache import RedisCache
from aiocache.serializers import BaseSerializer
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster


class ClientRedisCache(RedisCache):  # type: ignore[misc]  # aiocache is untyped
    def __init__(self, client: Redis | RedisCluster, *, namespace: str,
                 serializer: BaseSerializer,
                 key_builder: Callable[[str, str | None], str] | None = None) -> None:
        # timeout=None: the client's own socket timeouts bound every command (no wait_for task)
        super().__init__(serializer=serializer, namespace=namespace, timeout=None,
                         key_builder=key_builder)
        self.client = client

    async def _close(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"ClientRedisCache({type(self.client).__name__}, namespace={self.namespace!r})"
