"""Every discovery source against real servers: RFC 9728 protected resources (WWW-Authenticate,
path-inserted and root documents), discovery_url, endpoints; background metadata refresh;
`doctor`."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from tests.conftest import (
    FakeFactory,
    LeakGuard,
    ProviderFactory,
    SidecarFactory,
    sidecar_config,
)
from tests.flows import get_json
from tests.support.fakes import FakeServer

PRM = "/.well-known/oauth-protected-resource"


def resource_upstream(resource: str, issuer: str | None) -> dict[str, Any]:
    up: dict[str, Any] = {"name": "mcp", "resource": resource,
                          "grant_types": ["client_credentials"]}
    if issuer:
        up["issuer"] = issuer
    return {"upstreams": [up]}


async def protected_resource(fake: FakeServer, *, challenge: str | None) -> None:
    async def resource(_: web.Request) -> web.StreamResponse:
        headers = {"WWW-Authenticate": challenge} if challenge else {}
        return web.Response(status=401 if challenge else 200, headers=headers)

    fake.route("GET", "/mcp", resource)


async def test_resource_metadata_named_by_www_authenticate(
        oidc: ProviderFactory, fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """401 + `resource_metadata` (among several challenges) names the document; its AS (pinned)
    is discovered and registered at."""
    provider, fake = await oidc(), await fake_server()
    await protected_resource(fake, challenge=(
        'Basic realm="legacy", Bearer error="invalid_token", '
        f'resource_metadata="{fake.url}/meta/mcp.json", scope="api:read"'))
    fake.json("GET", "/meta/mcp.json", {"resource": f"{fake.url}/mcp",
                                        "authorization_servers": [provider.issuer]})
    side = await sidecar(resource_upstream(f"{fake.url}/mcp", provider.issuer))
    client = await get_json(f"{side.listen.url}/mcp/client")
    assert client["issuer"] == provider.issuer
    assert (await provider.stats())["registrations"] == 1
    assert fake.count("GET", PRM + "/mcp") == 0


async def test_resource_metadata_from_path_inserted_well_known(
        oidc: ProviderFactory, fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    provider, fake = await oidc(), await fake_server()
    await protected_resource(fake, challenge=None)
    fake.json("GET", PRM + "/mcp", {"resource": f"{fake.url}/mcp",
                                    "authorization_servers": [provider.issuer]})
    side = await sidecar(resource_upstream(f"{fake.url}/mcp", provider.issuer))
    assert (await get_json(f"{side.listen.url}/mcp/client"))["issuer"] == provider.issuer


async def test_root_document_may_name_a_parent_resource(
        oidc: ProviderFactory, fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """The documented MCP-compatible relaxation: the root document's resource is a parent."""
    provider, fake = await oidc(), await fake_server()
    await protected_resource(fake, challenge=None)
    fake.json("GET", PRM, {"resource": fake.url, "authorization_servers": [provider.issuer]})
    side = await sidecar(resource_upstream(f"{fake.url}/mcp", provider.issuer))
    assert (await get_json(f"{side.listen.url}/mcp/client"))["issuer"] == provider.issuer


