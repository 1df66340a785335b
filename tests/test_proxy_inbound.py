"""The inbound side (design.md §2.4): sidecar-local client credentials on the back channel, the
non-loopback start-up rule, request limits, malformed input, and URLs that never come from the
Host header."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import pytest
import yaml

from dcr_sidecar import errors
from dcr_sidecar.config import Inbound, parse_settings
from dcr_sidecar.oauth.client_auth import basic_authorization
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.proxy.inbound import check, presented
from tests.conftest import LeakGuard, SidecarFactory
from tests.flows import REDIRECT_URI
from tests.support.fakes import FakeServer, FakeServers, fake_as_routes

INBOUND_SECRET = "inbound-secret-0123456789"
REAL_SECRET = "real-static-secret-0123456789"
FORM = "application/x-www-form-urlencoded"


def basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": basic_authorization(client_id, secret)}


# ---------------------------------------------------------------------- the check itself

WITH_ID = Inbound(client_id="app", client_secret=Secret(INBOUND_SECRET))
ANY_ID = Inbound(client_secret=Secret(INBOUND_SECRET))


@pytest.mark.parametrize(("inbound", "headers", "form"), [
    (WITH_ID, basic("app", INBOUND_SECRET), []),
    (WITH_ID, {}, [("client_id", "app"), ("client_secret", INBOUND_SECRET)]),
    (ANY_ID, basic("the-real-client-id", INBOUND_SECRET), []),
    (ANY_ID, {}, [("client_id", "anything"), ("client_secret", INBOUND_SECRET)]),
    (ANY_ID, {}, [("client_secret", INBOUND_SECRET)]),
    (ANY_ID, basic("a:b c+d", INBOUND_SECRET), [("client_id", "a:b c+d")]),
    (Inbound(), {"Authorization": "Bearer whatever"}, [("client_secret", "x")]),
])
def test_inbound_credentials_accepted(inbound: Inbound, headers: dict[str, str],
                                      form: list[tuple[str, str]]) -> None:
    check(inbound, headers, form)


@pytest.mark.parametrize(("inbound", "headers", "form"), [
    (WITH_ID, {}, []),
    (WITH_ID, basic("app", "wrong"), []),
    (WITH_ID, basic("other-app", INBOUND_SECRET), []),
    (WITH_ID, {}, [("client_secret", INBOUND_SECRET)]),        # client_id required when set
    (WITH_ID, {}, [("client_id", "app"), ("client_secret", INBOUND_SECRET + "x")]),
    (ANY_ID, {}, [("client_id", "x")]),
    (ANY_ID, {"Authorization": f"Bearer {INBOUND_SECRET}"}, []),
    (ANY_ID, {"Authorization": "Basic !!notbase64"}, []),
    (ANY_ID, {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, []),
    (ANY_ID, {"Authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()}, []),
    (ANY_ID, {}, [("client_secret", INBOUND_SECRET[:-1])]),
    (ANY_ID, {}, [("client_secret", "")]),
])
def test_inbound_credentials_refused_with_401(inbound: Inbound, headers: dict[str, str],
                                              form: list[tuple[str, str]]) -> None:
    with pytest.raises(errors.InboundUnauthorized) as caught:
        check(inbound, headers, form)
    assert caught.value.headers()["WWW-Authenticate"].startswith("Basic")


@pytest.mark.parametrize(("headers", "form"), [
    (basic("app", INBOUND_SECRET), [("client_secret", INBOUND_SECRET)]),   # two methods
    ({}, [("client_secret", "a"), ("client_secret", "b")]),
    ({}, [("client_id", "a"), ("client_id", "b"), ("client_secret", INBOUND_SECRET)]),
])
def test_ambiguous_client_authentication_is_400(headers: dict[str, str],
                                                form: list[tuple[str, str]]) -> None:
    with pytest.raises(errors.BadRequest) as caught:
        check(ANY_ID, headers, form)
    assert caught.value.status == 400


def test_basic_credentials_are_form_urldecoded() -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before base64."""
    raw = f"{quote_plus('id:with space')}:{quote_plus('sec%ret+')}"
    header = "Basic " + base64.b64encode(raw.encode()).decode()
    assert presented({"Authorization": header}, []) == ("id:with space", "sec%ret+")


