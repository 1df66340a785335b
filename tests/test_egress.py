"""The egress proxy (``egress``): a real HTTP CONNECT proxy (Debian's tinyproxy) on loopback in
front of an AS on TLS (a trustme test CA).

Discovery, registration and token traffic are tunnelled to the address the sidecar resolved and
checked itself (the proxy's log shows CONNECT to that address and no plain request); TLS still
verifies the real host name; ``no_proxy`` hosts bypass the proxy; a blocked target is refused
before any CONNECT; plain http never crosses the proxy; proxy credentials go only to the proxy.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
import yaml

from dcr_sidecar.config import parse_settings
from dcr_sidecar.errors import ConfigError
from tests.conftest import LeakGuard, SidecarFactory
from tests.support.fakes import FakeServer, FakeServers, MapResolver, Overrides, fake_as_routes
from tests.support.tinyproxy import TinyProxy

SECRET = "egress-client-secret-0123456789"
IAT = "egress-iat-0123456789abcdef"
PROXY_USER, PROXY_PASSWORD = "sidecar", "proxy-pass-0123456789"


def names() -> MapResolver:
    return MapResolver({"as.test": "127.0.0.2", "evil.test": "127.0.0.3"})


@pytest.fixture
def ca(tmp_path: Path) -> trustme.CA:
    authority = trustme.CA()
    (tmp_path / "ca.pem").write_bytes(authority.cert_pem.bytes())
    return authority


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[TinyProxy]:
    started = await TinyProxy(tmp_path / "proxy").start()
    yield started
    await started.stop()


async def tls_as(servers: FakeServers, ca: trustme.CA,
                 overrides: Overrides | None = None) -> FakeServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("as.test").configure_cert(context)
    routes = fake_as_routes(overrides, client_secret=SECRET)
    return await servers.start(routes, host="127.0.0.2", ssl_context=context)


def config(tmp_path: Path, issuer: str, egress: dict[str, Any], *,
           allow: list[str] | None = None, **upstream: Any) -> dict[str, Any]:
    return {"security": {"allow_private_networks": ["127.0.0.2/32"] if allow is None else allow,
                         "tls": {"ca_file": str(tmp_path / "ca.pem")}},
            "egress": egress,
            "upstreams": [{"name": "acme", "issuer": issuer,
                           "grant_types": ["client_credentials"], **upstream}]}


async def call(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.request(method, url,
                                                                   **kwargs) as resp:
        return resp.status, await resp.json()


async def test_discovery_registration_and_token_are_tunnelled_to_the_checked_address(
        ca: trustme.CA, proxy: TinyProxy, servers: FakeServers, sidecar: SidecarFactory,
        tmp_path: Path, *, leak_guard: LeakGuard) -> None:
    """Every request is a CONNECT to 127.0.0.2:port (the address the sidecar resolved
    as.test to and checked), none is a plain request; the AS sees its own host name; the IAT
    and the client secret never appear at the proxy. The proxy at 127.0.0.1 needs no entry in
    allow_private_networks: it is allowed as the configured proxy."""
    leak_guard.add(SECRET, IAT)
    fake = await tls_as(servers, ca)
    issuer = f"https://as.test:{fake.port}"
    side = await sidecar(config(tmp_path, issuer, {"proxy": proxy.url},
                                initial_access_token=IAT), resolver=names())
    status, body = await call("GET", f"{side.listen.url}/acme/client")
    assert status == 200, body
    status, body = await call("POST", f"{side.listen.url}/acme/token",
                              data={"grant_type": "client_credentials"})
    assert status == 200, body

    seen = proxy.requests()
    assert seen, proxy.log_text()
    assert set(seen) == {("CONNECT", f"127.0.0.2:{fake.port}")}
    assert "as.test" not in {target for _, target in seen}
    log = proxy.log_text()
    assert IAT not in log
    assert SECRET not in log
    paths = [hit.path for hit in fake.hits]
    assert "/register" in paths
    assert paths[-1] == "/token"
    for hit in fake.hits:
        assert hit.headers["Host"] == f"as.test:{fake.port}"
    register = next(hit for hit in fake.hits if hit.path == "/register")
    assert register.headers["Authorization"] == f"Bearer {IAT}"


async def test_no_proxy_hosts_bypass_the_proxy(
        ca: trustme.CA, proxy: TinyProxy, servers: FakeServers, sidecar: SidecarFactory,
        tmp_path: Path, *, leak_guard: LeakGuard) -> None:
    """A host under a no_proxy domain is reached directly: the proxy sees nothing."""
    leak_guard.add(SECRET)
    fake = await tls_as(servers, ca)
    side = await sidecar(config(tmp_path, f"https://as.test:{fake.port}",
                                {"proxy": proxy.url, "no_proxy": [".test"]}), resolver=names())
    status, body = await call("POST", f"{side.listen.url}/acme/token",
                              data={"grant_type": "client_credentials"})
    assert status == 200, body
    assert proxy.requests() == []
    assert [hit.path for hit in fake.hits][-1] == "/token"


async def test_a_blocked_target_is_refused_before_any_connect(
        ca: trustme.CA, proxy: TinyProxy, servers: FakeServers, sidecar: SidecarFactory,
        tmp_path: Path) -> None:
    """The issuer's host resolves to loopback, which the allow-list does not cover: 502 from
    the address policy, and the proxy never received a request."""
    fake = await tls_as(servers, ca)
    side = await sidecar(config(tmp_path, f"https://as.test:{fake.port}", {"proxy": proxy.url},
                                allow=[]), resolver=names())
    status, body = await call("GET", f"{side.listen.url}/acme/client")
    assert status == 502, body
    assert "as.test resolves to 127.0.0.2, a loopback address, which the address policy " \
           "forbids" in body["error_description"]
    assert proxy.requests() == []
    assert fake.hits == []


async def test_a_server_supplied_endpoint_on_a_blocked_address_gets_no_connect(
        ca: trustme.CA, proxy: TinyProxy, servers: FakeServers, sidecar: SidecarFactory,
        tmp_path: Path) -> None:
    """The metadata names a registration endpoint on evil.test (127.0.0.3, server-supplied):
    discovery is tunnelled, registration refused; no CONNECT to 127.0.0.3 or evil.test."""
    fake = await tls_as(servers, ca, lambda issuer: {
        "registration_endpoint": issuer.replace("as.test", "evil.test") + "/register"})
    side = await sidecar(config(tmp_path, f"https://as.test:{fake.port}", {"proxy": proxy.url}),
                         resolver=names())
    status, body = await call("GET", f"{side.listen.url}/acme/client")
    assert status == 502, body
    assert "evil.test resolves to 127.0.0.3, a loopback address" in body["error_description"]
    targets = {target for _, target in proxy.requests()}
    assert targets == {f"127.0.0.2:{fake.port}"}
    assert "/register" not in [hit.path for hit in fake.hits]


async def test_plain_http_never_crosses_the_proxy(
        proxy: TinyProxy, servers: FakeServers, sidecar: SidecarFactory,
        tmp_path: Path) -> None:
    """An allow_http host outside no_proxy: refused (the proxy would read the traffic)."""
    fake = await servers.start(fake_as_routes(client_secret=SECRET), host="127.0.0.2")
    side = await sidecar({
        "security": {"allow_private_networks": ["127.0.0.2/32"], "allow_http": ["127.0.0.2"]},
        "egress": {"proxy": proxy.url},
        "upstreams": [{"name": "acme", "issuer": fake.base,
                       "grant_types": ["client_credentials"]}]})
    status, body = await call("GET", f"{side.listen.url}/acme/client")
    assert status == 502, body
    assert "would cross the egress proxy in clear; list 127.0.0.2 in egress.no_proxy" in \
        body["error_description"]
    assert proxy.requests() == []
    assert fake.hits == []


async def test_proxy_credentials_go_to_the_proxy_only(
        ca: trustme.CA, servers: FakeServers, sidecar: SidecarFactory, tmp_path: Path, *,
        leak_guard: LeakGuard, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy that demands Basic credentials: without egress.proxy_auth a 503 that names
    the 407 and the setting; with them the tunnel opens, and the AS never sees them."""
    leak_guard.add(SECRET, PROXY_PASSWORD)
    guarded = await TinyProxy(tmp_path / "guarded", basic_auth=(PROXY_USER, PROXY_PASSWORD)
                              ).start()
    try:
        fake = await tls_as(servers, ca)
        issuer = f"https://as.test:{fake.port}"
        side = await sidecar(config(tmp_path, issuer, {"proxy": guarded.url}),
                             resolver=names())
        status, body = await call("GET", f"{side.listen.url}/acme/client")
        assert status == 503, body
        assert (f"the egress proxy refused the tunnel to as.test:{fake.port}: HTTP 407 "
                in body["error_description"])
        assert "(check egress.proxy_auth)" in body["error_description"]
        await side.stop()

        monkeypatch.setenv("EGRESS_PROXY_PASSWORD", PROXY_PASSWORD)
        side = await sidecar(config(tmp_path, issuer, {
            "proxy": guarded.url, "proxy_auth": {
                "username": PROXY_USER, "password": {"env": "EGRESS_PROXY_PASSWORD"}}}),
            resolver=names())
        status, body = await call("GET", f"{side.listen.url}/acme/client")
        assert status == 200, body
        for hit in fake.hits:
            assert "Proxy-Authorization" not in hit.headers
            assert PROXY_PASSWORD.encode() not in hit.body
    finally:
        await guarded.stop()


