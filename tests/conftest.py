"""Shared fixtures: the real OpenID provider, in-process sidecars, and the leak guard.

The leak guard is autouse: every test's structlog output (rendered through the production
processors, redaction included) and any subprocess output the test hands it are searched for
every secret the test created and every secret the sidecar handled. So is every response (status
line, headers, body) any in-process management listener served during the test: the guard
observes each management app the test creates (:func:`observe_management`). A hit fails the test.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from dcr_sidecar import app as app_module
from dcr_sidecar import observability
from dcr_sidecar.app import Sidecar
from dcr_sidecar.config import parse_settings
from dcr_sidecar.observability import PROCESS, Holder, Redactor
from dcr_sidecar.store.records import Record
from tests.support.fakes import TOKEN_RESPONSE, FakeServer, FakeServers
from tests.support.oidc import OidcProvider
from tests.support.redis_ha import SentinelGroup
from tests.support.redis_server import RedisServer


class RecordingRedactor(Redactor):
    """The production redactor, also keeping (for the leak guard) every secret it was ever
    told of, those it forgot when their generation was deleted included."""

    __slots__ = ("ever",)

    def __init__(self) -> None:
        super().__init__()
        self.ever: set[str] = set()

    def remember(self, value: Any, holder: Holder = PROCESS) -> None:
        super().remember(value, holder)
        self.ever |= self.known


class LeakGuard:
    """Collects secrets and extra log text; checked when the test ends. `redactor` is the
    test's process redactor: the one logging renders through, to pass to a Sidecar."""

    def __init__(self, stream: io.StringIO, redactor: RecordingRedactor) -> None:
        self.stream = stream
        self.redactor = redactor
        self.secrets: set[str] = set()
        self.texts: list[str] = []
        # (path, what the client received) for every management-listener answer
        self.management: list[tuple[str, str]] = []

    def add(self, *values: object) -> None:
        for value in values:
            if isinstance(value, str) and len(value) >= 8:
                self.secrets.add(value)

    def add_token_response(self, body: dict[str, Any]) -> None:
        self.add(*(body.get(k) for k in ("access_token", "refresh_token", "id_token")))

    def add_store(self, path: Path) -> list[str]:
        """Every plaintext secret in a file store; returns them (sealed ones: add_records)."""
        found: list[str] = []
        for record in json.loads(path.read_text())["records"].values():
            for gen in record["generations"]:
                found += [gen[k] for k in ("client_secret", "registration_access_token",
                                           "private_key") if isinstance(gen.get(k), str)]
                if isinstance(gen.get("private_key"), str):  # the JWK's secret members too
                    jwk = json.loads(gen["private_key"])
                    found += [jwk[m] for m in ("d", "p", "q", "dp", "dq", "qi") if m in jwk]
        self.add(*found)
        return found

    def add_records(self, *records: Record | None) -> list[str]:
        """Every secret of these records (read through a store, sealed or not)."""
        found = [secret.reveal() for record in records if record is not None
                 for gen in record.generations
                 for secret in (gen.client_secret, gen.registration_access_token,
                                gen.private_key) if secret]
        self.add(*found)
        return found

    def add_text(self, text: str) -> None:
        self.texts.append(text)

    def log_text(self) -> str:
        observability.flush_logs()  # the lines waiting for the end of the loop iteration
        return self.stream.getvalue()

    def known(self) -> set[str]:
        return self.secrets | self.redactor.ever

    def leaks(self) -> list[str]:
        text = self.log_text() + "".join(self.texts)
        return sorted(s[:6] + "…" for s in self.known() if s in text)

    def management_leaks(self) -> list[str]:
        """`path: secret…` for every management answer holding a known secret."""
        return sorted({f"{path}: {s[:6]}…" for path, text in self.management
                       for s in self.known() if s in text})

    async def _record(self, request: web.Request, response: web.StreamResponse) -> None:
        head = "".join(f"{k}: {v}\n" for k, v in response.headers.items())
        body = response.body if isinstance(response, web.Response) else None
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else ""
        self.management.append((request.path, f"{response.status} {response.reason}\n"
                                              f"{head}\n{text}"))

    def observe(self, app: web.Application) -> web.Application:
        """Record every answer `app` sends, as sent (after every middleware)."""
        app.on_response_prepare.append(self._record)
        return app


