"""The real aiohttp app under arbitrary input from the app side: bodies, queries, paths and
client-authentication headers. Whatever arrives, the answer is never a 500 (an escaped
exception) — only the typed 4xx/5xx of design.md §2.4.

One sidecar serves every example: it has inbound credentials and a static client in front of
a fake AS on 127.0.0.1 that accepts any token request, so examples reach every stage (limits,
form parsing, inbound check, credential injection, forwarding, relaying).
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dcr_sidecar.app import Sidecar
from dcr_sidecar.oauth.client_auth import basic_authorization
from tests.conftest import LeakGuard, SidecarFactory
from tests.flows import REDIRECT_URI
from tests.support.fakes import FakeServers, fake_as_routes

INBOUND = "inbound-fuzz-secret-0123"
ADMIN = "admin-fuzz-token-0123456"
ROUTES = ["token", "par", "revoke", "introspect", "device_authorization"]
# DCR_FUZZ_EXAMPLES=5000 for a longer hunt than the suite's default.
FUZZ = settings(max_examples=int(os.environ.get("DCR_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
async def target(servers: FakeServers, sidecar: SidecarFactory,
                 leak_guard: LeakGuard) -> Sidecar:
    leak_guard.add(INBOUND, ADMIN, "real-fuzz-secret-0123456")
    as_ = await servers.start(fake_as_routes(lambda issuer: {
        "authorization_endpoint": f"{issuer}/auth", "revocation_endpoint": f"{issuer}/token",
        "pushed_authorization_request_endpoint": f"{issuer}/token"}))
    return await sidecar({
        "inbound": {"client_secret": INBOUND},
        "admin": {"token": ADMIN},
        "limits": {"max_request_bytes": 4096, "max_header_bytes": 4096},
        "upstreams": [{"name": "acme", "issuer": as_.base, "client_id": "real-client",
                       "client_secret": "real-fuzz-secret-0123456",
                       "redirect_uris": [REDIRECT_URI], "loopback_any_port": True}]})


async def send(port: int, request: bytes) -> int:
    """One raw HTTP/1.1 exchange; the status code of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    status = int(status_line.split(b" ", 2)[1])
    event(f"HTTP {status}")  # pytest --hypothesis-show-statistics shows the spread
    return status


def post(route: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST /acme/{route} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body


header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF,
                                    exclude_characters="\x7f"), max_size=60)
auth_headers = st.one_of(
    st.just({}),
    st.builds(lambda v: {"Authorization": v}, header_text),
    st.builds(lambda v: {"Authorization": "Basic " + v}, header_text),
    st.just({"Authorization": basic_authorization("any", INBOUND)}),
    st.builds(lambda i, s: {"Authorization": basic_authorization(i, s)}, st.text(max_size=10),
              st.text(max_size=10)),
)
content_types = st.sampled_from(["application/x-www-form-urlencoded",
                                 "application/x-www-form-urlencoded; charset=utf-8",
                                 "application/json", "text/plain", "multipart/form-data", ""])


@FUZZ
@given(route=st.sampled_from(ROUTES), body=st.binary(max_size=300), auth=auth_headers,
       content_type=content_types)
async def test_arbitrary_bodies_never_get_a_500(target: Sidecar, route: str, body: bytes,
                                                auth: dict[str, str], content_type: str) -> None:
    status = await send(target.listen.port, post(route, body, {**auth,
                                                               "Content-Type": content_type}))
    assert status != 500
    assert status in {200, 400, 401, 404, 413, 431, 502}, status


form_fields = st.lists(st.tuples(
    st.sampled_from(["grant_type", "client_id", "client_secret", "client_assertion",
                     "client_assertion_type", "scope", "code", "redirect_uri", "resource",
                     "token"]) | st.text(max_size=12),
    st.text(max_size=40)), max_size=8)


@FUZZ
@given(route=st.sampled_from(ROUTES), fields=form_fields, auth=auth_headers)
async def test_well_formed_forms_with_arbitrary_fields_never_get_a_500(
        target: Sidecar, route: str, fields: list[tuple[str, str]],
        auth: dict[str, str]) -> None:
    """Valid urlencoding with arbitrary names and values, half with the right inbound secret
    in the body: these reach the forwarding stage."""
    if not auth:
        fields = [*fields, ("client_secret", INBOUND)]
    body = urlencode(fields).encode()
    status = await send(target.listen.port, post(
        route, body, {**auth, "Content-Type": "application/x-www-form-urlencoded"}))
    assert status != 500


query_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                   exclude_characters="#"), max_size=120)
query_pairs = st.lists(st.tuples(
    st.sampled_from(["redirect_uri", "state", "client_id", "response_type", "scope",
                     "request_uri"]) | st.text(max_size=8),
    st.sampled_from([REDIRECT_URI, "http://127.0.0.1:9/callback", "http://[::1]:1/callback"])
    | st.text(max_size=30)), max_size=6)


@FUZZ
@given(raw=query_text, pairs=query_pairs)
async def test_arbitrary_authorize_queries_never_get_a_500(
        target: Sidecar, raw: str, pairs: list[tuple[str, str]]) -> None:
    for query in (raw, urlencode(pairs, quote_via=quote)):
        status = await send(target.listen.port, (
            f"GET /acme/authorize?{query} HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n"
        ).encode())
        assert status in {302, 400}, (query, status)


@FUZZ
@given(path=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                  exclude_characters="?#"), max_size=60),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"]))
async def test_arbitrary_paths_and_methods_never_get_a_500(target: Sidecar, path: str,
                                                           method: str) -> None:
    status = await send(target.listen.port, (
        f"{method} /{path} HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode())
    assert status != 500


@FUZZ
@given(value=st.binary(max_size=60).filter(lambda b: b"\r" not in b and b"\n" not in b),
       path=st.sampled_from(["/admin/upstreams", "/admin/upstreams/acme/rotate",
                             "/admin/upstreams/acme/registration"]),
       method=st.sampled_from(["GET", "POST", "DELETE"]))
async def test_arbitrary_admin_credentials_never_get_a_500(target: Sidecar, value: bytes,
                                                           path: str, method: str) -> None:
    """Any bytes in the admin Authorization header (invalid UTF-8 included) get 401/404/405."""
    for header in (value, b"Bearer " + value):
        status = await send(target.management.port, (
            f"{method} {path} HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n"
            "Connection: close\r\nAuthorization: ").encode() + header + b"\r\n\r\n")
        assert status != 500
