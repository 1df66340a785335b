"""design.md §3.10 lifecycle: SIGTERM keeps serving, then drains in-flight requests and exits 0;
SIGHUP and a changed config file (ConfigMap-style symlink swap) reload what is reloadable,
reject an invalid file and keep credentials."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from dcr_sidecar.app import Sidecar
from dcr_sidecar.config import load_settings
from dcr_sidecar.lifecycle import ConfigWatcher
from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory, sidecar_config
from tests.support.fakes import FakeServer
from tests.support.recording_as import RecordingAS
from tests.support.serve_process import ServeProcess
from tests.test_cli import wait_http
from tests.test_demo_e2e import free_port
from tests.test_metrics import cc_upstream, token

SLOW_S = 1.5
DELAY_S = 1.0
BURST = 16  # below limits.connections_per_upstream (20), so the late call is not queued


def json_line(line: str) -> dict[str, Any]:
    """One JSON log line parsed (its spacing is the renderer's business); {} for other text."""
    try:
        parsed = json.loads(line)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], what: str,
                   deadline_s: float = 15.0) -> None:
    """Poll `condition` every 50 ms until it holds; fail after `deadline_s`."""
    deadline = time.monotonic() + deadline_s
    while True:
        result = condition()
        if result if isinstance(result, bool) else await result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        await asyncio.sleep(0.05)


class SlowTokenServer:
    """An AS token endpoint that takes SLOW_S to answer; counts arrivals and answers."""

    def __init__(self) -> None:
        self.arrived = 0
        self.answered = 0

    async def token(self, request: web.Request) -> web.Response:
        self.arrived += 1
        await request.post()
        await asyncio.sleep(SLOW_S)  # the AS is slow by design: this is what is drained
        self.answered += 1
        return web.json_response({"access_token": f"at-{self.arrived}-slow-token",
                                  "token_type": "Bearer", "expires_in": 60})


@pytest.fixture
async def slow_as() -> AsyncIterator[tuple[SlowTokenServer, str]]:
    server = SlowTokenServer()
    fake = await FakeServer().start([("POST", "/token", server.token)])
    yield server, fake.base
    await fake.stop()