def observe_management(monkeypatch: pytest.MonkeyPatch, guard: LeakGuard) -> None:
    """Every management app created in this test reports its answers to `guard`. The factory
    is wrapped, not replaced: the app is the production one, with one more observer."""
    create = app_module.create_management_app

    def observed(*args: Any, **kwargs: Any) -> web.Application:
        return guard.observe(create(*args, **kwargs))

    monkeypatch.setattr(app_module, "create_management_app", observed)


@pytest.fixture(autouse=True)
def leak_guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[LeakGuard]:
    stream = io.StringIO()
    redactor = RecordingRedactor()
    observability.configure_logging(redactor, "json", "debug", stream)
    guard = LeakGuard(stream, redactor)
    observe_management(monkeypatch, guard)
    yield guard
    leaks, served = guard.leaks(), guard.management_leaks()
    assert not leaks, f"secrets found in logs: {leaks}"
    assert not served, f"secrets found in management-listener responses: {served}"


@pytest.fixture
async def fake_server() -> AsyncIterator[Callable[..., Awaitable[FakeServer]]]:
    """Start in-process fault servers on loopback (stopped at teardown)."""
    started: list[FakeServer] = []

    async def start(host: str = "127.0.0.1") -> FakeServer:
        server = await FakeServer(host).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[RedisServer]]]:
    """Start real redis-server processes on free loopback ports (stopped at teardown)."""
    started: list[RedisServer] = []

    async def start(**kwargs: Any) -> RedisServer:
        server = RedisServer(tmp_path, **kwargs)
        started.append(server)
        return await server.start()

    yield start
    for server in reversed(started):
        await server.stop()


RedisFactory = Callable[..., Awaitable[RedisServer]]
ProviderFactory = Callable[..., Awaitable[OidcProvider]]
FakeFactory = Callable[..., Awaitable[FakeServer]]
SidecarFactory = Callable[..., Awaitable[Sidecar]]


@pytest.fixture
async def oidc() -> AsyncIterator[ProviderFactory]:
    """Start real oidc-provider instances (stopped at teardown)."""
    started: list[OidcProvider] = []

    async def start(**kwargs: Any) -> OidcProvider:
        provider = OidcProvider(**kwargs)
        await provider.start()
        started.append(provider)
        return provider

    yield start
    for provider in started:
        await provider.stop()


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def sidecar_config(tmp_path: Path, extra: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": 1,
        "listen": {"host": "127.0.0.1", "port": 0},
        "management": {"host": "127.0.0.1", "port": 0},
        "security": {"allow_http": ["127.0.0.1"], "allow_private_networks": ["127.0.0.1/32"]},
        "store": {"backend": "file", "path": str(tmp_path / "credentials.json")},
        "shutdown": {"delay": 0, "grace": 2},
        "timeouts": {"connect": 2, "read": 5, "total": 8},
    }
    return deep_merge(base, extra)


@pytest.fixture
async def sidecar(tmp_path: Path, leak_guard: LeakGuard) -> AsyncIterator[SidecarFactory]:
    """Start in-process sidecars from a config dict merged over test defaults (with the
    test's redactor, the one its logging renders through)."""
    running: list[Sidecar] = []

    async def start(extra: dict[str, Any], **kwargs: Any) -> Sidecar:
        """`kwargs` go to :class:`Sidecar` (e.g. `flows=` a flow store with a test clock)."""
        text = yaml.safe_dump(sidecar_config(tmp_path, extra))
        instance = Sidecar(parse_settings(text, "test.yaml"), redactor=leak_guard.redactor,
                           **kwargs)
        await instance.start()
        running.append(instance)
        return instance

    yield start
    for instance in reversed(running):
        await instance.stop()


@pytest.fixture
async def servers(leak_guard: LeakGuard) -> AsyncIterator[FakeServers]:
    """In-process aiohttp servers on loopback addresses (tests/support/fakes.py); the fake
    AS's access token is watched for in the logs like any other secret."""
    leak_guard.add(TOKEN_RESPONSE["access_token"])
    started = FakeServers()
    yield started
    await started.stop()


@pytest.fixture
async def sentinels(tmp_path: Path) -> AsyncIterator[SentinelGroup]:
    """A started Redis master with replicas and sentinels (tests/support/redis_ha.py)."""
    group = SentinelGroup(tmp_path)
    try:
        yield await group.start()
    finally:
        await group.stop()
