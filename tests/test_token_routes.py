"""Token-like routes as a recording in-process AS sees them (design.md §2.3): exactly one client
authentication per request, allow-listed headers only, nothing the app tried to smuggle in, the
AS answer relayed as is, 404 for endpoints the AS lacks, inbound credentials checked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from multidict import CIMultiDict
from structlog.testing import capture_logs

from dcr_sidecar.app import Sidecar
from dcr_sidecar.oauth.client_auth import basic_authorization
from dcr_sidecar.oauth.jose import JWT_BEARER
from tests.conftest import LeakGuard, SidecarFactory
from tests.support.recording_as import Recorded, RecordingAS

APP_SECRET = "app-smuggled-secret-0123"
APP_ASSERTION = "eyJhbGciOiJub25lIn0.eyJzbXVnZ2xlZCI6MX0."
INBOUND_SECRET = "inbound-secret-for-tests-42"
SMUGGLED_HEADERS = {
    "Cookie": "session=app-cookie-value",
    "X-Forwarded-For": "127.0.0.9",
    "Forwarded": "for=127.0.0.9",
    "Authorization": basic_authorization("app-placeholder", APP_SECRET),
    "Proxy-Authorization": "Basic cHJveHk6cHJveHk=",
    "X-Custom": "app-only",
    "Origin": "http://127.0.0.1:1",
    "Accept": "application/json",
    "User-Agent": "app-oauth-lib/1.0",
    "X-Request-Id": "req-hygiene-1",
}
SMUGGLED_FORM = [("client_id", "app-placeholder"), ("client_secret", APP_SECRET),
                 ("client_assertion", APP_ASSERTION), ("client_assertion_type", JWT_BEARER)]
ROUTE_FORMS = {
    "token": [("grant_type", "client_credentials"), ("scope", "api:read")],
    "par": [("response_type", "code"), ("redirect_uri", "http://127.0.0.1:8765/callback")],
    "revoke": [("token", "some-token"), ("token_type_hint", "access_token")],
    "introspect": [("token", "some-token")],
    "device_authorization": [("scope", "api:read")],
}
ROUTE_PATHS = {"token": "/token", "par": "/par", "revoke": "/revoke",
               "introspect": "/introspect", "device_authorization": "/device"}
# Transport headers aiohttp itself writes, plus the design.md §2.3 allow-list.
ALLOWED = {"host", "accept", "accept-encoding", "user-agent", "content-type", "content-length",
           "x-request-id"}


async def start_pair(sidecar: SidecarFactory, rec: RecordingAS,
                     **upstream: Any) -> Sidecar:
    config: dict[str, Any] = {"name": "rec", "issuer": rec.issuer,
                              "grant_types": ["client_credentials"]}
    config.update(upstream)
    return await sidecar({"upstreams": [config]})


async def post(url: str, form: list[tuple[str, str]], headers: dict[str, str] | None = None
               ) -> tuple[int, CIMultiDict[str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            url, data=form, headers=headers or {}) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def auth_methods_seen(req: Recorded) -> list[str]:
    seen = []
    if req.header("Authorization"):
        seen.append("client_secret_basic")
    if req.form_values("client_secret"):
        seen.append("client_secret_post")
    if req.form_values("client_assertion"):
        seen.append("private_key_jwt")
    return seen


def check_assertion(req: Recorded, rec: RecordingAS, client_id: str) -> dict[str, Any]:
    """The assertion verifies with the jwks the sidecar registered, and is short-lived."""
    jwks = rec.requests("/register")[0].json["jwks"]
    assert req.form_values("client_assertion_type") == [JWT_BEARER]
    token = jwt.decode(req.form_values("client_assertion")[0], KeySet.import_key_set(jwks))
    claims = dict(token.claims)
    assert claims["iss"] == claims["sub"] == client_id
    assert claims["aud"] == rec.issuer
    assert 0 < claims["exp"] - claims["iat"] <= 60
    return claims


METHODS = {
    "client_secret_basic": {},
    "client_secret_post": {},
    "private_key_jwt": {"token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"]},
}


@pytest.mark.parametrize("method", list(METHODS))
async def test_each_route_carries_exactly_the_registered_method_and_nothing_smuggled(
        sidecar: SidecarFactory, leak_guard: LeakGuard, method: str) -> None:
    leak_guard.add(APP_SECRET, INBOUND_SECRET)
    metadata = {"token_endpoint_auth_methods_supported": [method], **METHODS[method]}
    async with RecordingAS(metadata=metadata) as rec:
        side = await start_pair(sidecar, rec, token_endpoint_auth_methods=[method])
        jtis = set()
        for route, form in ROUTE_FORMS.items():
            status, headers, _ = await post(f"{side.listen.url}/rec/{route}",
                                            [*form, *SMUGGLED_FORM], SMUGGLED_HEADERS)
            assert status in (200, 201), route
            assert "Set-Cookie" not in headers
            assert "X-Internal" not in headers
            assert headers["Cache-Control"] == "no-store"
            assert headers["Pragma"] == "no-cache"
            [seen] = rec.requests(ROUTE_PATHS[route])
            client = rec.clients[0]
            leak_guard.add(client.get("client_secret"))
            assert seen.header_names() <= ALLOWED | {"authorization"}, route
            assert auth_methods_seen(seen) == [method], route
            assert seen.header("User-Agent") == ["app-oauth-lib/1.0"]
            assert seen.header("Accept") == ["application/json"]
            assert seen.header("X-Request-Id") == ["req-hygiene-1"]
            wire = json.dumps([seen.headers, seen.form])
            for smuggled in (APP_SECRET, APP_ASSERTION, "app-placeholder", "app-cookie-value",
                             "127.0.0.9", "app-only"):
                assert smuggled not in wire, (route, smuggled)
            assert [v for k, v in seen.form if k in dict(form)] == [v for _, v in form]
            # client_id: a parameter of pushed authorization requests (RFC 9126 §2.1), and
            # what client_secret_post authenticates with; else absent.
            with_id = route == "par" or method == "client_secret_post"
            assert seen.form_values("client_id") == ([client["client_id"]] if with_id else [])
            if method == "client_secret_basic":
                assert seen.header("Authorization") == [
                    basic_authorization(client["client_id"], client["client_secret"])]
            elif method == "client_secret_post":
                assert seen.form_values("client_secret") == [client["client_secret"]]
            else:
                jtis.add(check_assertion(seen, rec, client["client_id"])["jti"])
        if method == "private_key_jwt":
            assert len(jtis) == len(ROUTE_FORMS)  # a unique jti per request


async def test_registration_sends_jwks_and_signing_alg_never_a_private_member(
        sidecar: SidecarFactory) -> None:
    metadata = {"token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": ["PS256", "RS256"]}
    async with RecordingAS(metadata=metadata) as rec:
        side = await start_pair(sidecar, rec, token_endpoint_auth_methods=[
            "private_key_jwt", "client_secret_basic"])
        status, _, _ = await post(f"{side.listen.url}/rec/token", ROUTE_FORMS["token"])
        assert status == 200
        body = rec.requests("/register")[0].json
    assert body["token_endpoint_auth_method"] == "private_key_jwt"
    assert body["token_endpoint_auth_signing_alg"] == "PS256"
    [key] = body["jwks"]["keys"]
    assert key["kty"] == "RSA"
    assert key["alg"] == "PS256"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)


async def test_assertion_audience_token_endpoint(sidecar: SidecarFactory) -> None:
    metadata = {"token_endpoint_auth_methods_supported": ["private_key_jwt"]}
    async with RecordingAS(metadata=metadata) as rec:
        side = await start_pair(sidecar, rec, token_endpoint_auth_methods=["private_key_jwt"],
                                assertion_audience="token_endpoint")
        await post(f"{side.listen.url}/rec/token", ROUTE_FORMS["token"])
        [seen] = rec.requests("/token")
        token = jwt.decode(seen.form_values("client_assertion")[0], KeySet.import_key_set(
            rec.requests("/register")[0].json["jwks"]))
    assert token.claims["aud"] == rec.issuer + "/token"
    assert token.header["alg"] == "RS256"  # no list at the AS: RS256 (design.md §3.3)


@pytest.mark.parametrize("route", ["par", "revoke", "introspect", "device_authorization"])
async def test_endpoint_the_as_lacks_is_404(sidecar: SidecarFactory, route: str) -> None:
    member = {"par": "pushed_authorization_request_endpoint", "revoke": "revocation_endpoint",
              "introspect": "introspection_endpoint",
              "device_authorization": "device_authorization_endpoint"}[route]
    async with RecordingAS(omit=[member]) as rec:
        side = await start_pair(sidecar, rec)
        status, _, body = await post(f"{side.listen.url}/rec/{route}", ROUTE_FORMS[route])
        assert status == 404
        assert json.loads(body)["error"] == "not_found"
        assert not rec.requests(ROUTE_PATHS[route])
        meta_url = f"{side.listen.url}/rec/.well-known/oauth-authorization-server"
        async with aiohttp.ClientSession() as session, session.get(meta_url) as resp:
            assert member not in await resp.json()


async def test_refusals_never_reach_the_as(sidecar: SidecarFactory) -> None:
    """DPoP -> 400, over the body limit -> 413, not a form -> 400: nothing is forwarded."""
    async with RecordingAS() as rec:
        side = await sidecar({"upstreams": [{"name": "rec", "issuer": rec.issuer,
                                             "grant_types": ["client_credentials"]}],
                              "limits": {"max_request_bytes": 2048}})
        url = f"{side.listen.url}/rec/token"
        assert (await post(url, ROUTE_FORMS["token"], {"DPoP": "eyJ0eXAiOiJkcG9wK2p3dCJ9"}))[
            0] == 400
        assert (await post(url, [("grant_type", "x"), ("pad", "a" * 5000)]))[0] == 413
        async with aiohttp.ClientSession() as session, session.post(
                url, json={"grant_type": "client_credentials"}) as resp:
            assert resp.status == 400
        assert not rec.requests("/token")


async def test_answer_relayed_as_is_and_redirects_not_followed(sidecar: SidecarFactory) -> None:
    async with RecordingAS() as rec:
        side = await start_pair(sidecar, rec)
        raw = b'{"active": true,  "scope":"a b"}'
        rec.answers["/introspect"] = (200, raw, {"Content-Type": "application/json; charset=x",
                                                 "Set-Cookie": "x=1"})
        rec.answers["/revoke"] = (307, b"", {"Location": rec.issuer + "/elsewhere"})
        rec.answers["/token"] = (401, b'{"error":"invalid_client"}', {
            "Content-Type": "application/json", "WWW-Authenticate": 'Basic realm="as"'})
        status, headers, body = await post(f"{side.listen.url}/rec/introspect",
                                           ROUTE_FORMS["introspect"])
        assert (status, body, headers["Content-Type"]) == (200, raw, "application/json; charset=x")
        assert "Set-Cookie" not in headers
        status, headers, _ = await post(f"{side.listen.url}/rec/revoke", ROUTE_FORMS["revoke"])
        assert status == 307
        assert "Location" not in headers
        status, headers, body = await post(f"{side.listen.url}/rec/token", ROUTE_FORMS["token"])
        assert (status, body) == (401, b'{"error":"invalid_client"}')
        assert headers["WWW-Authenticate"] == 'Basic realm="as"'
        # invalid_client for a dynamic client: one recovery registration and one transparent
        # retry of the client_credentials grant (design.md §3.5); the retry's answer is relayed.
        assert [r.path for r in rec.recorded if r.path != "/register"] == [
            "/introspect", "/revoke", "/token", "/token"]
        assert len(rec.requests("/register")) == 2


async def test_an_as_429_or_503_is_relayed_with_its_retry_after(
        sidecar: SidecarFactory) -> None:
    """An overloaded AS's Retry-After reaches the app (RFC 6585 §4, RFC 9110 §10.2.3); found
    by the chaos soak: before, the app got the 429/503 without it."""
    async with RecordingAS() as rec:
        side = await start_pair(sidecar, rec)
        for status in (429, 503):
            rec.answers["/introspect"] = (status, b'{"error":"temporarily_unavailable"}', {
                "Content-Type": "application/json", "Retry-After": "7"})
            got, headers, _ = await post(f"{side.listen.url}/rec/introspect",
                                         ROUTE_FORMS["introspect"])
            assert got == status
            assert headers["Retry-After"] == "7"


async def test_inbound_credentials_are_checked_then_swapped(
        sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    leak_guard.add(INBOUND_SECRET)
    async with RecordingAS() as rec:
        side = await sidecar({"upstreams": [{"name": "rec", "issuer": rec.issuer,
                                             "grant_types": ["client_credentials"]}],
                              "inbound": {"client_id": "app", "client_secret": INBOUND_SECRET}})
        url = f"{side.listen.url}/rec/token"
        form = ROUTE_FORMS["token"]
        for headers, extra in (({}, []),
                               ({"Authorization": basic_authorization("app", "wrong")}, []),
                               ({"Authorization": basic_authorization("other", INBOUND_SECRET)},
                                []),
                               ({}, [("client_id", "app"), ("client_secret", "wrong")])):
            status, answer, body = await post(url, [*form, *extra], headers)
            assert status == 401
            assert answer["WWW-Authenticate"].startswith("Basic")
            assert json.loads(body)["error"] == "invalid_client"
        assert not rec.requests("/token")
        ok_basic = await post(url, form, {"Authorization": basic_authorization(
            "app", INBOUND_SECRET)})
        ok_post = await post(url, [*form, ("client_id", "app"),
                                   ("client_secret", INBOUND_SECRET)])
        assert ok_basic[0] == ok_post[0] == 200
        for seen in rec.requests("/token"):
            assert INBOUND_SECRET not in json.dumps([seen.headers, seen.form])
            assert auth_methods_seen(seen) == ["client_secret_basic"]
        meta_url = f"{side.listen.url}/rec/.well-known/oauth-authorization-server"
        async with aiohttp.ClientSession() as session, session.get(meta_url) as resp:
            methods = (await resp.json())["token_endpoint_auth_methods_supported"]
        assert "none" not in methods


async def test_one_log_line_per_proxied_request(sidecar: SidecarFactory) -> None:
    async with RecordingAS() as rec:
        side = await start_pair(sidecar, rec)
        url = f"{side.listen.url}/rec/token"
        await post(url, ROUTE_FORMS["token"])  # first contact: discovery and registration
        with capture_logs() as logs:
            status, _, _ = await post(url, ROUTE_FORMS["token"])
    assert status == 200
    assert [entry["event"] for entry in logs] == ["request_handled"]
    assert logs[0]["route"] == "/{name}/token"
    assert logs[0]["status"] == 200


async def test_the_as_sees_the_request_id_the_app_is_answered_with(
        sidecar: SidecarFactory) -> None:
    """An invalid X-Request-Id is replaced, and the replacement is what the AS sees."""
    async with RecordingAS() as rec:
        side = await start_pair(sidecar, rec)
        _, headers, _ = await post(f"{side.listen.url}/rec/token", ROUTE_FORMS["token"],
                                   {"X-Request-Id": "not valid!" + "x" * 200})
        [seen] = rec.requests("/token")
    assert seen.header("X-Request-Id") == [headers["X-Request-Id"]]
    assert len(headers["X-Request-Id"]) == 32


class RawStatusServer:
    """A raw-socket HTTP/1.1 server that answers every request with `status_line` (which
    aiohttp's own server would refuse to write): a token endpoint answering 99, 101, 600..."""

    def __init__(self) -> None:
        self.status_line = b"HTTP/1.1 200 OK"
        self.requests = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawStatusServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await asyncio.wait_for(reader.readexactly(length), 5)
            self.requests += 1
            body = b'{"access_token": "never-relayed-0123"}'
            writer.write(self.status_line + b"\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() +
                         b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()


def raw_static_config(raw: RawStatusServer) -> dict[str, Any]:
    """A static client whose token endpoint is the raw server (nothing to discover)."""
    return {"upstreams": [{
        "name": "raw", "issuer": raw.url, "registration": "static",
        "client_id": "static-client", "client_secret": "static-secret-0123456789",
        "token_endpoint_auth_method": "client_secret_basic",
        "grant_types": ["client_credentials"],
        "endpoints": {"token_endpoint": f"{raw.url}/token"}}]}


@pytest.mark.parametrize(("status_line", "named"), [
    (b"HTTP/1.1 099 Weird", "HTTP 99"),  # aiohttp reads it as 99
    (b"HTTP/1.1 99", "malformed status line"),  # aiohttp's parser refuses it
    (b"HTTP/1.1 101 Switching Protocols", "HTTP 101"),
    (b"HTTP/1.1 600 Beyond", "HTTP 600"),
    (b"HTTP/1.1 999 Nine", "HTTP 999"),
])
async def test_an_as_status_outside_200_to_599_becomes_a_502_naming_it(
        sidecar: SidecarFactory, status_line: bytes, named: str) -> None:
    """Only a final status of 200-599 is relayed; anything else is a 502 that names it. (Other
    1xx answers are interim: aiohttp waits past them for the final one, RFC 9110 §15.2.)"""
    async with RawStatusServer() as raw:
        raw.status_line = status_line
        side = await sidecar(raw_static_config(raw))
        got, headers, body = await post(f"{side.listen.url}/raw/token", ROUTE_FORMS["token"])
    assert raw.requests == 1
    assert got == 502, (got, body)
    answer = json.loads(body)
    assert answer["error"] == "server_error"
    assert named in answer["error_description"]
    assert "X-Request-Id" in headers


async def test_statuses_200_and_599_are_relayed(sidecar: SidecarFactory) -> None:
    """The edges of the relayed range still pass as they are."""
    async with RawStatusServer() as raw:
        side = await sidecar(raw_static_config(raw))
        for status in (200, 599):
            raw.status_line = f"HTTP/1.1 {status} Edge".encode()
            got, _, body = await post(f"{side.listen.url}/raw/token", ROUTE_FORMS["token"])
            assert (got, body) == (status, b'{"access_token": "never-relayed-0123"}')


JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
WORKLOAD_JWT = ("eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwic3ViIjoid29ya2xv"
                "YWQifQ.c2lnbmF0dXJlLW9mLXRoZS13b3JrbG9hZC10b2tlbg")


@pytest.mark.parametrize("method", ["none", "client_secret_basic"])
async def test_jwt_bearer_grant_relayed_with_its_assertion_as_the_static_client(
        sidecar: SidecarFactory, leak_guard: LeakGuard, method: str) -> None:
    """RFC 7523 §2.1 (a workload trading its identity token, SEP-1933): the app's grant_type,
    assertion and scope reach the AS unchanged, authenticated as the configured static client
    and never as the app's placeholder; the workload's token stays out of the logs."""
    leak_guard.add(WORKLOAD_JWT, INBOUND_SECRET)
    async with RecordingAS(metadata={"token_endpoint_auth_methods_supported": [method],
                                     "grant_types_supported": [JWT_BEARER_GRANT]}) as rec:
        static: dict[str, Any] = {"client_id": "workload-client"}
        if method == "client_secret_basic":
            static["client_secret"] = INBOUND_SECRET
        side = await start_pair(sidecar, rec, grant_types=[JWT_BEARER_GRANT], **static)
        form = [("grant_type", JWT_BEARER_GRANT), ("assertion", WORKLOAD_JWT),
                ("scope", "mcp:tools")]
        status, _, body = await post(f"{side.listen.url}/rec/token",
                                     [*form, ("client_id", "app-placeholder")])
        assert status == 200, body
        [seen] = rec.requests("/token")
    assert [(k, v) for k, v in seen.form if k != "client_id"] == form
    assert auth_methods_seen(seen) == ([method] if method != "none" else [])
    if method == "none":  # RFC 6749 §3.2.1: a public client names itself
        assert seen.form_values("client_id") == ["workload-client"]
    else:
        assert seen.form_values("client_id") == []
        assert seen.header("Authorization") == [
            basic_authorization("workload-client", INBOUND_SECRET)]
