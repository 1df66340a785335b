"""The command line reads well (design.md §2.1): every command and argument described, exit
codes in --help, network failures said as a person would say them with each URL once, and no
traceback on a closed pipe or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dcr_sidecar.cli import build_parser
from tests.support.fakes import FakeServer
from tests.test_demo_e2e import free_port

CLI = [sys.executable, "-m", "dcr_sidecar"]


def run(*args: str, timeout: float = 60, **kwargs: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **kwargs}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


def doctor_config(tmp_path: Path, issuer: str, **extra: object) -> str:
    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1,
        "security": {"allow_http": ["127.0.0.1"], "allow_private_networks": ["127.0.0.1/32"]},
        "store": {"backend": "file", "path": str(tmp_path / "credentials.json")},
        "upstreams": [{"name": "acme", "issuer": issuer,
                       "redirect_uris": ["http://127.0.0.1:3000/cb"]}],
        **extra}))
    return str(path)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_and_argument_has_a_description() -> None:
    parser = build_parser()
    for name, sub in subparsers(parser).items():
        assert sub.description, name
        for action in sub._actions:
            assert (action.help or "").strip(), (name, action.dest)
    help_text = parser.format_help()
    for name in subparsers(parser):
        assert name in help_text


def test_help_states_the_exit_codes() -> None:
    for text in (run("--help").stdout, run("check-config", "--help").stdout):
        assert "exit codes:" in text
        assert "2  invalid configuration" in text


def test_doctor_register_help_says_it_registers_a_real_client() -> None:
    assert "registers a REAL client" in " ".join(run("doctor", "--help").stdout.split())


def test_config_schema_into_a_closed_pipe_ends_without_a_traceback() -> None:
    """`dcr-sidecar config-schema | head -1`."""
    proc = subprocess.Popen([*CLI, "config-schema"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    assert proc.stdout is not None
    proc.stdout.read(10)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err, err.decode()
    assert b"BrokenPipeError" not in err


@dataclass
class Silent:
    port: int
    connected: asyncio.Event


@pytest.fixture
async def silent_server() -> AsyncIterator[Silent]:
    """A loopback port that accepts connections and never answers."""
    held: list[asyncio.StreamWriter] = []
    connected = asyncio.Event()

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        connected.set()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield Silent(server.sockets[0].getsockname()[1], connected)
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_ctrl_c_ends_a_command_without_a_traceback(tmp_path: Path,
                                                        silent_server: Silent) -> None:
    """SIGINT while `doctor` waits on an AS: exit 130, nothing on stderr but a word."""
    config = doctor_config(tmp_path, f"http://127.0.0.1:{silent_server.port}",
                           timeouts={"connect": 30, "read": 30, "total": 30})
    proc = await asyncio.create_subprocess_exec(
        *CLI, "doctor", "--config", config, "acme", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    await asyncio.wait_for(silent_server.connected.wait(), 30)  # mid-request
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert b"Traceback" not in err, err.decode()
    assert proc.returncode == 130


async def test_doctor_on_a_dead_upstream_says_connection_refused_once_per_url(
        tmp_path: Path) -> None:
    port = free_port()  # bound and released: nothing listens there
    result = run("doctor", "--config", doctor_config(tmp_path, f"http://127.0.0.1:{port}/r"),
                 "acme")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert f"connection refused by 127.0.0.1:{port} — is the server running?" in out
    assert "ClientConnectorError" not in out
    for url in (f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server/r",
                f"http://127.0.0.1:{port}/.well-known/openid-configuration/r",
                f"http://127.0.0.1:{port}/r/.well-known/openid-configuration"):
        assert out.count(url) == 1, out


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_doctor_on_a_loopback_issuer_names_the_setting_that_allows_it(
        tmp_path: Path, host: str) -> None:
    """Failed before the fix: the refusal said 'not allowed' but not how to allow it."""
    port = free_port()
    config = doctor_config(tmp_path, f"http://{host}:{port}",
                           security={"allow_http": [host]})  # no allow_private_networks
    result = run("doctor", "--config", config, "acme")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "a loopback address" in out, out
    assert "— to allow it, list '" in out, out
    assert "in security.allow_private_networks" in out, out
    if host == "127.0.0.1":
        assert "list '127.0.0.1/32' in security.allow_private_networks" in out, out
    assert "Traceback" not in result.stderr


async def test_doctor_timeout_names_the_timeout(tmp_path: Path, silent_server: Silent) -> None:
    port = silent_server.port
    config = doctor_config(tmp_path, f"http://127.0.0.1:{port}",
                           timeouts={"connect": 5, "read": 5, "total": 1})
    result = await asyncio.to_thread(run, "doctor", "--config", config, "acme")
    assert result.returncode == 1, result.stderr
    assert f"127.0.0.1:{port} did not answer in time: timed out after 1 s " \
           "(timeouts.total)" in result.stdout


def _expired_certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 that expired yesterday (and its key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired test AS")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def test_doctor_on_an_expired_certificate_says_so(tmp_path: Path) -> None:
    """The certificate is trusted (SSL_CERT_FILE) but expired: the report says so, once."""
    cert, key = _expired_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await FakeServer(tls=True).start(ssl_context=context)
    port = server.port
    try:
        result = await asyncio.to_thread(
            run, "doctor", "--config", doctor_config(tmp_path, f"https://127.0.0.1:{port}"),
            "acme", SSL_CERT_FILE=str(cert))
    finally:
        await server.stop()
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert f"TLS certificate check failed for 127.0.0.1:{port}" in out, out
    assert "certificate has expired" in out, out
    assert "Traceback" not in result.stderr

