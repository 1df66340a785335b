"""Replicated Redis for failover tests, all real processes on free loopback ports:

- :class:`SentinelGroup`: a master, two replicas and three sentinels (``redis-server
  --sentinel``). Two replicas, so the promoted one still has a replica to acknowledge writes
  (the store WAITs for one).
- :class:`ClusterGroup`: a Redis Cluster of three masters with a replica each, created with
  ``redis-cli --cluster create``; slots migrated the way ``redis-cli --cluster reshard`` does.

The sentinels agree with quorum 2 and call a master down after ``DOWN_AFTER_MS`` of silence, so
a SIGKILLed master is replaced in a few seconds. Waiting is always on a condition with a
deadline: the replica in sync, the sentinels knowing each other, the promotion.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis

from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.store.redis import RedisStore
from tests.support.redis_server import RedisServer

DOWN_AFTER_MS = 1000
SETUP_DEADLINE = 30.0
SERVICE = "fleet"
StoreFactory = Callable[..., RedisStore]


@asynccontextmanager
async def redis_stores(*, lease_ttl: float, lease_wait: float) -> AsyncIterator[StoreFactory]:
    """Yields ``make(url, lease_ttl=..., lease_wait=...)``: a RedisStore on ``url`` with these
    lease settings unless the call overrides them. Every store made is closed on exit."""
    made: list[RedisStore] = []

    def make(url: str, *, lease_ttl: float = lease_ttl,
             lease_wait: float = lease_wait) -> RedisStore:
        store = RedisStore(Secret(url), lease_ttl=lease_ttl, lease_wait=lease_wait)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


async def _until(what: str, deadline_s: float, check: object) -> float:
    """Poll the async callable `check` every 50 ms until it is true; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await check():  # type: ignore[operator]
        if loop.time() - started > deadline_s:
            raise RuntimeError(f"{what}: not within {deadline_s} s")
        await asyncio.sleep(0.05)
    return loop.time() - started


