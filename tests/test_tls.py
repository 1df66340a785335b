"""Trust anchors (``security.tls``): an AS on TLS with a certificate from a test CA (trustme).

First contact fails with a message a person can act on (host, failed check, setting) without
``ca_file`` and works with it; replacing the CA file switches trust without a restart; the
same messages reach `doctor`; anchor settings fail loudly at start-up.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from dcr_sidecar.config import parse_settings
from dcr_sidecar.doctor import run_doctor
from dcr_sidecar.errors import ConfigError
from dcr_sidecar.tls import build_context
from tests.conftest import LeakGuard, SidecarFactory, sidecar_config
from tests.support.fakes import FakeServer, FakeServers, MapResolver, fake_as_routes

SECRET = "tls-client-secret-0123456789"
DEADLINE = 10.0


def server_context(ca: trustme.CA, *names: str, **cert: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names, **cert).configure_cert(context)
    return context


def write_pem(path: Path, ca: trustme.CA) -> str:
    """Replace the file by a rename, as a mounted ConfigMap or Secret is updated."""
    staged = path.with_suffix(".new")
    staged.write_bytes(ca.cert_pem.bytes())
    os.replace(staged, path)
    return str(path)


async def tls_as(servers: FakeServers, context: ssl.SSLContext,
                 host: str = "127.0.0.2") -> FakeServer:
    return await servers.start(fake_as_routes(client_secret=SECRET), host=host,
                               ssl_context=context)


def config(issuer: str, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    security: dict[str, Any] = {"allow_private_networks": ["127.0.0.0/8"]}
    if tls is not None:
        security["tls"] = tls
    return {"security": security, "backoff": {"base": 0.01, "cap": 0.02},
            "upstreams": [{"name": "acme", "issuer": issuer,
                           "grant_types": ["client_credentials"]}]}


async def get_client(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/acme/client") as resp:
        return resp.status, await resp.json()


async def post_token(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/acme/token", data={"grant_type": "client_credentials"}) as resp:
        return resp.status, await resp.json()


async def until_status(call: Any, url: str, status: int) -> tuple[int, dict[str, Any]]:
    """Call until the answer has `status` (backoff from the last failure may answer 503 for
    a few milliseconds first), within DEADLINE."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        got = await call(url)
        if got[0] == status or loop.time() > deadline:
            return got  # type: ignore[no-any-return]
        await asyncio.sleep(0.02)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