def _parse(egress: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    return parse_settings(yaml.safe_dump({"version": 1, "egress": egress}), "sidecar.yaml",
                          env=env or {})


def test_from_environment_reads_https_proxy_and_no_proxy() -> None:
    """HTTPS_PROXY's userinfo becomes proxy_auth (the password a secret); NO_PROXY is split."""
    settings = _parse({"from_environment": True}, {
        "HTTPS_PROXY": f"http://{PROXY_USER}:{PROXY_PASSWORD}@proxy.corp.test:3128",
        "NO_PROXY": "localhost, .svc.cluster.local,127.0.0.1"})
    egress = settings.egress
    assert egress.proxy == "http://proxy.corp.test:3128"
    assert egress.no_proxy == ["localhost", ".svc.cluster.local", "127.0.0.1"]
    assert egress.proxy_auth is not None
    assert egress.proxy_auth.username == PROXY_USER
    assert egress.proxy_auth.password is not None
    assert egress.proxy_auth.password.reveal() == PROXY_PASSWORD
    assert PROXY_PASSWORD not in repr(egress)
    assert egress.bypasses("api.svc.cluster.local")
    assert egress.bypasses("127.0.0.1")
    assert not egress.bypasses("login.corp.test")
    assert _parse({"from_environment": True}).egress.proxy is None  # nothing set: direct


def test_no_proxy_entries_in_the_usual_forms() -> None:
    """``*.domain`` and ``host:port`` (as NO_PROXY lists often carry them) are understood;
    a parent domain covers its subdomains, never a longer name that merely ends alike."""
    egress = _parse({"from_environment": True}, {
        "HTTPS_PROXY": "proxy.corp.test:3128",
        "NO_PROXY": "*.internal.test,registry.test:5000,127.16.0.0/16"}).egress
    assert egress.proxy == "http://proxy.corp.test:3128"
    assert egress.no_proxy == [".internal.test", "registry.test", "127.16.0.0/16"]
    assert egress.bypasses("login.internal.test")
    assert egress.bypasses("registry.test")
    assert egress.bypasses("127.16.2.3")
    assert not egress.bypasses("127.17.2.3")
    assert not egress.bypasses("notinternal.test")
    assert not egress.bypasses("127.test")


@pytest.mark.parametrize(("egress", "message"), [
    ({"proxy": "https://proxy.corp.test:3128"},
     "egress.proxy: 'https://proxy.corp.test:3128' must be http://HOST:PORT"),
    ({"proxy": "http://proxy.corp.test"}, "egress.proxy: 'http://proxy.corp.test' must be "
                                          "http://HOST:PORT"),
    ({"proxy": f"https://u:{PROXY_PASSWORD}@proxy.corp.test:3128"},
     "egress.proxy: must not carry credentials in the URL (got ***"),
    ({"proxy": "http://proxy.corp.test:3128", "from_environment": True},
     "from_environment: true takes proxy from the environment"),
    ({"no_proxy": ["a b"]}, "egress.no_proxy[0]: 'a b' is not a host name"),
    ({"proxy_auth": {"username": "u", "password": "p"}},
     "egress.proxy_auth: is for egress.proxy, which is not set"),
])
def test_egress_settings_fail_loudly(egress: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as failed:
        _parse(egress)
    assert message in str(failed.value)
    assert PROXY_PASSWORD not in str(failed.value)
