"""Secret hygiene (design.md §3.9) and sanitising what an AS said (§3.8): the redaction processor,
aiohttp's own log records, error descriptions, and `doctor`'s output."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
import yaml
from aiohttp import web
from structlog.testing import capture_logs

from dcr_sidecar import observability
from dcr_sidecar.config import parse_settings
from dcr_sidecar.doctor import run_doctor
from dcr_sidecar.oauth.secret import MASK, Secret
from tests.conftest import LeakGuard, SidecarFactory, sidecar_config
from tests.support.fakes import FakeServers, Handler, fake_as_routes

IAT = "iat-observability-0123456789"
ISSUED_SECRET = "issued-secret-observability-0123456789"
log = structlog.get_logger("tests.observability")


def last_line(guard: LeakGuard) -> dict[str, Any]:
    return dict(json.loads(guard.log_text().strip().splitlines()[-1]))


def test_secret_keys_secret_values_and_credentials_are_masked(leak_guard: LeakGuard) -> None:
    leak_guard.add("s3cret-value-123", "abc.def.ghi-token", "dXNlcjpzZWNyZXQ")
    log.info("probe", client_secret="s3cret-value-123", nested={"refresh_token": "r" * 20},
             held=Secret("held-secret-value"), detail="got Bearer abc.def.ghi-token back",
             header="Basic dXNlcjpzZWNyZXQ=", form="grant_type=x&code=abcdef123&state=1")
    line = last_line(leak_guard)
    assert line["client_secret"] == MASK
    assert line["nested"]["refresh_token"] == MASK
    assert line["held"] == MASK
    assert line["detail"] == f"got Bearer {MASK} back"
    assert line["header"] == f"Basic {MASK}"
    assert line["form"] == f"grant_type=x&code={MASK}&state=1"


def test_remembered_secrets_are_masked_wherever_they_appear(leak_guard: LeakGuard) -> None:
    leak_guard.redactor.remember(Secret("opaque-remembered-42"))
    log.info("probe", detail="the AS said: opaque-remembered-42 is wrong", other=["x",
             "opaque-remembered-42"])
    line = last_line(leak_guard)
    assert line["detail"] == f"the AS said: {MASK} is wrong"
    assert line["other"] == ["x", MASK]


def test_urls_lose_userinfo_and_query_in_fields_and_in_text(leak_guard: LeakGuard) -> None:
    leak_guard.add("pa55word-x", "qsecret-123")
    log.info("probe", url="https://user:pa55word-x@as.test/token?x=qsecret-123#f",
             detail="cannot reach https://user:pa55word-x@as.test/a?b=qsecret-123 now")
    line = last_line(leak_guard)
    assert line["url"] == "https://as.test/token"
    assert line["detail"] == "cannot reach https://as.test/a now"


def test_control_and_bidi_characters_never_reach_a_log_line(leak_guard: LeakGuard) -> None:
    """A value an AS chose cannot forge a second log line or recolour a terminal."""
    log.info("probe", client_id="abc\n{\"event\": \"forged\"}\r\x1b[31m\u202eevil")
    text = leak_guard.log_text().strip()
    assert len(text.splitlines()) == 1
    assert last_line(leak_guard)["client_id"] == 'abc{"event": "forged"}[31mevil'


def test_configured_secrets_are_remembered(tmp_path: Path, leak_guard: LeakGuard) -> None:
    settings = parse_settings(yaml.safe_dump(sidecar_config(tmp_path, {
        "inbound": {"client_secret": "inbound-remembered-1"},
        "upstreams": [{"name": "a", "issuer": "https://a.test", "client_id": "c",
                       "client_secret": "static-remembered-2",
                       "grant_types": ["client_credentials"]},
                      {"name": "b", "issuer": "https://b.test", "initial_access_token":
                       "iat-remembered-3", "grant_types": ["client_credentials"]}]})), "t.yaml")
    redactor = observability.Redactor()
    redactor.remember_settings(settings)
    assert {"inbound-remembered-1", "static-remembered-2", "iat-remembered-3"} <= (
        redactor.known)


def test_standard_library_records_pass_through_redaction(leak_guard: LeakGuard) -> None:
    """aiohttp logs with the standard library; those records get the same treatment."""
    leak_guard.add("stdlib-secret-42")
    leak_guard.redactor.remember("stdlib-secret-42")
    logging.getLogger("aiohttp.client").warning(
        "failed %s with stdlib-secret-42\nsecond line", "https://u:p@as.test/t?code=zzz")
    line = last_line(leak_guard)
    assert line["logger"] == "aiohttp.client"
    assert line["event"] == f"failed https://as.test/t with {MASK}second line"


async def test_requests_refused_by_aiohttps_parser_are_logged_without_their_bytes(
        sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """A header line beyond aiohttp's limit makes aiohttp log (ERROR, with a traceback) the
    first bytes of that line — here a bearer token. They are dropped before rendering."""
    token = "parser-bearer-token-" + "t" * 40000
    leak_guard.add(token[:60])
    side = await sidecar({"limits": {"max_header_bytes": 4096}})
    reader, writer = await asyncio.open_connection("127.0.0.1", side.listen.port)
    writer.write(b"GET /x/client HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
                 + token.encode() + b"\r\n\r\n")
    await writer.drain()
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.0 400")
    assert "its content not logged" in leak_guard.log_text()


# ---------------------------------------------------------------------- messages and doctor

def rejecting_register(description: str) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": "invalid_client_metadata",
                                  "error_description": description}, status=400)

    return handle


async def test_error_descriptions_never_carry_a_secret_or_control_characters(
        servers: FakeServers, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """The AS echoes the IAT it was sent, with a forged line, in its error_description."""
    leak_guard.add(IAT)
    as_ = await servers.start([("POST", "/register", rejecting_register(
        f"token {IAT} rejected\r\nX-Injected: 1\x1b[2J")), *fake_as_routes()])
    side = await sidecar({"upstreams": [{"name": "acme", "issuer": as_.base,
                                         "initial_access_token": IAT,
                                         "grant_types": ["client_credentials"]}]})
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/acme/client") as resp:
        body = await resp.json()
    assert resp.status == 502
    description = body["error_description"]
    assert IAT not in description
    assert MASK in description
    assert not set("\r\n\x1b").intersection(description)


async def test_client_id_with_control_characters_is_refused(
        servers: FakeServers, sidecar: SidecarFactory) -> None:
    async def register(request: web.Request) -> web.StreamResponse:
        return web.json_response({**await request.json(), "client_id": "id\nforged",
                                  "token_endpoint_auth_method": "none"}, status=201)

    as_ = await servers.start([("POST", "/register", register), *fake_as_routes()])
    side = await sidecar({"upstreams": [{"name": "acme", "issuer": as_.base,
                                         "grant_types": ["client_credentials"]}]})
    async with aiohttp.ClientSession() as session, session.get(
            f"{side.listen.url}/acme/client") as resp:
        body = await resp.json()
    assert resp.status == 502
    assert "printable ASCII" in body["error_description"]


@pytest.mark.parametrize("as_json", [False, True])
async def test_doctor_register_prints_no_secret(
        servers: FakeServers, tmp_path: Path, leak_guard: LeakGuard,
        capsys: pytest.CaptureFixture[str], as_json: bool) -> None:
    leak_guard.add(IAT, ISSUED_SECRET)
    as_ = await servers.start(fake_as_routes(client_secret=ISSUED_SECRET))
    settings = parse_settings(yaml.safe_dump(sidecar_config(tmp_path, {"upstreams": [
        {"name": "acme", "issuer": as_.base, "initial_access_token": IAT,
         "grant_types": ["client_credentials"]}]})), "t.yaml")
    code = await run_doctor(settings, "acme", register=True, as_json=as_json,
                            redactor=leak_guard.redactor)
    out = capsys.readouterr()
    leak_guard.add_text(out.out + out.err)
    assert code == 0, out
    assert "fake-client-id" in out.out
    assert [hit.headers.get("Authorization") for hit in as_.hits
            if hit.path == "/register"] == [f"Bearer {IAT}"]


async def test_doctor_scrubs_a_secret_echoed_into_an_error(
        servers: FakeServers, tmp_path: Path, leak_guard: LeakGuard,
        capsys: pytest.CaptureFixture[str]) -> None:
    leak_guard.add(IAT)
    as_ = await servers.start([("POST", "/register", rejecting_register(f"bad {IAT}")),
                               *fake_as_routes()])
    settings = parse_settings(yaml.safe_dump(sidecar_config(tmp_path, {"upstreams": [
        {"name": "acme", "issuer": as_.base, "initial_access_token": IAT,
         "grant_types": ["client_credentials"]}]})), "t.yaml")
    code = await run_doctor(settings, "acme", register=True, as_json=False,
                            redactor=leak_guard.redactor)
    out = capsys.readouterr()
    leak_guard.add_text(out.out + out.err)
    assert code == 1
    assert f"bad {MASK}" in out.out


# ---------------------------------------------------------------------------- the canonical line

def test_cached_logger_follows_a_new_configuration_level_and_capture(
        leak_guard: LeakGuard) -> None:
    """The request line's logger is assembled once, yet a new output, a new level and
    structlog's capture_logs all take effect on the next call."""
    cached = observability.CachedLogger("tests.cached")
    cached.info("first_written", n=1)
    assert last_line(leak_guard)["event"] == "first_written"
    assert cached.bound() is cached.bound()  # no assembly per call
    elsewhere = io.StringIO()
    observability.configure_logging(leak_guard.redactor, "json", "info", elsewhere)
    cached.info("second_written")
    assert json.loads(elsewhere.getvalue())["event"] == "second_written"
    observability.set_level("warning")
    cached.info("not_written")
    assert "not_written" not in elsewhere.getvalue()
    with capture_logs() as logs:
        cached.warning("captured")
    assert [entry["event"] for entry in logs] == ["captured"]


