"""Chaos soak (issue 14): a fleet under faults, its invariants checked and printed as a table.

    python -m tests.chaos --duration 300     # `make chaos` (at most 5 minutes)
    tests/test_chaos.py                      # the 60-second variant, part of `make test`

Everything runs on loopback: three `serve` replicas (real processes) with five upstreams on the
real oidc-provider whose secrets expire every 20 s (renewed by RFC 7592 PUT), Redis behind
Sentinel (a master, two replicas, three sentinels), and a bounded load of token requests:
client_credentials on every upstream, and on the first one every other request a
refresh_token grant with a refresh token from a person's login (authorization code + PKCE)
made through the sidecar before the faults start.

The fault schedule (times scale with the duration):

    10 %  SIGKILL replica-0, restarted 3 s later
    25 %  Redis master SIGKILLed (Sentinel failover); the old master restarted as a replica
    45 %  Redis stopped for 10 s (every Redis process and sentinel SIGSTOPped)
    60 %  the AS answers 503 for 4 s, then 429 for 4 s (Retry-After: 1)
    75 %  configuration reload (SIGHUP) of replica-1
    85 %  SIGKILL replica-2, restarted 3 s later

Invariants, checked continuously and at the end:

- every app request got 200, or 503 with Retry-After (the sidecar's own, or the AS's burst
  passed through) — never a 500, never a 502, nothing else; a request to a replica killed at
  that moment is counted apart (its app is down with it);
- live registrations per upstream at the AS ≤ 1 + that upstream's later generations
  (rotations), and no live client at the AS that no record names (an orphan);
- replicas serve the same client_id per upstream within the staleness bound (30 s);
- no secret (client secret, registration access token, initial access token, access token
  sampled from answers) in any process output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.resolver import MAX_RECORD_AGE
from dcr_sidecar.store.records import Record, RecordKey
from dcr_sidecar.store.redis import RedisStore
from tests.conftest import sidecar_config
from tests.flows import REDIRECT_URI, authlib_login, get_json
from tests.support.oidc import OidcProvider
from tests.support.redis_ha import SentinelGroup
from tests.support.serve_process import ServeProcess

UPSTREAMS = [f"up{n}" for n in range(1, 6)]
IAT = "chaos-initial-access-token-0123456789"
SECRET_LIFETIME = 20
STALENESS_BOUND = MAX_RECORD_AGE  # the replicas run with the default bound
WORKERS = 3
PAUSE = 0.1  # seconds between one worker's requests: about 25 requests/s in all
MAX_DURATION = 300.0
SETTLE = 5.0  # seconds after the load stops before the final checks


@dataclass
class Observed:
    started: float = field(default_factory=time.monotonic)
    statuses: Counter[str] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    samples: dict[str, list[tuple[float, frozenset[str]]]] = field(
        default_factory=lambda: defaultdict(list))
    secrets: set[str] = field(default_factory=lambda: {IAT})
    faults: list[tuple[float, str]] = field(default_factory=list)

    def at(self) -> float:
        return time.monotonic() - self.started


@dataclass(frozen=True)
class Invariant:
    name: str
    observed: str
    holds: bool


class Chaos:
    def __init__(self, workdir: Path, duration: float) -> None:
        self.workdir = workdir
        self.duration = min(duration, MAX_DURATION)
        self.group = SentinelGroup(workdir / "redis")
        self.provider = OidcProvider(iat=IAT, secret_expires_in=SECRET_LIFETIME)
        self.replicas: list[ServeProcess] = []
        self.down: set[str] = set()  # replicas killed right now
        self.seen = Observed()
        self.stop = asyncio.Event()
        self.store: RedisStore | None = None
        self.refresh_token = ""
        self.relogging: asyncio.Task[None] | None = None
        self.invalid_grants: list[float] = []  # wall clock

    # ---------------------------------------------------------------- set-up

    async def start(self) -> None:
        (self.workdir / "redis").mkdir(parents=True, exist_ok=True)
        await self.group.start()
        await self.provider.start()
        config = sidecar_config(self.workdir, {
            "log": {"format": "json", "level": "info"},
            "store": {"backend": "redis", "url": {"env": "REDIS_URL"},
                      "lease": {"ttl": 10, "wait": 15}},
            "timeouts": {"connect": 2, "read": 10, "total": 20},
            "upstreams": [{"name": name, "issuer": self.provider.issuer,
                           "grant_types": ["client_credentials"],
                           "initial_access_token": IAT} for name in UPSTREAMS]})
        # The first upstream also serves a person's login, so the load can refresh tokens.
        config["upstreams"][0].update({
            "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
            "redirect_uris": [REDIRECT_URI], "scopes": ["openid", "offline_access"]})
        env = {"REDIS_URL": self.group.url()}
        self.replicas = [ServeProcess(self.workdir, f"replica-{n}", config, env)
                         for n in range(3)]
        await asyncio.gather(*(r.start() for r in self.replicas))
        await self.login()

    async def login(self) -> None:
        """A person's login through a live replica: the refresh token the load uses."""
        replica = next(r for r in self.replicas if r.name not in self.down)
        base = f"{replica.url}/{UPSTREAMS[0]}"
        client_id = (await get_json(f"{base}/client"))["client_id"]
        _, token = await authlib_login(f"{base}/.well-known/openid-configuration", client_id,
                                       scope="openid offline_access")
        self.refresh_token = token["refresh_token"]
        self.seen.secrets |= {token["refresh_token"], token["access_token"]}

    async def relogin(self) -> None:
        """After an invalid_grant: log in again (bounded tries; a fault may be under way)."""
        for _ in range(20):
            try:
                await self.login()
                break
            except Exception:  # any failure (a fault may be under way): try again shortly
                await asyncio.sleep(1)
        self.relogging = None

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
        await asyncio.gather(*(r.stop() for r in self.replicas), return_exceptions=True)
        await self.provider.stop()
        await self.group.stop()

    # ---------------------------------------------------------------- load and sampling

    async def worker(self, session: aiohttp.ClientSession, n: int) -> None:
        count = 0
        while not self.stop.is_set() and count < 100_000:
            replica = self.replicas[(n + count) % len(self.replicas)]
            upstream = UPSTREAMS[count % len(UPSTREAMS)]
            count += 1
            down = replica.name in self.down
            form = {"grant_type": "client_credentials"}
            if upstream == UPSTREAMS[0] and count % 2 and self.relogging is None:
                form = {"grant_type": "refresh_token", "refresh_token": self.refresh_token}
            try:
                async with session.post(f"{replica.url}/{upstream}/token", data=form) as resp:
                    body = await resp.json(content_type=None)
                    self.judge(resp.status, resp.headers, body, replica.name, upstream)
            except (aiohttp.ClientConnectionError, TimeoutError):
                if down or replica.name in self.down:
                    self.seen.statuses["replica killed (connection refused)"] += 1
                else:
                    self.seen.statuses["connection error"] += 1
                    self.seen.violations.append(
                        f"{self.seen.at():.1f}s {replica.name} {upstream}: connection error")
            await asyncio.sleep(PAUSE)

    def judge(self, status: int, headers: Any, body: Any, replica: str, upstream: str) -> None:
        detail = body.get("error_description", "") if isinstance(body, dict) else ""
        if status == 200:
            self.seen.statuses["200"] += 1
            if isinstance(body, dict) and body.get("refresh_token"):  # rotated: use the new one
                self.refresh_token = body["refresh_token"]
                self.seen.secrets.add(self.refresh_token)
            token = body.get("access_token") if isinstance(body, dict) else None
            if token and self.seen.statuses["200"] % 200 == 1:
                self.seen.secrets.add(token)
            return
        if status in (503, 429) and detail == "test fault" and "Retry-After" in headers:
            self.seen.statuses[f"{status} AS burst passed through"] += 1
            return
        if status == 503 and "Retry-After" in headers:
            self.seen.statuses["503 + Retry-After"] += 1
            return
        if status == 400 and isinstance(body, dict) and body.get("error") == "invalid_grant" \
                and upstream == UPSTREAMS[0]:
            # Judged at the end: allowed only once the client the token was issued to was
            # superseded (its secret expired); the app's person logs in again.
            self.seen.statuses["400 invalid_grant (refresh)"] += 1
            self.invalid_grants.append(time.time())
            if self.relogging is None:
                self.relogging = asyncio.create_task(self.relogin())
            return
        self.seen.statuses[str(status)] += 1
        self.seen.violations.append(f"{self.seen.at():.1f}s {replica} {upstream}: {status} "
                                    f"{str(body)[:200]}")

    async def sampler(self, session: aiohttp.ClientSession) -> None:
        while not self.stop.is_set():
            for upstream in UPSTREAMS:
                ids: set[str] = set()
                for replica in self.replicas:
                    if replica.name in self.down:
                        continue
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                        async with session.get(f"{replica.url}/{upstream}/client") as resp:
                            if resp.status == 200:
                                ids.add((await resp.json())["client_id"])
                if ids:
                    self.seen.samples[upstream].append((self.seen.at(), frozenset(ids)))
            await self.collect_secrets()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), 1.0)

    async def records(self) -> dict[str, Record]:
        if self.store is None:  # one client for the whole run, following failovers
            self.store = RedisStore(Secret(self.group.url()), lease_wait=2)
        found = {}
        for upstream in UPSTREAMS:
            record = await self.store.get(RecordKey(self.provider.issuer, upstream))
            if record is not None:
                found[upstream] = record
        return found

    async def collect_secrets(self) -> None:
        with contextlib.suppress(Exception):  # the store may be down: that is a fault
            for record in (await self.records()).values():
                for gen in record.generations:
                    for secret in (gen.client_secret, gen.registration_access_token):
                        if secret is not None:
                            self.seen.secrets.add(secret.reveal())

    # ---------------------------------------------------------------- faults

    def schedule(self) -> list[tuple[float, str, Callable[[], Awaitable[None]]]]:
        d = self.duration
        return [(0.10 * d, "SIGKILL replica-0, restart after 3 s", lambda: self.bounce(0)),
                (0.25 * d, "Redis master SIGKILLed (Sentinel failover)", self.failover),
                (0.45 * d, "Redis stopped for 10 s (SIGSTOP)", self.redis_stopped),
                (0.60 * d, "AS 503 for 4 s, then 429 for 4 s", self.as_burst),
                (0.75 * d, "config reload (SIGHUP) of replica-1", self.reload),
                (0.85 * d, "SIGKILL replica-2, restart after 3 s", lambda: self.bounce(2))]

    async def faults(self) -> None:
        for at, name, act in self.schedule():
            await self.sleep_until(at)
            self.seen.faults.append((self.seen.at(), name))
            await act()

    async def sleep_until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.seen.at()))

    async def bounce(self, n: int) -> None:
        replica = self.replicas[n]
        self.down.add(replica.name)
        os.kill(replica.pid, signal.SIGKILL)
        await replica.wait()
        await asyncio.sleep(3)
        await replica.start()
        self.down.discard(replica.name)

    async def failover(self) -> None:
        old = self.group.master
        await self.group.kill_master()
        await self.group.wait_promoted()
        if old is not None:  # back as a replica (the sentinels reconfigure it)
            await old.start()
            self.group.dead.remove(old)
            self.group.replicas.append(old)

    async def redis_stopped(self) -> None:
        pids = [s.process.pid for s in self.group.servers
                if s.process is not None and s.process.returncode is None]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(10)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)

    async def as_burst(self) -> None:
        await self.provider.fault(503, 4)
        await asyncio.sleep(5)
        await self.provider.fault(429, 4)
        await asyncio.sleep(4)

    async def reload(self) -> None:
        os.kill(self.replicas[1].pid, signal.SIGHUP)

    # ---------------------------------------------------------------- the run

    async def run(self) -> list[Invariant]:
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            self.seen = Observed()
            tasks = [asyncio.create_task(self.worker(session, n)) for n in range(WORKERS)]
            tasks.append(asyncio.create_task(self.sampler(session)))
            faults = asyncio.create_task(self.faults())
            await self.sleep_until(self.duration)
            await faults
            self.stop.set()
            await asyncio.gather(*tasks)
            if self.relogging is not None:
                await self.relogging
        await asyncio.sleep(SETTLE)
        await self.collect_secrets()
        return await self.invariants()

    async def invariants(self) -> list[Invariant]:
        return [self.requests_invariant(), await self.refresh_invariant(),
                *await self.registration_invariants(), self.agreement_invariant(),
                self.leak_invariant()]

    async def refresh_invariant(self) -> Invariant:
        """A refresh token fails (invalid_grant, relayed from the AS) only after the client it
        was issued to was superseded: a new generation registered because its secret expired
        (design.md §3.4 warns that a new generation can log users out)."""
        record = (await self.records()).get(UPSTREAMS[0])
        # When each later generation was registered (received_at moves with every renewal).
        superseded = [g.client_id_issued_at or g.received_at for g in record.generations
                      if g.generation > 1] if record else []
        first = min(self.invalid_grants, default=None)
        holds = first is None or bool(superseded and min(superseded) <= first + 1)
        observed = "none" if first is None else (
            f"{len(self.invalid_grants)} after {UPSTREAMS[0]}'s client was superseded "
            f"({len(superseded)} new generation(s)); the person logged in again")
        return Invariant("refresh: invalid_grant only for a superseded client", observed, holds)

    def requests_invariant(self) -> Invariant:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.seen.statuses.items()))
        return Invariant("app requests: 200, or 503 + Retry-After (no 500/502)", counts,
                         not self.seen.violations)

    async def registration_invariants(self) -> list[Invariant]:
        records = await self.records()
        stats = await self.provider.stats()
        live = set(stats["clients"])
        named = {g.client_id: up for up, r in records.items() for g in r.generations}
        per_upstream = []
        holds = True
        for upstream in UPSTREAMS:
            record = records.get(upstream)
            generations = len(record.generations) if record else 0
            rotations = max(0, max((g.generation for g in record.generations), default=1) - 1) \
                if record else 0
            alive = sum(1 for c in live if named.get(c) == upstream)
            holds &= alive <= 1 + rotations
            per_upstream.append(f"{upstream} {alive}≤1+{rotations} (gens {generations})")
        orphans = sorted(live - set(named))
        return [Invariant("live registrations per upstream ≤ 1 + rotations",
                          "; ".join(per_upstream) + f"; registrations {stats['registrations']}",
                          holds),
                Invariant("no orphan at the AS (live but in no record)",
                          f"{len(orphans)} orphan(s) of {len(live)} live", not orphans)]

    def agreement_invariant(self) -> Invariant:
        longest = 0.0
        for samples in self.seen.samples.values():
            since: float | None = None
            for at, ids in samples:
                if len(ids) > 1:
                    since = at if since is None else since
                    longest = max(longest, at - since)
                else:
                    since = None
        return Invariant(f"replicas serve one client within the bound ({STALENESS_BOUND:g} s)",
                         f"longest disagreement {longest:.1f} s", longest <= STALENESS_BOUND)

    def leak_invariant(self) -> Invariant:
        text = "".join(r.output() for r in self.replicas)
        leaked = sorted(s for s in self.seen.secrets if s and s in text)
        return Invariant("secrets in any log", f"{len(leaked)} of {len(self.seen.secrets)} "
                         "watched secrets found", not leaked)


