"""Fleets of replicas (design.md §3.4): real `serve` processes sharing one redis-server in front of
the real oidc-provider register once; restarts register nothing; `serve` and `doctor
--register` on one file store register once; a lease holder paused past its lease loses the
race, deletes its orphan and adopts the winner.

Timings are printed (pytest -s shows them) for the issue report.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.store.file import FileStore
from dcr_sidecar.store.records import Record, RecordKey
from dcr_sidecar.store.redis import RedisStore
from tests.conftest import (
    FakeFactory,
    LeakGuard,
    ProviderFactory,
    RedisFactory,
    SidecarFactory,
    sidecar_config,
)
from tests.support.fakes import FakeServer, as_metadata
from tests.support.serve_process import ServeProcess, run_command

REPLICAS = 3
CONTACTS = 60


def replica_config(tmp_path: Path, issuer: str, **store: Any) -> dict[str, Any]:
    return sidecar_config(tmp_path, {
        "log": {"format": "json", "level": "info"},
        "store": {"backend": "redis", "url": {"env": "REDIS_URL"}, **store},
        "upstreams": [{"name": "acme", "issuer": issuer,
                       "grant_types": ["client_credentials"]}]})


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def stored_record(url: str, issuer: str) -> Record | None:
    store = RedisStore(Secret(url))
    try:
        return await store.get(RecordKey(issuer, "acme"))
    finally:
        await store.close()


class Fleet:
    """The `serve` processes of one test, with their working directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[ServeProcess] = []

    def add(self, name: str, config: dict[str, Any],
            env: dict[str, str] | None = None) -> ServeProcess:
        process = ServeProcess(self.workdir, name, config, env)
        self.processes.append(process)
        return process


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    """Processes a test starts; all stopped at teardown, whatever happened."""
    started = Fleet(tmp_path)
    yield started
    await asyncio.gather(*(p.stop() for p in started.processes))


