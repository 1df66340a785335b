"""`make demo` end to end, driven the way a person would: the home page, "Log in", the
provider's login and consent form posts, and the claims page — with config/dev.yaml."""

from __future__ import annotations

import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from dcr_sidecar.app import Sidecar
from dcr_sidecar.config import parse_settings
from dcr_sidecar.demo import create_demo_app
from dcr_sidecar.observability import Redactor
from tests.conftest import LeakGuard, ProviderFactory
from tests.support.oidc import OidcProvider, login_and_consent, new_browser_session

DEV_CONFIG = Path(__file__).resolve().parent.parent / "config" / "dev.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dev_settings(issuer: str, demo_url: str, tmp_path: Path) -> dict[str, Any]:
    """config/dev.yaml as shipped, with the test's ports and paths."""
    raw = yaml.safe_load(DEV_CONFIG.read_text())
    raw["listen"]["port"] = 0
    raw["management"]["port"] = 0
    raw["store"]["path"] = str(tmp_path / "demo-credentials.json")
    upstream = raw["upstreams"][0]
    upstream["redirect_uris"] = [f"{demo_url}/callback"]
    upstream["client_id_file"] = str(tmp_path / "demo-client-id")
    assert upstream["issuer"] == "${DEMO_ISSUER:-http://127.0.0.1:9400}"
    return dict(raw)


@asynccontextmanager
async def demo_stack(provider: OidcProvider, tmp_path: Path,
                     redactor: Redactor) -> AsyncIterator[tuple[OidcProvider, Sidecar, str, Path]]:
    """The stack of `make demo` (config/dev.yaml) on free ports: sidecar and demo app in front
    of ``provider``. Yields (provider, sidecar, demo app URL, tmp_path)."""
    demo_url = f"http://127.0.0.1:{free_port()}"
    text = yaml.safe_dump(dev_settings(provider.issuer, demo_url, tmp_path))
    settings = parse_settings(text, str(DEV_CONFIG), env={"DEMO_ISSUER": provider.issuer})
    side = Sidecar(settings, redactor=redactor)
    await side.start()
    runner = web.AppRunner(create_demo_app(side.listen.url, "demo", demo_url))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(demo_url.rsplit(":", 1)[1])).start()
    yield provider, side, demo_url, tmp_path
    await runner.cleanup()
    await side.stop()


@pytest.fixture
async def demo(oidc: ProviderFactory, tmp_path: Path, leak_guard: LeakGuard) -> Any:
    async with demo_stack(await oidc(), tmp_path, leak_guard.redactor) as stack:
        yield stack


async def test_person_logs_in_through_the_demo_app(demo: Any, leak_guard: LeakGuard) -> None:
    """Home page shows the client_id; the login ends on a page of validated ID-token claims."""
    provider, _side, demo_url, tmp_path = demo
    async with new_browser_session() as browser:
        async with browser.get(f"{demo_url}/") as resp:
            home = await resp.text()
        assert resp.status == 200
        client_id = (tmp_path / "demo-client-id").read_text().strip()
        assert client_id in home
        assert "Log in" in home
        callback = await login_and_consent(browser, f"{demo_url}/login", f"{demo_url}/callback",
                                           login="bob")
        async with browser.get(callback) as resp:
            page = await resp.text()
        assert resp.status == 200, page
    text = re.sub(r"<[^>]+>", " ", page)
    assert "ID token valid" in text
    assert re.search(r"\bsub\s+bob\b", text)
    assert (await provider.stats())["registrations"] == 1
    secrets = leak_guard.add_store(tmp_path / "demo-credentials.json")
    assert secrets
    for secret in secrets:
        assert secret not in page


async def test_result_page_says_what_the_sidecar_did_and_survives_a_reload(
        demo: Any, leak_guard: LeakGuard) -> None:
    """The callback redirects to /result/{id} (post/redirect/get); the page carries the
    sidecar's own account (discovery, registration, the secret it added) and the request ids
    of this login's calls; a reload shows it again instead of "unknown state"."""
    provider, _side, demo_url, tmp_path = demo
    async with new_browser_session() as browser:
        callback = await login_and_consent(browser, f"{demo_url}/login", f"{demo_url}/callback",
                                           login="carol")
        async with browser.get(callback) as resp:
            page = await resp.text()
            landed = str(resp.url)
            history = [r.status for r in resp.history]
        assert resp.status == 200, page
        assert history == [303]
        assert landed.startswith(f"{demo_url}/result/")
        assert "code=" not in landed
        async with browser.get(landed) as resp:
            again = await resp.text()
        assert resp.status == 200
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "What the sidecar did" in text
    assert f"read the AS metadata from {provider.issuer}/.well-known/" in text
    assert "registered by Dynamic Client Registration (RFC 7591)" in text
    assert "generation 1" in text
    assert "the app sent no secret; the sidecar added client_secret_basic" in text
    request_ids = re.findall(r"<td><code>([0-9a-f-]{16,})</code></td>", page)
    assert len(request_ids) >= 3, page  # /client, metadata, token
    assert again == page
    for secret in leak_guard.add_store(tmp_path / "demo-credentials.json"):
        assert secret not in page