async def test_unknown_ca_fails_clearly_and_ca_file_fixes_it(
        ca: trustme.CA, servers: FakeServers, sidecar: SidecarFactory, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """Without ca_file: 502 naming the host, "unknown issuer" and security.tls.ca_file; with
    the test CA in ca_file: registration and a token request over TLS succeed."""
    leak_guard.add(SECRET)
    fake = await tls_as(servers, server_context(ca, "127.0.0.2"))
    side = await sidecar(config(fake.base))
    status, body = await get_client(side.listen.url)
    assert status == 502, body
    assert body["error"] == "server_error"
    description = body["error_description"]
    assert f"TLS certificate check failed for 127.0.0.2:{fake.port}" in description
    assert "issued by a certificate authority the sidecar does not trust" in description
    assert "security.tls.ca_file" in description
    assert fake.hits == []  # no request got through the failed handshake

    trusted = await sidecar(config(fake.base, {"ca_file": write_pem(tmp_path / "ca.pem", ca)}))
    status, body = await get_client(trusted.listen.url)
    assert status == 200, body
    status, body = await post_token(trusted.listen.url)
    assert status == 200, body
    assert [h.path for h in fake.hits][-2:] == ["/register", "/token"]


async def test_replacing_the_ca_file_switches_trust_without_restart(
        ca: trustme.CA, servers: FakeServers, sidecar: SidecarFactory, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """ca_file holds another CA: 502; the file replaced by the right CA: 200 from the same
    sidecar; replaced again by the wrong one: 502 again (no connection verified under the
    old anchors is reused)."""
    leak_guard.add(SECRET)
    other = trustme.CA()
    fake = await tls_as(servers, server_context(ca, "127.0.0.2"))
    ca_file = tmp_path / "bundle.pem"
    side = await sidecar(config(fake.base, {"ca_file": write_pem(ca_file, other)}))
    status, body = await get_client(side.listen.url)
    assert status == 502, body
    assert "does not trust" in body["error_description"]

    write_pem(ca_file, ca)
    status, body = await until_status(get_client, side.listen.url, 200)
    assert status == 200, body
    status, body = await post_token(side.listen.url)
    assert status == 200, body

    write_pem(ca_file, other)
    status, body = await until_status(post_token, side.listen.url, 502)
    assert status == 502, body
    assert "does not trust" in body["error_description"]
    assert side.outbound.trust._watched is not None
    assert side.outbound.trust._watched.reloads == 2


async def test_expired_certificate_is_named_as_such(
        ca: trustme.CA, servers: FakeServers, sidecar: SidecarFactory, tmp_path: Path) -> None:
    """A certificate past its notAfter: 502 saying it has expired and that the server must
    renew it (trusting more would not help)."""
    now = datetime.datetime.now(datetime.UTC)
    fake = await tls_as(servers, server_context(
        ca, "127.0.0.2", not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1)))
    side = await sidecar(config(fake.base, {"ca_file": write_pem(tmp_path / "ca.pem", ca)}))
    status, body = await get_client(side.listen.url)
    assert status == 502, body
    description = body["error_description"]
    assert f"TLS certificate check failed for 127.0.0.2:{fake.port}" in description
    assert "the certificate has expired" in description
    assert "renewed certificate" in description


async def test_name_mismatch_is_named_as_such(
        ca: trustme.CA, servers: FakeServers, tmp_path: Path, leak_guard: LeakGuard) -> None:
    """A trusted certificate for another name: 502 saying it does not name the host."""
    from dcr_sidecar.app import Sidecar

    fake = await tls_as(servers, server_context(ca, "other.test"))
    settings = parse_settings(_yaml(sidecar_config(tmp_path, config(
        f"https://as.test:{fake.port}", {"ca_file": write_pem(tmp_path / "ca.pem", ca)}))),
        "test.yaml")
    side = Sidecar(settings, resolver=MapResolver({"as.test": "127.0.0.2"}),
                   redactor=leak_guard.redactor)
    await side.start()
    try:
        status, body = await get_client(side.listen.url)
    finally:
        await side.stop()
    assert status == 502, body
    description = body["error_description"]
    assert f"TLS certificate check failed for as.test:{fake.port}" in description
    assert "is not valid for this host name" in description


async def test_doctor_says_which_check_failed_and_what_fixes_it(
        ca: trustme.CA, servers: FakeServers, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], leak_guard: LeakGuard) -> None:
    """`doctor` prints the same sentence: unknown issuer without ca_file, and success with it."""
    fake = await tls_as(servers, server_context(ca, "127.0.0.2"))
    settings = parse_settings(_yaml(sidecar_config(tmp_path, config(fake.base))), "t.yaml")
    assert await run_doctor(settings, "acme", register=False, as_json=False,
                            redactor=leak_guard.redactor) == 1
    out = capsys.readouterr().out
    assert (f"FAILED at discover: server_error: TLS certificate check failed for "
            f"127.0.0.2:{fake.port}: the certificate was issued by a certificate authority "
            "the sidecar does not trust") in out
    assert "security.tls.ca_file" in out

    settings = parse_settings(_yaml(sidecar_config(tmp_path, config(
        fake.base, {"ca_file": write_pem(tmp_path / "ca.pem", ca)}))), "t.yaml")
    assert await run_doctor(settings, "acme", register=False, as_json=False,
                            redactor=leak_guard.redactor) == 0
    assert f"issuer: {fake.base}" in capsys.readouterr().out


async def test_ca_dir_trusts_every_bundle_file_and_system_false_trusts_only_them(
        ca: trustme.CA, servers: FakeServers, sidecar: SidecarFactory, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """A trust-manager style directory (one bundle file beside non-PEM files) with system:
    false: the test CA is trusted; the context holds nothing else."""
    leak_guard.add(SECRET)
    bundle = tmp_path / "trust"
    bundle.mkdir()
    (bundle / "README").write_text("not a certificate\n")
    write_pem(bundle / "bundle.pem", ca)
    fake = await tls_as(servers, server_context(ca, "127.0.0.2"))
    tls = {"ca_dir": str(bundle), "system": False}
    side = await sidecar(config(fake.base, tls))
    status, body = await get_client(side.listen.url)
    assert status == 200, body
    settings = parse_settings(_yaml(sidecar_config(tmp_path, config(fake.base, tls))), "t.yaml")
    assert len(build_context(settings.security.tls).get_ca_certs()) == 1


@pytest.mark.parametrize(("tls", "message"), [
    ({"ca_file": "{tmp}/missing.pem"},
     "security.tls.ca_file: cannot read '{tmp}/missing.pem': No such file or directory"),
    ({"ca_file": "{tmp}/garbage.pem"},
     "security.tls.ca_file: '{tmp}/garbage.pem' holds no PEM certificate"),
    ({"ca_dir": "{tmp}"}, "security.tls.ca_dir: no file in '{tmp}' holds a PEM certificate"),
    ({"system": False}, "security.tls.system: false needs ca_file or ca_dir"),
    ({"verify": False}, "security.tls.verify: unknown key"),
])
def test_anchor_settings_fail_loudly_at_start_up(
        tmp_path: Path, tls: dict[str, Any], message: str) -> None:
    """Unreadable or empty anchors, nothing trusted, or a wish to skip verification: a
    ConfigError naming file, YAML path and value."""
    (tmp_path / "garbage.pem").write_text("not pem\n")
    given = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in tls.items()}
    with pytest.raises(ConfigError) as failed:
        parse_settings(_yaml({"version": 1, "security": {"tls": given}}), "sidecar.yaml")
    assert f"sidecar.yaml: {message.format(tmp=tmp_path)}" in str(failed.value)


def _yaml(document: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(document)