# ---------------------------------------------------------------------- start-up rule

@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "sidecar.internal"])  # noqa: S104
def test_non_loopback_back_channel_without_inbound_secret_is_refused_saying_why(
        host: str) -> None:
    text = yaml.safe_dump({"version": 1, "listen": {"host": host, "port": 8080}})
    with pytest.raises(errors.ConfigError) as caught:
        parse_settings(text, "s.yaml")
    message = str(caught.value)
    assert "s.yaml: listen" in message
    assert "not loopback" in message
    assert "anyone who can reach the back channel could spend the app's credentials" in message
    assert "inbound.client_secret" in message


@pytest.mark.parametrize(("host", "inbound"), [
    ("127.0.0.1", {}), ("127.0.0.5", {}), ("::1", {}), ("localhost", {}),
    ("0.0.0.0", {"client_secret": INBOUND_SECRET}),  # noqa: S104
    ("0.0.0.0", {"allow_unauthenticated": True}),  # noqa: S104
])
def test_loopback_or_protected_back_channels_start(host: str, inbound: dict[str, Any]) -> None:
    parse_settings(yaml.safe_dump({"version": 1, "listen": {"host": host, "port": 8080},
                                   "inbound": inbound}), "s.yaml")


# ---------------------------------------------------------------------- end to end

@pytest.fixture
async def exposed(servers: FakeServers, sidecar: SidecarFactory,
                  leak_guard: LeakGuard) -> tuple[str, FakeServer]:
    """A sidecar bound to 0.0.0.0 with inbound credentials (reached only via 127.0.0.1), in
    front of a fake AS with a static confidential client."""
    leak_guard.add(INBOUND_SECRET, REAL_SECRET)
    as_ = await servers.start(fake_as_routes())
    side = await sidecar({
        "listen": {"host": "0.0.0.0", "port": 0},  # noqa: S104 - the rule under test
        "inbound": {"client_secret": INBOUND_SECRET},
        "upstreams": [{"name": "acme", "issuer": as_.base, "client_id": "real-client",
                       "client_secret": REAL_SECRET, "grant_types": ["client_credentials"]}]})
    return f"http://127.0.0.1:{side.listen.port}", as_