async def test_sigterm_keeps_serving_then_drains_every_in_flight_request_and_exits_0(
        slow_as: tuple[SlowTokenServer, str], tmp_path: Path, leak_guard: LeakGuard) -> None:
    """A burst of slow token calls, SIGTERM while they are in flight, one more call during
    `shutdown.delay`; once the delay is over, new connections are refused while the calls
    still in flight drain. Every call completes with 200 and the process exits 0."""
    server, base = slow_as
    port, mgmt = free_port(), free_port()
    leak_guard.add("static-secret-for-drain")
    config = sidecar_config(tmp_path, {
        "listen": {"port": port}, "management": {"port": mgmt},
        "shutdown": {"delay": DELAY_S, "grace": 10},
        "upstreams": [{"name": "slow", "issuer": base, "client_id": "static-client",
                       "client_secret": "static-secret-for-drain",
                       "grant_types": ["client_credentials"],
                       "endpoints": {"token_endpoint": f"{base}/token"}}]})
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcr_sidecar", "serve", "--config", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []

    async def collect(stream: asyncio.StreamReader) -> None:
        async for line in stream:
            lines.append(line.decode())

    collector = asyncio.create_task(collect(proc.stderr))

    def logged(event: str) -> bool:
        return any(json_line(line).get("event") == event for line in lines)

    url = f"http://127.0.0.1:{port}/slow/token"
    form = {"grant_type": "client_credentials"}
    try:
        await wait_http(f"http://127.0.0.1:{mgmt}/healthz")
        async with aiohttp.ClientSession() as session:

            async def call() -> int:
                async with session.post(url, data=form) as resp:
                    await resp.read()
                    return resp.status

            burst = [asyncio.create_task(call()) for _ in range(BURST)]
            await wait_for(lambda: server.arrived == BURST, "the burst to reach the AS")
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            await wait_for(lambda: logged("shutdown_started"), "SIGTERM to be handled")
            late = asyncio.create_task(call())  # inside shutdown.delay: still served
            await wait_for(lambda: server.arrived == BURST + 1, "the late call to reach the AS")
            await wait_for(lambda: logged("shutdown_draining"), "the delay to end")
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                    force_close=True)) as fresh:
                with pytest.raises(aiohttp.ClientConnectorError):
                    await fresh.post(url, data=form)
            statuses = await asyncio.wait_for(asyncio.gather(*burst, late), 20)
        await asyncio.wait_for(proc.wait(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await collector
    exited = time.monotonic() - signalled
    assert statuses == [200] * (BURST + 1)
    assert server.answered == BURST + 1
    assert proc.returncode == 0
    logs = "".join(lines)
    leak_guard.add_text(logs)
    events = [json.loads(line) for line in lines if line.startswith("{")]
    names = [e["event"] for e in events]
    assert names.index("shutdown_started") < names.index("shutdown_complete")
    draining = next(e for e in events if e["event"] == "shutdown_draining")
    assert draining["in_flight"] >= 1  # the drain had work to wait for
    assert "shutdown_grace_expired" not in names
    assert DELAY_S < exited < DELAY_S + 10, exited
    print(f"drain: {BURST + 1} slow calls, {draining['in_flight']} in flight when the delay "
          f"ended, all 200; exit {exited:.2f} s after SIGTERM (delay {DELAY_S} s)")


# ------------------------------------------------------------------------------ reload

def write_configmap(root: Path, config: dict[str, Any], version: int) -> Path:
    """Lay out a file like a mounted ConfigMap and swap it atomically as the kubelet does:
    sidecar.yaml -> ..data/sidecar.yaml, ..data -> ..<version> (replaced by a rename)."""
    versioned = root / f"..v{version}"
    versioned.mkdir()
    (versioned / "sidecar.yaml").write_text(yaml.safe_dump(config))
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(versioned.name)
    os.replace(tmp_link, root / "..data")
    link = root / "sidecar.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/sidecar.yaml")
    return link


@pytest.fixture
async def watched(tmp_path: Path, leak_guard: LeakGuard) -> AsyncIterator[Callable[
        [dict[str, Any]], Awaitable[tuple[Sidecar, ConfigWatcher, Path]]]]:
    """A sidecar started from a ConfigMap-style file, with a fast-polling watcher."""
    started: list[tuple[Sidecar, asyncio.Task[None]]] = []

    async def start(extra: dict[str, Any]) -> tuple[Sidecar, ConfigWatcher, Path]:
        root = tmp_path / "configmap"
        root.mkdir()
        path = write_configmap(root, sidecar_config(tmp_path, extra), 1)
        side = Sidecar(load_settings(str(path)), redactor=leak_guard.redactor)
        await side.start()
        watcher = ConfigWatcher(side, str(path), interval_s=0.1)
        started.append((side, asyncio.create_task(watcher.run())))
        return side, watcher, path

    yield start
    for side, task in started:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await side.stop()


def events(leak_guard: LeakGuard, name: str) -> list[dict[str, Any]]:
    lines = leak_guard.log_text().splitlines()
    return [e for e in (json.loads(line) for line in lines if line.startswith("{"))
            if e["event"] == name]


async def test_file_change_adds_an_upstream_and_keeps_the_other_s_credentials(
        oidc: ProviderFactory, watched: Any, tmp_path: Path, leak_guard: LeakGuard) -> None:
    """A ConfigMap swap adds upstream b: a keeps its cached credentials (zero new
    registrations for it), b registers on first use; the removed-later a stays in the store."""
    provider = await oidc()
    side, _, path = await watched({"upstreams": [cc_upstream(provider.issuer, name="a")]})
    leak_guard.add_token_response(await token(side, "a"))
    cached = side.resolver.cached("a")
    assert cached is not None
    registrations_before = (await provider.stats())["registrations"]
    write_configmap(path.parent, sidecar_config(tmp_path, {"upstreams": [
        cc_upstream(provider.issuer, name="a"), cc_upstream(provider.issuer, name="b")]}), 2)
    await wait_for(lambda: "b" in side.resolver.names(), "the reload to add b")
    assert side.runtime.settings.upstream("b") is not None
    assert side.resolver.cached("a") is cached
    leak_guard.add_token_response(await token(side, "a"))
    assert (await provider.stats())["registrations"] == registrations_before
    leak_guard.add_token_response(await token(side, "b"))
    stats = await provider.stats()
    assert stats["registrations"] == registrations_before + 1
    assert events(leak_guard, "config_reloaded")[-1]["upstreams_added"] == ["b"]

    # Removing a: its routes go, its credentials stay in the store.
    write_configmap(path.parent, sidecar_config(tmp_path, {"upstreams": [
        cc_upstream(provider.issuer, name="b")]}), 3)
    await wait_for(lambda: "a" not in side.resolver.names(), "the reload to remove a")
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/a/client") as resp:
        assert resp.status == 404
    records = json.loads((tmp_path / "credentials.json").read_text())["records"]
    assert f"a {provider.issuer}" in records
    leak_guard.add_store(tmp_path / "credentials.json")


async def test_invalid_new_config_is_rejected_and_the_old_keeps_serving(
        oidc: ProviderFactory, watched: Any, tmp_path: Path, leak_guard: LeakGuard) -> None:
    provider = await oidc()
    side, _, path = await watched({"upstreams": [cc_upstream(provider.issuer, name="a")]})
    bad = sidecar_config(tmp_path, {"upstreams": [cc_upstream("http://as.example", name="a")]})
    write_configmap(path.parent, bad, 2)
    await wait_for(lambda: bool(events(leak_guard, "config_reload_rejected")),
                   "the rejection to be logged")
    detail = events(leak_guard, "config_reload_rejected")[0]["detail"]
    assert str(path) in detail
    assert "upstreams[0].issuer" in detail
    assert "'http://as.example'" in detail
    running = side.runtime.settings.upstream("a")
    assert running is not None
    assert running.issuer == provider.issuer
    leak_guard.add_token_response(await token(side, "a"))
    # The same bad content is judged once, not every poll.
    polls_later = time.monotonic() + 0.5
    await wait_for(lambda: time.monotonic() > polls_later, "a few polls")
    assert len(events(leak_guard, "config_reload_rejected")) == 1


async def test_restart_only_keys_are_logged_and_not_applied(
        watched: Any, tmp_path: Path, leak_guard: LeakGuard) -> None:
    side, watcher, path = await watched({"log": {"level": "debug"}})
    bound = side.management.port
    changed = sidecar_config(tmp_path, {"management": {"port": free_port()},
                                        "timeouts": {"total": 3},
                                        "limits": {"connections_per_upstream": 5},
                                        "shutdown": {"delay": 0, "grace": 7},
                                        "log": {"format": "console", "level": "debug"}})
    write_configmap(path.parent, changed, 2)
    assert watcher.reload("test")  # also the SIGHUP path: reload now, without waiting
    warning = events(leak_guard, "config_reload_restart_required")[-1]
    assert warning["keys"] == ["management", "log.format"]
    applied = side.runtime.settings
    assert applied.management.port == 0
    assert applied.log.format == "json"
    assert applied.timeouts.total == 3
    assert applied.shutdown.grace == 7
    assert side.outbound.settings is applied
    assert side.resolver.settings is applied
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{bound}/healthz") as resp:
        assert resp.status == 200


async def test_sighup_reloads_the_running_process(
        oidc: ProviderFactory, tmp_path: Path, leak_guard: LeakGuard) -> None:
    """`serve` as a real process: SIGHUP applies a new upstream (the poll is slowed down to
    an hour, so only the signal can have done it)."""
    provider = await oidc()
    port, mgmt = free_port(), free_port()
    base = {"listen": {"port": port}, "management": {"port": mgmt}}
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(sidecar_config(tmp_path, {
        **base, "upstreams": [cc_upstream(provider.issuer, name="a")]})))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcr_sidecar", "serve", "--config", str(path),
        env={**os.environ, "DCR_SIDECAR_CONFIG_POLL_INTERVAL": "3600"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_http(f"http://127.0.0.1:{mgmt}/healthz")
        path.write_text(yaml.safe_dump(sidecar_config(tmp_path, {**base, "upstreams": [
            cc_upstream(provider.issuer, name="a"), cc_upstream(provider.issuer, name="b")]})))
        proc.send_signal(signal.SIGHUP)

        async def b_served() -> bool:
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{port}/b/client") as resp:
                return resp.status == 200

        await wait_for(b_served, "upstream b to be served after SIGHUP")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    leak_guard.add_text(err.decode() + out.decode())
    leak_guard.add_store(tmp_path / "credentials.json")
    assert any(json_line(line).get("trigger") == "sighup" for line in err.decode().splitlines())


@pytest.mark.parametrize("store", [{"backend": "memory"}, {"backend": "file", "ephemeral": True}],
                         ids=["memory", "file-ephemeral"])
async def test_ephemeral_store_deletes_its_clients_on_shutdown(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard,
        store: dict[str, Any]) -> None:
    """Storage that dies with the pod: a clean stop deletes the registered client at the AS."""
    provider = await oidc()
    side = await sidecar({"store": store, "upstreams": [cc_upstream(provider.issuer)]})
    leak_guard.add_token_response(await token(side))
    creds = side.resolver.cached("acme")
    assert creds is not None
    client_id = creds.client_id
    await side.stop()
    stats = await provider.stats()
    assert stats["deleted"] == [client_id]
    assert client_id not in stats["clients"]


async def test_durable_store_keeps_its_clients_on_shutdown(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    provider = await oidc()
    side = await sidecar({"upstreams": [cc_upstream(provider.issuer)]})
    leak_guard.add_token_response(await token(side))
    await side.stop()
    assert (await provider.stats())["deleted"] == []


async def test_changed_required_upstream_is_resolved_again_from_the_store(
        oidc: ProviderFactory, watched: Any, tmp_path: Path, leak_guard: LeakGuard) -> None:
    """A reload that changes a required upstream without touching its registration (here: a new
    client_id_file) re-resolves it at once, from the store: readiness comes
    back and nothing is registered again."""
    provider = await oidc()
    upstream = cc_upstream(provider.issuer, name="a", required=True)
    side, watcher, path = await watched({"upstreams": [upstream]})
    await wait_for(lambda: side.resolver.cached("a") is not None, "the prefetch")
    first = side.resolver.cached("a")
    changed = {**upstream, "client_id_file": str(tmp_path / "a-client-id")}
    write_configmap(path.parent, sidecar_config(tmp_path, {"upstreams": [changed]}), 2)
    assert watcher.reload("test")
    assert events(leak_guard, "config_reloaded")[-1]["upstreams_updated"] == ["a"]
    await wait_for(lambda: side.resolver.cached("a") is not None, "the re-resolution")
    again = side.resolver.cached("a")
    assert again is not None
    assert first is not None
    assert again.client_id == first.client_id
    assert (await provider.stats())["registrations"] == 1
    assert (tmp_path / "a-client-id").read_text().strip() == first.client_id
    leak_guard.add_store(tmp_path / "credentials.json")


def test_reload_that_breaks_a_kept_restart_only_key_is_rejected() -> None:
    """`listen` is kept from the running config; a new file without inbound credentials would
    leave a non-loopback listener open to anyone: rejected, nothing changes."""
    from dcr_sidecar.app import combine
    from dcr_sidecar.config import parse_settings
    from dcr_sidecar.errors import ConfigError

    old = parse_settings(yaml.safe_dump({
        "version": 1, "listen": {"host": "0.0.0.0", "port": 8080},  # noqa: S104 - parsed only
        "inbound": {"client_secret": "inbound-secret-value"}}), "old.yaml")
    new = parse_settings(yaml.safe_dump({"version": 1}), "new.yaml")
    with pytest.raises(ConfigError, match=r"inbound\.client_secret is not set"):
        combine(old, new)


async def test_store_record_with_non_utf8_bytes_is_one_corrupt_upstream(
        tmp_path: Path, leak_guard: LeakGuard) -> None:
    """Bytes that are not UTF-8 inside one upstream's record of the file store: `serve` starts
    (before: exit 1 at start-up), that upstream answers 503 with its record left byte for byte,
    the other dynamic upstream and the static one keep serving, /readyz answers (before: 500)
    and /metrics too."""
    async with RecordingAS() as rec:
        store = tmp_path / "credentials.json"
        config = {"version": 1, "store": {"backend": "file", "path": str(store)},
                  "security": {"allow_http": ["127.0.0.1"],
                               "allow_private_networks": ["127.0.0.1/32"]},
                  "shutdown": {"delay": 0, "grace": 2},
                  "upstreams": [cc_upstream(rec.issuer, "good"), cc_upstream(rec.issuer, "bad"),
                                {"name": "fixed", "issuer": rec.issuer,
                                 "client_id": "static-client",
                                 "client_secret": "static-secret-0123456789",
                                 "grant_types": ["client_credentials"]}]}
        first = ServeProcess(tmp_path, "first", config)
        try:
            await first.start()
            async with aiohttp.ClientSession() as session:
                for name in ("good", "bad"):
                    async with session.get(f"{first.url}/{name}/client") as resp:
                        assert resp.status == 200, await resp.text()
        finally:
            await first.stop()
        leak_guard.add_store(store)
        bad_id = next(g["client_id"] for r in json.loads(store.read_text())["records"].values()
                      if r["upstream"] == "bad" for g in r["generations"])
        corrupt = f'"{bad_id}'.encode() + b"\xff\xfe\x80"
        store.write_bytes(store.read_bytes().replace(f'"{bad_id}'.encode(), corrupt))
        before = store.read_bytes()

        second = ServeProcess(tmp_path, "second", config)
        try:
            await second.start()  # before the fix: RuntimeError, exited with 1
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{second.url}/bad/client") as resp:
                    assert resp.status == 503, await resp.text()
                    assert "not UTF-8" in (await resp.json())["error_description"]
                for name in ("good", "fixed"):
                    async with session.post(f"{second.url}/{name}/token",
                                            data={"grant_type": "client_credentials"}) as resp:
                        assert resp.status == 200, await resp.text()
                        leak_guard.add_token_response(await resp.json())
                async with session.get(f"{second.mgmt_url}/readyz") as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["upstreams"]["bad"]["credentials"] is False
                async with session.get(f"{second.mgmt_url}/metrics") as resp:
                    assert resp.status == 200
        finally:
            await second.stop()
        assert store.read_bytes() == before
        assert len(rec.clients) == 2  # "bad" was not registered again


async def test_serve_refuses_a_store_directory_writable_by_others(tmp_path: Path) -> None:
    """`serve` with its file store in a directory anyone can write to exits 1 at start-up with
    an error naming the directory (before: it started and wrote its secrets there)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config = {"version": 1, "store": {"backend": "file", "path": str(shared / "c.json")}}
    process = ServeProcess(tmp_path, "unsafe", config)
    await process.spawn()
    try:
        assert await process.wait() == 1
    finally:
        await process.stop()
    (failed,) = process.events("startup_failed")
    assert f"{shared} is writable by others" in failed["detail"]
    assert list(shared.iterdir()) == []
