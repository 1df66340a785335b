"""`openid-client` (npm, the certified JavaScript relying party), unmodified, in front of the
real oidc-provider: as an OAuth 2 app through its own discovery of the sidecar under
`app_issuer: sidecar` + `callback: sidecar` — authorize (with RFC 9207 `iss` checked by the
library), token, refresh, introspection, revocation, PAR, client_credentials — and as an OIDC
app with the sidecar's document and the real client_id, validating an ID token.

The node app (tests/oidc/openid_client_app.mjs) prints each URL the browser must visit; this
side plays the person (login and consent) and hands the callback URL back on its stdin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import LeakGuard, ProviderFactory, SidecarFactory
from tests.flows import REDIRECT_URI, browser_to_callback, follow_once
from tests.support.oidc import OIDC_DIR, ensure_node_modules

STEP_TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def node_app(env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    await ensure_node_modules()
    node = shutil.which("node")
    assert node is not None, "node is not on PATH"
    process = await asyncio.create_subprocess_exec(
        node, "openid_client_app.mjs", cwd=OIDC_DIR, env={**os.environ, **env},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, limit=1 << 20)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def next_message(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), STEP_TIMEOUT)
    if not line:
        assert process.stderr is not None
        stderr = (await process.stderr.read()).decode(errors="replace")
        pytest.fail(f"the openid-client app exited early:\n{stderr}")
    message: dict[str, Any] = json.loads(line)
    return message


async def play_the_browser(process: asyncio.subprocess.Process, url: str,
                           callback_prefix: str) -> None:
    """Login and consent, the sidecar's callback when it mediates, then the app's redirect URI
    back to node."""
    to_app: str | None = await browser_to_callback(url, callback_prefix)
    if callback_prefix != REDIRECT_URI:
        assert to_app is not None
        status, to_app, _ = await follow_once(to_app)
        assert status == 302
    assert to_app is not None
    assert to_app.startswith(REDIRECT_URI + "?")
    assert process.stdin is not None
    process.stdin.write(json.dumps({"callback": to_app}).encode() + b"\n")
    await process.stdin.drain()


async def test_openid_client_unmodified_through_the_sidecar(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    provider = await oidc(pkce_required=True)
    side = await sidecar({"upstreams": [{
        "name": "acme", "issuer": provider.issuer, "redirect_uris": [REDIRECT_URI],
        "scopes": ["api:read", "offline_access"], "callback": "sidecar",
        "app_issuer": "sidecar", "pkce": "sidecar",
        "grant_types": ["authorization_code", "refresh_token", "client_credentials"]}]})
    issuer = f"{side.listen.url}/acme"
    env = {"MODE": "oauth2", "SIDECAR_ISSUER": issuer, "REDIRECT_URI": REDIRECT_URI,
           "SCOPE": "api:read offline_access"}
    async with node_app(env) as process:
        browsed = 0
        while (message := await next_message(process))["step"] == "authorize":
            assert message["url"].startswith(f"{issuer}/authorize?")
            await play_the_browser(process, message["url"], f"{issuer}/callback")
            browsed += 1
        assert process.stderr is not None
        stderr = (await asyncio.wait_for(process.stderr.read(), STEP_TIMEOUT)).decode()
        leak_guard.add_text(stderr)
        assert await asyncio.wait_for(process.wait(), STEP_TIMEOUT) == 0, stderr
    for name in ("tokens", "refreshed", "par", "credentials"):
        leak_guard.add_token_response(message[name])
    assert browsed == 2  # the plain authorization request and the PAR one
    assert message["issuer"] == issuer
    assert message["tokens"]["scope"] == "api:read offline_access"
    assert message["refreshed"]["access_token"] != message["tokens"]["access_token"]
    assert message["introspection"]["active"] is True
    assert message["introspection"]["scope"] == "api:read offline_access"
    assert message["revoked"] == {"active": False}
    assert message["par"]["token_type"].lower() == "bearer"
    assert message["credentials"]["scope"] == "api:read"
    routes = [r["route"] for r in await provider.requests()]
    for route in ("token", "introspection", "revocation", "pushed_authorization_request"):
        assert route in routes, route
    assert (await provider.stats())["registrations"] == 1


async def test_openid_client_as_an_oidc_app_validates_the_id_token(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """The README's OIDC setting: the sidecar's document (the AS's issuer) and the client_id
    from /client in a `Configuration`; the library validates the ID token's iss, aud, nonce."""
    provider = await oidc()
    side = await sidecar({"upstreams": [{
        "name": "acme", "issuer": provider.issuer, "redirect_uris": [REDIRECT_URI],
        "scopes": ["openid", "profile"]}]})
    base = f"{side.listen.url}/acme"
    env = {"MODE": "oidc", "SIDECAR_ISSUER": base, "REDIRECT_URI": REDIRECT_URI,
           "SCOPE": "openid profile"}
    async with node_app(env) as process:
        message = await next_message(process)
        assert message["step"] == "authorize"
        assert message["url"].startswith(f"{base}/authorize?")
        await play_the_browser(process, message["url"], REDIRECT_URI)
        message = await next_message(process)
        assert process.stderr is not None
        stderr = (await asyncio.wait_for(process.stderr.read(), STEP_TIMEOUT)).decode()
        leak_guard.add_text(stderr)
        assert await asyncio.wait_for(process.wait(), STEP_TIMEOUT) == 0, stderr
    leak_guard.add_token_response(message["tokens"])
    assert message["step"] == "done"
    assert message["issuer"] == provider.issuer
    assert message["claims"]["iss"] == provider.issuer
    assert message["claims"]["aud"] == message["clientId"]
    assert message["claims"]["sub"] == "alice"