async def token(base: str, *, headers: dict[str, str] | None = None,
                form: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{base}/acme/token", data={"grant_type": "client_credentials", **(form or {})},
            headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.json()


async def test_exposed_back_channel_refuses_missing_or_wrong_credentials_before_the_as(
        exposed: tuple[str, FakeServer]) -> None:
    base, as_ = exposed
    attempts: list[dict[str, Any]] = [
        {},
        {"form": {"client_id": "x"}},
        {"form": {"client_id": "x", "client_secret": "wrong-secret"}},
        {"headers": basic("x", "wrong-secret")},
        {"headers": {"Authorization": f"Bearer {INBOUND_SECRET}"}},
    ]
    for attempt in attempts:
        status, headers, body = await token(base, **attempt)
        assert status == 401, attempt
        assert headers["WWW-Authenticate"].startswith("Basic "), attempt
        assert body["error"] == "invalid_client"
    assert as_.hits == []  # not even discovery: refused before anything else


@pytest.mark.parametrize("style", ["basic", "post"])
async def test_exposed_back_channel_swaps_inbound_for_real_credentials(
        exposed: tuple[str, FakeServer], style: str) -> None:
    base, as_ = exposed
    if style == "basic":
        status, _, body = await token(base, headers=basic("any-id", INBOUND_SECRET))
    else:
        status, _, body = await token(base, form={"client_id": "any-id",
                                                  "client_secret": INBOUND_SECRET})
    assert status == 200, body
    [call] = [hit for hit in as_.hits if hit.path == "/token"]
    assert call.headers["Authorization"] == basic_authorization("real-client", REAL_SECRET)
    assert INBOUND_SECRET.encode() not in call.body
    assert b"client_secret" not in call.body


async def test_metadata_urls_never_come_from_the_host_header(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    as_ = await servers.start(fake_as_routes(lambda issuer: {
        "authorization_endpoint": f"{issuer}/auth", "revocation_endpoint": f"{issuer}/rev"}))
    side = await sidecar({
        "public_base_url": "https://login.app.test",
        "backchannel_base_url": "http://sidecar.pod.test:8080",
        "upstreams": [{"name": "acme", "issuer": as_.base, "redirect_uris": [REDIRECT_URI]}]})
    forged = {"Host": "evil.test", "X-Forwarded-Host": "evil.test",
              "X-Forwarded-Proto": "https", "Forwarded": "host=evil.test;proto=https"}
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/acme/.well-known/openid-configuration", headers=forged) as resp:
        assert resp.status == 200
        text = await resp.text()
        document = await resp.json()
    assert "evil" not in text
    assert document["authorization_endpoint"] == "https://login.app.test/acme/authorize"
    assert document["token_endpoint"] == "http://sidecar.pod.test:8080/acme/token"
    assert document["revocation_endpoint"] == "http://sidecar.pod.test:8080/acme/revoke"


# ---------------------------------------------------------------------- limits and malformed input

async def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head + b"\r\n" + body)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return int(answer.split(b" ", 2)[1]), answer.partition(b"\r\n\r\n")[2]


async def test_header_count_and_size_get_the_sidecars_json_431_first(
        sidecar: SidecarFactory) -> None:
    side = await sidecar({"limits": {"max_header_bytes": 4096}})
    port = side.listen.port
    start = b"GET /x/client HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(120))
    status, body = await raw_request(port, start + many)
    assert (status, b"invalid_request" in body) == (431, True)
    status, body = await raw_request(port, start + b"X-Big: " + b"a" * 4500 + b"\r\n")
    assert (status, b"invalid_request" in body) == (431, True)
    # Beyond aiohttp's own limits (above ours): its plain 400, before any handler.
    status, _ = await raw_request(port, start + b"".join(
        b"X-H%d: v\r\n" % i for i in range(300)))
    assert status == 400


async def test_chunked_body_over_the_limit_is_413(sidecar: SidecarFactory) -> None:
    side = await sidecar({"limits": {"max_request_bytes": 2048}, "upstreams": [
        {"name": "acme", "issuer": "http://127.0.0.1:9", "grant_types": ["client_credentials"]}]})

    async def chunks() -> AsyncIterator[bytes]:
        yield b"grant_type=client_credentials&pad="
        for _ in range(10):
            yield b"a" * 1024

    async with aiohttp.ClientSession() as session, session.post(
            f"{side.listen.url}/acme/token", data=chunks(),
            headers={"Content-Type": FORM}) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "invalid_request"


@pytest.mark.parametrize("body", [b"a=%ff", b"a=%zz", b"a=1&&b=2", b"a", b"\xff=1",
                                  b"a=%", b"&".join(b"k%d=v" % i for i in range(300))])
async def test_malformed_forms_are_a_clear_400(sidecar: SidecarFactory, body: bytes) -> None:
    side = await sidecar({"upstreams": [{"name": "acme", "issuer": "http://127.0.0.1:9",
                                         "grant_types": ["client_credentials"]}]})
    async with aiohttp.ClientSession() as session, session.post(
            f"{side.listen.url}/acme/token", data=body, headers={"Content-Type": FORM}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"


@pytest.mark.parametrize("query", ["redirect_uri=%ff%fe", "state=%zz", "a&&b", "x=%"])
async def test_malformed_authorize_queries_are_a_clear_400(sidecar: SidecarFactory,
                                                           query: str) -> None:
    side = await sidecar({"upstreams": [{"name": "acme", "issuer": "http://127.0.0.1:9",
                                         "redirect_uris": [REDIRECT_URI]}]})
    status, body = await raw_request(
        side.listen.port, f"GET /acme/authorize?{query} HTTP/1.1\r\nHost: a\r\n"
                          "Connection: close\r\n".encode())
    assert status == 400
    assert b"invalid_request" in body