def test_json_lines_render_what_orjson_refuses(leak_guard: LeakGuard) -> None:
    """A lone surrogate (a stored byte that was not UTF-8) and an integer past 64 bits still
    make one JSON line, through the standard library's encoder."""
    log.info("probe", odd="bad\udcffbyte", big=2**70, obj=object.__name__)
    line = last_line(leak_guard)
    assert (line["odd"], line["big"]) == ("bad\udcffbyte", 2**70)


def test_a_value_found_clean_is_masked_once_it_becomes_a_known_secret(
        leak_guard: LeakGuard) -> None:
    """Redaction remembers strings it found clean; remembering a secret forgets them. (Its own
    output: the value is logged before it is a secret, which the leak guard would flag.)"""
    own = io.StringIO()
    observability.configure_logging(leak_guard.redactor, "json", "info", own)
    log.info("probe", detail="later-a-secret-77")
    log.info("probe", detail="later-a-secret-77")
    leak_guard.redactor.remember("later-a-secret-77")
    log.info("probe", detail="later-a-secret-77")
    details = [json.loads(line)["detail"] for line in own.getvalue().splitlines()]
    assert details == ["later-a-secret-77", "later-a-secret-77", MASK]


def test_a_known_secret_inside_a_plain_token_is_masked(leak_guard: LeakGuard) -> None:
    """Values of letters, digits and "._-" skip the URL and credential patterns, never the
    known secrets (a client could send its secret as X-Request-Id)."""
    leak_guard.redactor.remember("plain-secret-42")
    log.info("probe", request_id="id.plain-secret-42_x", short="plain-secret-42")
    line = last_line(leak_guard)
    assert (line["request_id"], line["short"]) == (f"id.{MASK}_x", MASK)