class SentinelGroup:
    """A master, two replicas and three sentinels. ``kill_master()`` SIGKILLs the master;
    ``wait_promoted()`` returns once the sentinels name a replica as master and the other
    replica follows it; then ``master`` and ``replicas`` describe the new roles."""

    def __init__(self, workdir: Path, *, password: str | None = None,
                 replicas: int = 2) -> None:
        self.workdir = workdir
        self.password = password
        self.replica_count = replicas
        self.master: RedisServer | None = None
        self.replicas: list[RedisServer] = []
        self.sentinels: list[RedisServer] = []
        self.dead: list[RedisServer] = []

    @property
    def replica(self) -> RedisServer:
        return self.replicas[0]

    @property
    def servers(self) -> list[RedisServer]:
        return [s for s in (self.master, *self.replicas, *self.dead, *self.sentinels)
                if s is not None]

    def url(self, **query: str) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/0" + (f"?{tail}" if tail else "")

    def _client(self, server: RedisServer) -> Redis:
        password = None if server in self.sentinels else self.password
        return Redis(host="127.0.0.1", port=server.port, password=password,
                     socket_timeout=2, decode_responses=True)

    async def query(self, server: RedisServer, *command: str) -> object:
        client = self._client(server)
        try:
            return await client.execute_command(*command)  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()

    async def start(self) -> SentinelGroup:
        self.master = await RedisServer(self.workdir, password=self.password).start()
        for _ in range(self.replica_count):
            self.replicas.append(await RedisServer(self.workdir, password=self.password,
                                                   replica_of=self.master).start())
        for _ in range(3):
            sentinel = RedisServer(self.workdir, sentinel_of=self.master, service=SERVICE,
                                   quorum=2, down_after_ms=DOWN_AFTER_MS)
            self.sentinels.append(await sentinel.start())
        await _until("the replica in sync", SETUP_DEADLINE, self._replica_synced)
        await _until("the sentinels seeing the replica and each other", SETUP_DEADLINE,
                     self._sentinels_ready)
        return self

    async def _replica_synced(self) -> bool:
        for replica in self.replicas:
            info = await self.query(replica, "INFO", "replication")
            if not isinstance(info, dict) or info.get("master_link_status") != "up" \
                    or info.get("master_port") != self.master.port:  # type: ignore[union-attr]
                return False
        return True

    async def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            state = await self.query(sentinel, "SENTINEL", "MASTER", SERVICE)
            if not isinstance(state, dict) \
                    or int(state.get("num-slaves", 0)) < self.replica_count \
                    or int(state.get("num-other-sentinels", 0)) < 2:
                return False
        return True

    async def master_port(self) -> int:
        """The master's port as the first sentinel names it."""
        addr = await self.query(self.sentinels[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                SERVICE)
        assert isinstance(addr, list | tuple)
        return int(addr[1])

    async def kill_master(self) -> float:
        """SIGKILL the master; the loop time it died."""
        assert self.master is not None
        await self.master.kill()
        return asyncio.get_running_loop().time()

    async def wait_promoted(self, deadline_s: float = 30.0) -> float:
        """Wait until the sentinels name a replica master and it accepts writes (the seconds
        waited); then until the other replicas follow it. ``master``/``replicas`` are updated."""
        assert self.master is not None
        old = self.master
        by_port = {r.port: r for r in self.replicas}

        async def promoted() -> bool:
            port = await self.master_port()
            if port not in by_port:
                return False
            info = await self.query(by_port[port], "INFO", "replication")
            return isinstance(info, dict) and info.get("role") == "master"

        took = await _until("a replica promoted", deadline_s, promoted)
        self.master = by_port[await self.master_port()]
        self.replicas = [r for r in self.replicas if r is not self.master]
        self.dead.append(old)
        await _until("the other replicas following the new master", deadline_s,
                     self._replica_synced)
        return took

    async def stop(self) -> None:
        for server in reversed(self.servers):
            await server.stop()


class ClusterGroup:
    """A Redis Cluster of three masters with one replica each (``redis-cli --cluster create``),
    every node a real process on a free loopback port (cluster-node-timeout 1 s)."""

    def __init__(self, workdir: Path, *, masters: int = 3, replicas: int = 1) -> None:
        self.workdir = workdir
        self.masters = masters
        self.replicas = replicas
        self.nodes: list[RedisServer] = []

    def url(self, **query: str) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:self.masters])
        tail = "&".join(f"{k}={v}" for k, v in query.items())
        return f"redis+cluster://{hosts}" + (f"?{tail}" if tail else "")

    async def query(self, node: RedisServer, *command: object) -> object:
        client = Redis(host="127.0.0.1", port=node.port, socket_timeout=5,
                       decode_responses=True)
        try:
            return await client.execute_command(*command)  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()

    async def start(self) -> ClusterGroup:
        for _ in range(self.masters * (1 + self.replicas)):
            self.nodes.append(await RedisServer(self.workdir, cluster=True).start())
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed: `.ci/run` installs redis-tools")
        process = await asyncio.create_subprocess_exec(
            cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(process.communicate(), SETUP_DEADLINE)
        if process.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{out.decode()[-2000:]}")
        await _until("the cluster ok on every node", SETUP_DEADLINE, self._healthy)
        return self

    async def _healthy(self) -> bool:
        for node in self.live():
            info = await self.query(node, "CLUSTER", "INFO")
            text = info if isinstance(info, str) else str(info)
            if "cluster_state:ok" not in text or "cluster_slots_ok:16384" not in text:
                return False
        return True

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes
                if n.process is not None and n.process.returncode is None]

    async def node_id(self, node: RedisServer) -> str:
        return str(await self.query(node, "CLUSTER", "MYID"))

    async def keyslot(self, key: str) -> int:
        reply = await self.query(self.live()[0], "CLUSTER", "KEYSLOT", key)
        assert isinstance(reply, int)
        return reply

    async def owner(self, slot: int) -> RedisServer:
        """The master serving `slot`, as a live node sees it."""
        by_port = {n.port: n for n in self.nodes}
        ranges = await self.query(self.live()[0], "CLUSTER", "SLOTS")
        assert isinstance(ranges, list)
        for start, end, master, *_ in ranges:
            if start <= slot <= end:
                return by_port[int(master[1])]
        raise RuntimeError(f"slot {slot} is not served")

    async def masters_now(self) -> list[RedisServer]:
        by_port = {n.port: n for n in self.nodes}
        ranges = await self.query(self.live()[0], "CLUSTER", "SLOTS")
        assert isinstance(ranges, list)
        return list({by_port[int(r[2][1])].port: by_port[int(r[2][1])] for r in ranges}.values())

    async def migrate(self, slot: int, target: RedisServer) -> int:
        """Move `slot` to `target` the way redis-cli's reshard does: IMPORTING/MIGRATING, MIGRATE
        the keys in batches, then SETSLOT NODE on every master. The keys moved."""
        source = await self.owner(slot)
        source_id, target_id = await self.node_id(source), await self.node_id(target)
        await self.query(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        await self.query(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        moved = 0
        while True:
            keys = await self.query(source, "CLUSTER", "GETKEYSINSLOT", slot, 100)
            assert isinstance(keys, list)
            if not keys:
                break
            await self.query(source, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000,
                             "KEYS", *keys)
            moved += len(keys)
        for node in await self.masters_now():
            await self.query(node, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    async def wait_failover(self, slot: int, dead: RedisServer,
                            deadline_s: float = 30.0) -> float:
        """Seconds until a live node serves `slot` (its replica promoted) and the cluster is
        ok again."""
        async def served() -> bool:
            try:
                owner = await self.owner(slot)
            except RuntimeError:
                return False
            return owner is not dead and await self._healthy()

        return await _until("a replica taking over the slot", deadline_s, served)

    async def stop(self) -> None:
        for node in reversed(self.nodes):
            await node.stop()
