"""The management listener (design.md §2.3): whatever leaves it passes the same redaction as
logs and error answers (design.md §3.9), and the suite-wide scan of its responses can fail."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from dcr_sidecar.app import Sidecar
from tests.conftest import LeakGuard, SidecarFactory
from tests.flows import REDIRECT_URI
from tests.support.fakes import FakeServers, fake_as_routes

IAT = "echoed-initial-access-token-0123456789"
STATEMENT = "eyJhbGciOiJIUzI1NiJ9.echoed-software-statement.c2lnbmF0dXJlMDEyMzQ1"
ADMIN_TOKEN = "admin-token-for-management-0123"


def echoing_registration(*secrets: str) -> web.RouteDef:
    """A registration endpoint whose error description echoes what it was sent."""

    async def register(request: web.Request) -> web.StreamResponse:
        echoed = " ".join(secrets)
        return web.json_response({"error": "invalid_client_metadata",
                                  "error_description": f"refused {echoed} see "
                                  f"https://as.test/why?token={secrets[0]}"}, status=400)

    return web.post("/register", register)


async def get_text(side: Sidecar, path: str, headers: dict[str, str] | None = None
                   ) -> tuple[int, str, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.management.url}{path}", headers=headers or {}) as resp:
        text = await resp.text()
        return resp.status, text, await resp.json() if resp.content_type.endswith("json") \
            else {}


async def test_readyz_and_admin_show_the_last_error_scrubbed(
        servers: FakeServers, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """An AS that echoes the IAT and the software statement in its registration error: the
    failure is still shown on /readyz and /admin/upstreams, the secrets masked."""
    leak_guard.add(IAT, STATEMENT, ADMIN_TOKEN)
    routes = [r for r in fake_as_routes() if r[1] != "/register"]
    handler = echoing_registration(IAT, STATEMENT).handler
    as_ = await servers.start([*routes, ("POST", "/register", handler)])
    side = await sidecar({"admin": {"token": ADMIN_TOKEN}, "upstreams": [{
        "name": "acme", "issuer": as_.base, "redirect_uris": [REDIRECT_URI], "required": True,
        "initial_access_token": IAT, "software_statement": STATEMENT}]})
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/acme/client") as resp:
        assert resp.status == 502
    status, readyz, ready = await get_text(side, "/readyz")
    assert status == 503
    status, admin, listed = await get_text(side, "/admin/upstreams",
                                           {"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert status == 200
    for text in (readyz, admin):
        assert IAT not in text
        assert STATEMENT not in text
    shown = [ready["upstreams"]["acme"]["last_error"], listed["upstreams"][0]["last_error"]]
    for last_error in shown:
        assert "invalid_client_metadata" in last_error
        assert "**********" in last_error
        assert "https://as.test/why" in last_error
        assert "?" not in last_error


async def test_the_suite_wide_scan_catches_a_secret_a_management_answer_carries(
        sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """The scan the leak guard runs over every management answer can fail: strings that only
    a management answer carries (a /metrics help text, a response header), declared secrets
    of the test, are reported with their route; nothing is reported before they are sent."""
    help_text = "Requests answered, by upstream, route and status code."
    leak_guard.add(help_text)
    side = await sidecar({})
    assert leak_guard.management_leaks() == []
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{side.management.url}/metrics") as resp:
            assert help_text in await resp.text()
        async with session.get(f"{side.management.url}/healthz") as resp:
            leak_guard.add(resp.headers["Server"])
    assert leak_guard.management_leaks() == [
        "/healthz: Python…", "/metrics: Python…", "/metrics: Reques…"]
    assert help_text not in leak_guard.log_text()  # only the management scan can see it
    leak_guard.management.clear()  # planted on purpose; the guard's teardown must pass


async def test_the_scan_sees_every_management_route(
        sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """Answers of every kind are recorded as sent: JSON, metrics text and error answers."""
    side = await sidecar({})
    async with aiohttp.ClientSession() as session:
        for path in ("/healthz", "/readyz", "/metrics", "/admin/upstreams", "/nope"):
            async with session.get(f"{side.management.url}{path}") as resp:
                await resp.read()
    assert [path for path, _ in leak_guard.management] == [
        "/healthz", "/readyz", "/metrics", "/admin/upstreams", "/nope"]
    assert all(text.split(" ", 1)[0].isdigit() for _, text in leak_guard.management)
