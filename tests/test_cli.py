"""The installed command: `serve` as a real process (start, answer, SIGTERM, exit 0), with its
output checked for secrets; exit codes of the other commands."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.conftest import LeakGuard, ProviderFactory, sidecar_config
from tests.test_demo_e2e import free_port

IAT = "cli-iat-0123456789abcdef"


async def wait_http(url: str, deadline_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"{url} did not answer within {deadline_s} s")
            await asyncio.sleep(0.1)


async def test_serve_registers_answers_and_stops_on_sigterm(
        oidc: ProviderFactory, tmp_path: Path, leak_guard: LeakGuard) -> None:
    """`dcr-sidecar serve`: prefetch registers, /client answers, SIGTERM exits 0, no secret in
    its output."""
    provider = await oidc(iat=IAT)
    leak_guard.add(IAT)
    port, mgmt = free_port(), free_port()
    config = sidecar_config(tmp_path, {
        "listen": {"port": port}, "management": {"port": mgmt},
        "log": {"format": "json", "level": "debug"},
        "upstreams": [{"name": "acme", "issuer": provider.issuer, "grant_types":
                       ["client_credentials"], "initial_access_token": {"env": "ACME_IAT"},
                       "prefetch": True, "required": True}]})
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcr_sidecar", "serve", "--config", str(path),
        env={**os.environ, "ACME_IAT": IAT}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        await wait_http(f"http://127.0.0.1:{mgmt}/healthz")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/acme/client") as resp:
                assert resp.status == 200
                client = await resp.json()
            async with session.post(f"http://127.0.0.1:{port}/acme/token",
                                    data={"grant_type": "client_credentials"}) as resp:
                token = await resp.json()
                assert resp.status == 200, token
            leak_guard.add_token_response(token)
            async with session.get(f"http://127.0.0.1:{mgmt}/readyz") as resp:
                assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    logs = err.decode()
    leak_guard.add_text(logs + out.decode())
    events = [json.loads(line)["event"] for line in logs.splitlines() if line.startswith("{")]
    assert "client_registered" in events
    assert "shutdown_complete" in events
    assert leak_guard.add_store(tmp_path / "credentials.json")
    assert client["client_id"] in logs  # client_ids are not secret and help operators


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcr_sidecar", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_serve_with_port_in_use_exits_1(tmp_path: Path) -> None:
    """A startup failure (port taken) is exit 1 with a log line saying why."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "sidecar.yaml"
        path.write_text(yaml.safe_dump(sidecar_config(tmp_path, {"listen": {"port": port}})))
        code, _, err = await run_cli("serve", "--config", str(path))
    assert code == 1
    assert "startup_failed" in err
    # Failed before the fix: "OSError: error while attempting to bind on address ..." named no
    # setting.
    assert f"cannot listen on 127.0.0.1:{port} (listen.host / listen.port)" in err, err
    assert "Traceback" not in err


async def test_check_config_on_broken_file_exits_2_naming_file_path_and_value(
        tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\nupstreams:\n  - name: acme\n    issuer: http://as.example\n"
                    "    redirect_uris: [https://app.example/cb]\n")
    code, _, err = await run_cli("check-config", "--config", str(path))
    assert code == 2
    assert str(path) in err
    assert "upstreams[0].issuer" in err
    assert "'http://as.example'" in err


async def test_doctor_unknown_upstream_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(sidecar_config(tmp_path, {})))
    code, _, err = await run_cli("doctor", "nope", "--config", str(path))
    assert code == 2
    assert "nope" in err