async def test_path_inserted_document_must_name_the_resource_exactly(
        oidc: ProviderFactory, fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    provider, fake = await oidc(), await fake_server()
    await protected_resource(fake, challenge=None)
    fake.json("GET", PRM + "/mcp", {"resource": fake.url,
                                    "authorization_servers": [provider.issuer]})
    side = await sidecar(resource_upstream(f"{fake.url}/mcp", provider.issuer))
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/mcp/client") as resp:
        body = await resp.json()
    assert resp.status == 502
    assert "RFC 9728" in body["error_description"]
    assert (await provider.stats())["registrations"] == 0


async def test_pinned_issuer_missing_from_authorization_servers_is_refused(
        oidc: ProviderFactory, fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    provider, fake = await oidc(), await fake_server()
    await protected_resource(fake, challenge=f'Bearer resource_metadata="{fake.url}{PRM}/mcp"')
    fake.json("GET", PRM + "/mcp", {"resource": f"{fake.url}/mcp",
                                    "authorization_servers": ["https://as.example"]})
    side = await sidecar(resource_upstream(f"{fake.url}/mcp", provider.issuer))
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/mcp/client") as resp:
        body = await resp.json()
    assert resp.status == 502
    assert provider.issuer in body["error_description"]
    assert "https://as.example" in body["error_description"]


async def test_discovery_url_with_rfc8414_insertion_derives_the_path_issuer(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    provider = await oidc(issuer_path="/tenant-a")
    url = f"{provider.base_url}/.well-known/oauth-authorization-server/tenant-a"
    side = await sidecar({"upstreams": [{"name": "t", "discovery_url": url,
                                         "grant_types": ["client_credentials"]}]})
    client = await get_json(f"{side.listen.url}/t/client")
    assert client["issuer"] == provider.issuer
    discovery_gets = [r for r in await provider.requests() if "well-known" in r["path"]]
    assert [r["path"] for r in discovery_gets] == [
        "/.well-known/oauth-authorization-server/tenant-a"], discovery_gets


async def test_endpoints_source_makes_no_discovery_request(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    provider = await oidc()
    issuer = provider.issuer
    side = await sidecar({"upstreams": [{
        "name": "e", "issuer": issuer, "grant_types": ["client_credentials"],
        "endpoints": {"token_endpoint": f"{issuer}/token", "registration_endpoint":
                      f"{issuer}/reg", "token_endpoint_auth_methods_supported":
                      ["client_secret_post"]}}]})
    client = await get_json(f"{side.listen.url}/e/client")
    assert client["token_endpoint_auth_method"] == "client_secret_post"
    assert not [r for r in await provider.requests() if "well-known" in r["path"]]


async def test_metadata_is_refreshed_in_the_background_before_it_expires(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    provider = await oidc()
    side = await sidecar({"discovery": {"cache_ttl": 2, "min_ttl": 1}, "upstreams": [
        {"name": "acme", "issuer": provider.issuer, "grant_types": ["client_credentials"],
         "prefetch": True}]})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while side.resolver.snapshot("acme").stats["discoveries"] < 3:
        assert loop.time() < deadline, "no background refresh"
        await asyncio.sleep(0.1)
    assert side.resolver.snapshot("acme").stats["registrations"] == 1


async def run_doctor(tmp_path: Path, config: dict[str, Any], *args: str) -> tuple[int, str, str]:
    path = tmp_path / "doctor.yaml"
    path.write_text(yaml.safe_dump(sidecar_config(tmp_path, config)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dcr_sidecar", "doctor", *args, "--config", str(path),
        env=dict(os.environ), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_doctor_shows_every_candidate_and_register_reuses_the_store(
        oidc: ProviderFactory, tmp_path: Path, leak_guard: LeakGuard) -> None:
    provider = await oidc(issuer_path="/tenant-a")
    config = {"upstreams": [{"name": "acme", "issuer": provider.issuer,
                             "grant_types": ["client_credentials"]}]}
    code, out, _ = await run_doctor(tmp_path, config, "acme", "--json")
    assert code == 0
    report = json.loads(out)
    outcomes = {a["url"].rsplit(":", 1)[1].split("/", 1)[1]: a["outcome"]
                for a in report["attempts"]}
    assert outcomes == {".well-known/oauth-authorization-server/tenant-a": "used",
                        ".well-known/openid-configuration/tenant-a": "valid",
                        "tenant-a/.well-known/openid-configuration": "valid"}
    assert report["auth_method"]["method"] == "client_secret_basic"
    assert (await provider.stats())["registrations"] == 0
    runs = [await run_doctor(tmp_path, config, "acme", "--register", "--json")
            for _ in range(2)]
    first, second = (json.loads(run[1]) for run in runs)
    assert first["client"]["client_id"] == second["client"]["client_id"]
    assert first["client"]["registered_now"] is True
    assert second["client"]["registered_now"] is False
    assert (await provider.stats())["registrations"] == 1
    for _, out, err in runs:
        leak_guard.add_text(out + err)
    assert leak_guard.add_store(tmp_path / "credentials.json")


async def test_doctor_register_is_refused_on_the_memory_store(tmp_path: Path) -> None:
    config = {"store": {"backend": "memory"}, "upstreams": [
        {"name": "acme", "issuer": "http://127.0.0.1:9", "grant_types": ["client_credentials"]}]}
    code, _, err = await run_doctor(tmp_path, config, "acme", "--register")
    assert code == 2
    assert "memory" in err


async def test_doctor_reports_failure_with_exit_1(tmp_path: Path,
                                                  fake_server: FakeFactory) -> None:
    fake = await fake_server()
    fake.json("GET", "/.well-known/oauth-authorization-server", {"issuer": "https://other"})
    config = {"upstreams": [{"name": "acme", "issuer": fake.url,
                             "grant_types": ["client_credentials"]}]}
    code, out, _ = await run_doctor(tmp_path, config, "acme")
    assert code == 1
    assert "FAILED at discover" in out
    assert "'https://other'" in out