def table(invariants: list[Invariant], faults: list[tuple[float, str]], duration: float) -> str:
    lines = [f"chaos soak: {duration:g} s, 3 replicas, {len(UPSTREAMS)} upstreams, secrets "
             f"expiring every {SECRET_LIFETIME} s", "", "fault schedule:"]
    lines += [f"  {at:6.1f} s  {name}" for at, name in faults]
    width = max(len(i.name) for i in invariants)
    lines += ["", f"  {'invariant':<{width}}  holds  observed"]
    lines += [f"  {i.name:<{width}}  {'yes' if i.holds else 'NO':<5}  {i.observed}"
              for i in invariants]
    return "\n".join(lines)


async def soak(workdir: Path, duration: float) -> tuple[list[Invariant], Chaos]:
    chaos = Chaos(workdir, duration)
    try:
        await chaos.start()
        return await chaos.run(), chaos
    finally:
        await chaos.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=MAX_DURATION,
                        help=f"seconds of load and faults (at most {MAX_DURATION:g})")
    args = parser.parse_args()
    # The harness's own store client logs each wait for a master: only warnings here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="dcr-chaos-") as tmp:
        invariants, chaos = asyncio.run(soak(Path(tmp), args.duration))
        print(table(invariants, chaos.seen.faults, chaos.duration))
        for violation in chaos.seen.violations[:20]:
            print(f"  violation: {violation}")
    return 0 if all(i.holds for i in invariants) else 1


if __name__ == "__main__":
    sys.exit(main())