async def first_contacts(replicas: list[ServeProcess]) -> tuple[set[str], float]:
    """CONTACTS concurrent GET /acme/client spread round-robin; all must answer 200."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(
            get_json(session, f"{replicas[i % len(replicas)].url}/acme/client")
            for i in range(CONTACTS)))
    elapsed = loop.time() - started
    assert all(status == 200 for status, _ in answers), answers
    return {body["client_id"] for _, body in answers}, elapsed


async def test_three_replicas_register_once_and_restarts_register_nothing(
        oidc: ProviderFactory, redis_server: RedisFactory, tmp_path: Path,
        leak_guard: LeakGuard, fleet: Fleet) -> None:
    provider = await oidc()
    redis = await redis_server()
    env = {"REDIS_URL": redis.url}
    config = replica_config(tmp_path, provider.issuer)
    replicas = [fleet.add(f"replica-{i}", config, env) for i in range(REPLICAS)]
    await asyncio.gather(*(p.start() for p in replicas))

    ids, elapsed = await first_contacts(replicas)
    registrations = (await provider.stats())["registrations"]
    print(f"\nfleet: {CONTACTS} first contacts over {REPLICAS} replicas -> "
          f"{registrations} registration(s), {len(ids)} client_id(s), {elapsed:.2f} s")
    assert len(ids) == 1
    assert registrations == 1
    async with aiohttp.ClientSession() as session:
        for replica in replicas:  # every replica acts as the one client
            async with session.post(f"{replica.url}/acme/token",
                                    data={"grant_type": "client_credentials"}) as resp:
                token = await resp.json()
                assert resp.status == 200, token
                leak_guard.add_token_response(token)

    codes = await asyncio.gather(*(p.stop() for p in replicas))
    assert codes == [0] * REPLICAS
    await asyncio.gather(*(p.start() for p in replicas))
    again, elapsed = await first_contacts(replicas)
    registrations = (await provider.stats())["registrations"]
    print(f"fleet: after restarting all {REPLICAS} -> {registrations} registration(s) in total "
          f"(0 new), {elapsed:.2f} s for {CONTACTS} contacts")
    assert again == ids
    assert registrations == 1
    loaded = sum(len(p.events("credentials_loaded")) for p in replicas)
    registered = sum(len(p.events("client_registered")) for p in replicas)
    assert registered == 1
    assert loaded >= 2 * REPLICAS - 1
    code, out, err = await run_command("doctor", "acme", "--register", "--json", "--config",
                                       str(replicas[0].config_path), env=env)
    leak_guard.add_text(out + err)
    assert code == 0, err
    assert json.loads(out)["client"] | {"checked_at": 0} == {
        "client_id": next(iter(ids)), "generation": 1, "registered_now": False,
        "token_endpoint_auth_method": "client_secret_basic", "client_secret_expires_at": 0,
        "mechanism": "dcr", "checked_at": 0}
    assert (await provider.stats())["registrations"] == 1
    leak_guard.add_records(await stored_record(redis.url, provider.issuer))
    for replica in replicas:
        leak_guard.add_text(replica.output())


def flock_waiters(lock_path: Path) -> int:
    """Processes blocked on an flock of `lock_path`, from /proc/locks ("->" lines)."""
    inode = lock_path.stat().st_ino
    pattern = re.compile(r"->\s+FLOCK\s+\S+\s+\S+\s+\d+\s+[0-9a-f]+:[0-9a-f]+:(\d+)\s")
    return sum(1 for line in Path("/proc/locks").read_text().splitlines()
               if (m := pattern.search(line)) and int(m.group(1)) == inode)


async def test_serve_and_doctor_register_race_on_one_file_store_registers_once(
        oidc: ProviderFactory, tmp_path: Path, leak_guard: LeakGuard,
        fleet: Fleet) -> None:
    """Both processes are made to queue on the per-key file lock (seen in /proc/locks), then
    let go at once: exactly one registration, one client_id for both."""
    provider = await oidc()
    store_path = tmp_path / "credentials.json"
    config = sidecar_config(tmp_path, {
        "log": {"format": "json", "level": "info"},
        "upstreams": [{"name": "acme", "issuer": provider.issuer, "prefetch": True,
                       "grant_types": ["client_credentials"]}]})
    key = RecordKey(provider.issuer, "acme")
    lock_path = FileStore(str(store_path))._lock_path(
        hashlib.sha256(str(key).encode()).hexdigest()[:16])
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held = True
    try:
        serve = await fleet.add("serve", config).start()
        doctor = asyncio.create_task(run_command(
            "doctor", "acme", "--register", "--json", "--config", str(serve.config_path)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while flock_waiters(lock_path) < 2:
            assert not doctor.done(), doctor.result()
            assert loop.time() < deadline, "serve and doctor did not both queue on the lock"
            await asyncio.sleep(0.05)
        fcntl.flock(fd, fcntl.LOCK_UN)
        held = False
        code, out, err = await doctor
    finally:
        if held:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    leak_guard.add_text(out + err)
    assert code == 0, err
    report = json.loads(out)
    async with aiohttp.ClientSession() as session:
        status, client = await get_json(session, f"{serve.url}/acme/client")
    assert status == 200
    registrations = (await provider.stats())["registrations"]
    print(f"\nserve + doctor --register on one file: {registrations} registration(s); "
          f"doctor {'registered' if report['client']['registered_now'] else 'reused'}")
    assert registrations == 1
    assert report["client"]["client_id"] == client["client_id"]
    leak_guard.add_store(store_path)
    leak_guard.add_text(serve.output())


class HoldingAS:
    """An RFC 7591/7592 AS whose first registration POST is held open until released."""

    def __init__(self, fake: FakeServer, leak_guard: LeakGuard) -> None:
        self.fake = fake
        self.release = asyncio.Event()
        self.issued: list[str] = []
        self.deleted: list[str] = []
        self.leak_guard = leak_guard
        fake.json("GET", "/.well-known/oauth-authorization-server", as_metadata(fake.url))
        fake.route("POST", "/register", self.register)
        for n in range(1, 6):
            fake.route("DELETE", f"/reg/client-{n}", self.delete)

    async def register(self, request: web.Request) -> web.StreamResponse:
        number = len(self.issued) + 1
        client_id = f"client-{number}"
        self.issued.append(client_id)
        if number == 1:
            await self.release.wait()
        secret, token = f"holding-secret-{number}-0123456789", f"holding-rat-{number}-0123456"
        self.leak_guard.add(secret, token)
        return web.json_response({
            "client_id": client_id, "client_secret": secret, "client_secret_expires_at": 0,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"], "registration_access_token": token,
            "registration_client_uri": f"{self.fake.url}/reg/{client_id}"}, status=201)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        self.deleted.append(request.path.rsplit("/", 1)[1])
        return web.Response(status=204)


async def test_paused_lease_holder_loses_deletes_its_orphan_and_adopts_the_winner(
        fake_server: FakeFactory, redis_server: RedisFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard, fleet: Fleet) -> None:
    """Replica A (a `serve` process) takes the lease and POSTs; the AS holds the POST; A is
    SIGSTOPped past its lease; replica B takes over and registers; A resumes, its write fails
    the token check, it deletes its client (RFC 7592) and serves B's."""
    holding = HoldingAS(await fake_server(), leak_guard)
    redis = await redis_server()
    store = {"lease": {"ttl": 1.5, "wait": 15}}
    config_a = replica_config(fleet.workdir, holding.fake.url, **store)
    config_a["timeouts"] = {"connect": 5, "read": 60, "total": 90}  # the pause must not time out
    a = await fleet.add("replica-a", config_a, {"REDIS_URL": redis.url}).start()
    b_config = replica_config(fleet.workdir, holding.fake.url, **store)
    b_config["store"]["url"] = redis.url
    b = await sidecar(b_config)

    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
        a_request = asyncio.create_task(get_json(session, f"{a.url}/acme/client"))
        deadline = loop.time() + 20
        while holding.fake.count("POST", "/register") < 1:
            assert loop.time() < deadline, "replica A never sent its registration"
            await asyncio.sleep(0.02)
        os.kill(a.pid, signal.SIGSTOP)
        paused_at = loop.time()
        try:
            status, b_client = await get_json(session, f"{b.listen.url}/acme/client")
            took_over = loop.time() - paused_at
            assert status == 200, b_client
            assert b_client["client_id"] == "client-2"
            holding.release.set()  # A's answer waits in its socket while it is stopped
            await asyncio.sleep(0.2)
        finally:
            os.kill(a.pid, signal.SIGCONT)
        status, a_client = await asyncio.wait_for(a_request, 60)
        assert status == 200, a_client
        assert a_client["client_id"] == "client-2"
        deadline = loop.time() + 20
        while "client-1" not in holding.deleted:
            assert loop.time() < deadline, "the orphan was not deleted"
            await asyncio.sleep(0.05)
        status, a_again = await get_json(session, f"{a.url}/acme/client")
        assert a_again["client_id"] == "client-2"
    print(f"\nlease loss: B took over {took_over:.2f} s after A paused; registrations "
          f"{len(holding.issued)} (A's orphan deleted: {holding.deleted})")
    record = await stored_record(redis.url, holding.fake.url)
    assert record is not None
    assert [g.client_id for g in record.generations] == ["client-2"]
    assert holding.issued == ["client-1", "client-2"]
    assert holding.deleted == ["client-1"]
    assert await a.stop() == 0
    assert [e["client_id"] for e in a.events("orphan_deleted")] == ["client-1"]
    assert a.events("lease_lost")
    assert not a.events("client_registered")
    leak_guard.add_text(a.output())


async def test_wrong_store_url_credentials_do_not_leak_in_serve_output(
        redis_server: RedisFactory, oidc: ProviderFactory, tmp_path: Path,
        leak_guard: LeakGuard, fleet: Fleet) -> None:
    """A password-protected Redis reached with a wrong password: the replica starts, 503s new
    resolutions, and its output never holds either password."""
    password, wrong = "fleet-redis-pass-0123456", "fleet-wrong-pass-0123456"
    leak_guard.add(password, wrong)
    provider = await oidc()
    redis = await redis_server(password=password)
    config = replica_config(tmp_path, provider.issuer)
    replica = await fleet.add("replica", config,
                              {"REDIS_URL": redis.url.replace(password, wrong)}).start()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{replica.url}/acme/client") as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert "Retry-After" in resp.headers
        status, ready = await get_json(session, f"{replica.mgmt_url}/readyz")
    assert status == 200  # nothing is required
    assert ready["store"]["ok"] is False
    assert await replica.stop() == 0
    leak_guard.add_text(replica.output() + json.dumps(ready) + json.dumps(body))
