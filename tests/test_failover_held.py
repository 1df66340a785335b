"""A Redis failover that does not finish (design.md §3.4, §4.1): with no master reachable, a
re-read of the shared record is retried for up to `store.lease.wait`. A request that finds
its held record older than the staleness bound must not wait on that re-read: it is served
with the credentials held (still valid) while the re-read runs behind it, one at a time.

Real sentinels, master and replicas (tests/support/redis_ha.py), the real oidc-provider. The
bound asserted is derived from the settings, not a speed target: with `lease.wait` set to
10 s, each request must be answered before half of it has passed — a request that waited on
the re-read would take the whole wait."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.support.redis_ha import SentinelGroup
from tests.support.waiting import until
from tests.test_failover import sentinel_config
from tests.test_lifecycle import cc_token

LEASE_WAIT = 10.0  # store.lease.wait: how long a re-read retries while no master answers
BOUND = 0.5  # the staleness bound (max_record_age), lowered from 30 s
REQUESTS = 8


def config(group: SentinelGroup, issuer: str) -> dict[str, Any]:
    settings = sentinel_config(group, issuer)
    settings["store"]["lease"]["wait"] = LEASE_WAIT
    settings["backoff"] = {"base": 0.2, "cap": 0.5}
    return settings


async def test_requests_are_served_from_held_credentials_while_the_store_has_no_master(
        sentinels: SentinelGroup, oidc: ProviderFactory, sidecar: SidecarFactory,
        leak_guard: LeakGuard) -> None:
    provider = await oidc()
    side = await sidecar(config(sentinels, provider.issuer), max_record_age=BOUND)
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=LEASE_WAIT * 3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        status, body = await cc_token(session, side.listen.url)
        assert status == 200, body
        leak_guard.add_token_response(body)

        # No master anywhere: the master and every replica SIGKILLed, so the sentinels have
        # nobody to promote and every store command is retried until LEASE_WAIT.
        await sentinels.kill_master()
        for replica in sentinels.replicas:
            await replica.kill()

        def aged() -> bool:
            return side.resolver.snapshot("acme").record_age >= BOUND

        answered: list[float] = []
        for _ in range(REQUESTS):  # bounded in count; each one bounded by the client timeout
            await until(aged, "the held record older than the staleness bound", 5)
            sent = loop.time()
            status, body = await cc_token(session, side.listen.url)
            answered.append(loop.time() - sent)
            assert status == 200, body
            leak_guard.add_token_response(body)
            assert answered[-1] < LEASE_WAIT / 2, (
                f"a request waited {answered[-1]:.2f} s on the re-read (lease.wait "
                f"{LEASE_WAIT} s): {answered}")
            await asyncio.sleep(BOUND / 4)  # spread the requests over several bounds
    print(f"\nno master for {REQUESTS} requests: slowest answer {max(answered):.3f} s "
          f"(lease.wait {LEASE_WAIT} s)")
    snap = side.resolver.snapshot("acme")
    assert snap.record_age >= BOUND  # nothing was re-read: the store never answered
    assert (await provider.stats())["registrations"] == 1
