"""Encryption at rest (design.md §3.9), for the file store and Redis alike, against the real
provider: stored bytes hold no secret; records are unreadable without the key; rotating to a
new key keeps the same client (old records read, resealed under the new key); a wrong key is
`serve` exit 1 with a clear message, and changes nothing."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography.fernet import Fernet

from dcr_sidecar.app import Sidecar
from dcr_sidecar.config import parse_settings
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.store import open_store
from dcr_sidecar.store.errors import KeyMismatch
from dcr_sidecar.store.records import RecordKey
from tests.conftest import LeakGuard, ProviderFactory, RedisFactory, SidecarFactory
from tests.support.redis_server import RedisServer, command
from tests.support.serve_process import run_command
from tests.test_lifecycle import cc_token

Snapshot = Callable[[], Awaitable[str]]


class Backend:
    """One store backend under test: its config block and its raw stored bytes."""

    def __init__(self, kind: str, tmp_path: Path, redis: RedisServer | None) -> None:
        self.kind, self.tmp_path, self.redis = kind, tmp_path, redis

    def store(self, *keys: str) -> dict[str, Any]:
        if self.redis is not None:
            return {"backend": "redis", "url": self.redis.url, "encryption_keys": list(keys)}
        return {"backend": "file", "path": str(self.tmp_path / "credentials.json"),
                "encryption_keys": list(keys)}

    async def raw(self) -> str:
        """Every stored byte (the file, or every Redis key and value)."""
        if self.redis is None:
            return (self.tmp_path / "credentials.json").read_text()
        names = sorted((await command(self.redis.port, "KEYS", "*")).split())
        return "\n".join([f"{n}={await command(self.redis.port, 'GET', n)}" for n in names])


@pytest.fixture(params=["file", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path,
                  redis_server: RedisFactory) -> Backend:
    redis = await redis_server() if request.param == "redis" else None
    return Backend(str(request.param), tmp_path, redis)


def upstream(issuer: str) -> dict[str, Any]:
    return {"name": "acme", "issuer": issuer, "grant_types": ["client_credentials"]}


async def client_and_token(side: Sidecar, leak_guard: LeakGuard) -> str:
    async with aiohttp.ClientSession() as session:
        status, token = await cc_token(session, side.listen.url)
        assert status == 200, token
        leak_guard.add_token_response(token)
        async with session.get(f"{side.listen.url}/acme/client") as resp:
            return str((await resp.json())["client_id"])


async def held_secrets(side: Sidecar, leak_guard: LeakGuard) -> list[str]:
    snap = side.resolver.snapshot("acme")
    assert snap.credentials is not None
    assert snap.record_key is not None
    record = await side.store.get(snap.record_key)  # the store this sidecar opened
    assert record is not None
    gen = record.get(snap.credentials.generation)
    assert gen is not None
    found = [s.reveal() for s in (gen.client_secret, gen.registration_access_token) if s]
    leak_guard.add(*found)
    return found


async def test_encrypted_records_and_key_rotation(
        oidc: ProviderFactory, sidecar: SidecarFactory, backend: Backend,
        leak_guard: LeakGuard) -> None:
    provider = await oidc()
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    leak_guard.add(old, new)
    first = await sidecar({"store": backend.store(old), "upstreams": [upstream(provider.issuer)]})
    client_id = await client_and_token(first, leak_guard)
    secrets = await held_secrets(first, leak_guard)
    assert len(secrets) == 2  # client_secret and registration_access_token
    await first.stop()
    raw = await backend.raw()
    assert client_id in raw
    assert all(secret not in raw for secret in secrets)

    text = yaml.safe_dump({"version": 1, "store": backend.store()})
    unkeyed = open_store(parse_settings(text, "t.yaml").store)
    with pytest.raises(KeyMismatch):
        await unkeyed.open()
    await unkeyed.close()

    rotated = await sidecar({"store": backend.store(new, old),
                             "upstreams": [upstream(provider.issuer)]})
    assert await client_and_token(rotated, leak_guard) == client_id
    await rotated.stop()
    only_new = await sidecar({"store": backend.store(new),
                              "upstreams": [upstream(provider.issuer)]})
    assert await client_and_token(only_new, leak_guard) == client_id
    assert await held_secrets(only_new, leak_guard) == secrets
    assert (await provider.stats())["registrations"] == 1
    raw = await backend.raw()
    assert all(secret not in raw for secret in secrets)
    reader = open_store(parse_settings(yaml.safe_dump(
        {"version": 1, "store": backend.store(new)}), "t.yaml").store)
    await reader.open()
    record = await reader.get(RecordKey(provider.issuer, "acme"))
    await reader.close()
    assert record is not None
    assert record.generations[0].client_secret == Secret(secrets[0])


async def test_wrong_key_is_exit_1_and_changes_nothing(
        oidc: ProviderFactory, sidecar: SidecarFactory, backend: Backend,
        leak_guard: LeakGuard, tmp_path: Path) -> None:
    provider = await oidc()
    right, wrong = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    leak_guard.add(right, wrong)
    side = await sidecar({"store": backend.store(right),
                          "upstreams": [upstream(provider.issuer)]})
    await client_and_token(side, leak_guard)
    await held_secrets(side, leak_guard)
    await side.stop()
    before = await backend.raw()
    for keys, says in (([wrong], "not the keys the store was encrypted with"),
                       ([], "encryption_keys is empty")):
        config = {"version": 1, "listen": {"port": 0}, "management": {"port": 0},
                  "security": {"allow_http": ["127.0.0.1"],
                               "allow_private_networks": ["127.0.0.1/32"]},
                  "store": backend.store(*keys),
                  "upstreams": [{**upstream(provider.issuer), "prefetch": True}]}
        path = tmp_path / "wrong.yaml"
        path.write_text(yaml.safe_dump(config))
        code, out, err = await run_command("serve", "--config", str(path), deadline=30)
        leak_guard.add_text(out + err)
        assert code == 1, err
        assert "startup_failed" in err
        assert says in err
        assert await backend.raw() == before
        code, out, err = await run_command("doctor", "acme", "--register", "--json",
                                           "--config", str(path), deadline=30)
        leak_guard.add_text(out + err)
        assert code == 1, err
        failed = json.loads(out)["error"]
        assert (failed["step"], failed["error"]) == ("store_read", "temporarily_unavailable")
        assert says in failed["detail"]
        assert await backend.raw() == before
    assert (await provider.stats())["registrations"] == 1
