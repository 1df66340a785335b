"""The demo in a real browser: Debian's chromium, driven by playwright (never a downloaded
browser), through home -> provider login -> consent -> result page -> reload. Each page is saved
as a PNG under tests/artifacts/ (gitignored). The browser resolves nothing but loopback
(--host-resolver-rules), so no traffic leaves the machine."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import LeakGuard, ProviderFactory
from tests.test_demo_e2e import demo_stack

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "demo-browser"
LOOPBACK_ONLY = ("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , "
                 "EXCLUDE localhost , EXCLUDE ::1")
HAVE_CHROMIUM = Path(CHROMIUM).exists()
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def demo(oidc: ProviderFactory, tmp_path: Path,
               leak_guard: LeakGuard) -> AsyncIterator[Any]:
    """The stack of `make demo` (config/dev.yaml) on free ports: provider, sidecar, demo app."""
    async with demo_stack(await oidc(), tmp_path, leak_guard.redactor) as stack:
        yield stack


@pytest.fixture
async def chromium() -> AsyncIterator[Browser]:
    if not HAVE_CHROMIUM:  # .ci/run installs it; a missing browser is a failure, not a skip
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            # --no-sandbox: the suite may run as root in a container, where the sandbox fails.
            args=[LOOPBACK_ONLY, "--no-sandbox", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"])
        try:
            yield browser
        finally:
            await browser.close()


async def snapshot(page: Page, name: str, shots: list[Path]) -> None:
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=True)
    shots.append(path)
    print(f"saved {path}")


async def test_a_person_logs_in_through_the_demo_in_chromium(
        demo: Any, chromium: Browser, leak_guard: LeakGuard) -> None:
    """Home shows the client; the provider's login and consent pages; the result page has a
    valid ID token and the 'What the sidecar did' panel; a reload shows the same result."""
    _provider, _side, demo_url, tmp_path = demo
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    shots: list[Path] = []
    context = await chromium.new_context(viewport={"width": 1100, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(20_000)

    await page.goto(f"{demo_url}/")
    client_id = (tmp_path / "demo-client-id").read_text().strip()
    assert client_id in await page.inner_text("body")
    await snapshot(page, "01-home.png", shots)

    await page.click('a[href="/login"]')
    await page.wait_for_selector('input[name="login"]')
    await page.fill('input[name="login"]', "dana")
    await page.fill('input[name="password"]', "any password")
    await snapshot(page, "02-provider-login.png", shots)
    await page.click('button[type="submit"]')

    await page.wait_for_selector('input[name="prompt"][value="consent"]', state="attached")
    await snapshot(page, "03-provider-consent.png", shots)
    await page.click('button[type="submit"]')

    await page.wait_for_url(re.compile(re.escape(demo_url) + r"/result/"))
    body = await page.inner_text("body")
    assert "ID token valid" in body, body
    panel = await page.inner_text("#sidecar-panel")
    assert "the app sent no secret; the sidecar added client_secret_basic" in panel, panel
    assert "registered by Dynamic Client Registration" in panel
    assert re.search(r"\bsub\s+dana\b", body), body
    await snapshot(page, "04-result.png", shots)

    result_url = page.url
    await page.reload()
    assert page.url == result_url
    assert "ID token valid" in await page.inner_text("body")
    assert "What the sidecar did" in await page.inner_text("body")
    await snapshot(page, "05-result-reloaded.png", shots)
    html = await page.content()
    await context.close()

    for secret in leak_guard.add_store(tmp_path / "demo-credentials.json"):
        assert secret not in html
    assert all(p.stat().st_size > 10_000 for p in shots), [p.stat().st_size for p in shots]
