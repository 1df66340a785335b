"""The metadata served to the app (design.md §2.3), GET /{name}/client and client_id_file."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dcr_sidecar import files
from tests.conftest import SidecarFactory
from tests.flows import REDIRECT_URI, get_json
from tests.support.recording_as import RecordingAS

AS_EXTRAS = {
    "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt",
                                              "tls_client_auth"],
    "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
    "introspection_endpoint_auth_signing_alg_values_supported": ["ES256"],
    "revocation_endpoint_auth_signing_alg_values_supported": ["ES256"],
    "dpop_signing_alg_values_supported": ["ES256"],
    "mtls_endpoint_aliases": {"token_endpoint": "https://mtls.example/token"},
    "tls_client_certificate_bound_access_tokens": True,
    "backchannel_authentication_endpoint": "https://as.example/ciba",
    "backchannel_token_delivery_modes_supported": ["poll"],
    "backchannel_user_code_parameter_supported": True,
    "response_types_supported": ["code", "code id_token", "token"],
    "response_modes_supported": ["query", "fragment", "form_post"],
    "request_parameter_supported": True,
    "scopes_supported": ["openid", "api:read"],
    "end_session_endpoint": "https://as.example/logout",
}
GONE = ("registration_endpoint", "token_endpoint_auth_signing_alg_values_supported",
        "introspection_endpoint_auth_signing_alg_values_supported",
        "revocation_endpoint_auth_signing_alg_values_supported",
        "dpop_signing_alg_values_supported", "mtls_endpoint_aliases",
        "tls_client_certificate_bound_access_tokens", "backchannel_authentication_endpoint",
        "backchannel_token_delivery_modes_supported", "backchannel_user_code_parameter_supported")
ROUTES = {"authorization_endpoint": "authorize", "token_endpoint": "token",
          "pushed_authorization_request_endpoint": "par", "revocation_endpoint": "revoke",
          "introspection_endpoint": "introspect",
          "device_authorization_endpoint": "device_authorization"}


def documents(base: str) -> list[str]:
    return [f"{base}/acme/.well-known/openid-configuration",
            f"{base}/acme/.well-known/oauth-authorization-server",
            f"{base}/.well-known/oauth-authorization-server/acme"]


@pytest.mark.parametrize("mediated", [False, True], ids=["callback-app", "callback-sidecar"])
async def test_the_served_document_points_at_the_sidecar(sidecar: SidecarFactory,
                                                         mediated: bool) -> None:
    async with RecordingAS(metadata=AS_EXTRAS) as rec:
        upstream: dict[str, Any] = {"name": "acme", "issuer": rec.issuer,
                                    "redirect_uris": [REDIRECT_URI]}
        if mediated:
            upstream.update(callback="sidecar", app_issuer="sidecar", scopes=["api:read"])
        side = await sidecar({"upstreams": [upstream]})
        docs = [await get_json(url) for url in documents(side.listen.url)]
    assert docs[0] == docs[1] == docs[2]
    doc = docs[0]
    for member, route in ROUTES.items():
        assert doc[member] == f"{side.listen.url}/acme/{route}"
    for member in GONE:
        assert member not in doc, member
    for member in ("token_endpoint_auth_methods_supported",
                   "revocation_endpoint_auth_methods_supported",
                   "introspection_endpoint_auth_methods_supported"):
        assert doc[member] == ["client_secret_basic", "client_secret_post", "none"]
    assert doc["end_session_endpoint"] == "https://as.example/logout"  # not proxied
    if mediated:
        # `app_issuer: sidecar`: an issuer that matches the discovery URL (RFC 8414 §3.3).
        assert doc["issuer"] == f"{side.listen.url}/acme"
        assert doc["authorization_response_iss_parameter_supported"] is True
        assert doc["response_types_supported"] == ["code"]
        assert doc["response_modes_supported"] == ["query"]
        assert doc["request_parameter_supported"] is False
    else:
        assert doc["issuer"] == rec.issuer
        assert doc["response_types_supported"] == AS_EXTRAS["response_types_supported"]
        assert "authorization_response_iss_parameter_supported" not in doc


async def test_client_route_and_client_id_file(sidecar: SidecarFactory, tmp_path: Path) -> None:
    """`/client` gives the client's facts and never a secret, with no-store; client_id_file is
    written atomically, mode 0644, with the same client_id."""
    id_file = tmp_path / "shared" / "acme-client-id"
    async with RecordingAS() as rec:
        side = await sidecar({"upstreams": [{
            "name": "acme", "issuer": rec.issuer, "redirect_uris": [REDIRECT_URI],
            "client_id_file": str(id_file)}]})
        async with aiohttp.ClientSession() as session, session.get(
                f"{side.listen.url}/acme/client") as resp:
            body = await resp.json()
            assert resp.headers["Cache-Control"] == "no-store"
        registered = rec.clients[0]
    history = {k: body.pop(k) for k in ("registered_at", "discovered_from", "discovered_at")}
    assert body == {"client_id": registered["client_id"], "mechanism": "dcr", "generation": 1,
                    "token_endpoint_auth_method": "client_secret_basic", "issuer": rec.issuer,
                    "client_secret_expires_at": 0}
    assert history["discovered_from"].startswith(rec.issuer)
    for key in ("registered_at", "discovered_at"):
        assert history[key].endswith("+00:00"), history
    assert registered["client_secret"] not in str(body)
    assert id_file.read_text() == registered["client_id"] + "\n"
    assert id_file.stat().st_mode & 0o777 == 0o644


async def test_client_id_file_is_written_off_the_event_loop_before_the_answer(
        sidecar: SidecarFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """write_atomic fsyncs the file and its directory: it runs in a worker thread, and the
    request that registered the client is answered only once the file holds the client_id
    (before: it ran on the event loop's thread)."""
    threads: list[int] = []
    real = files.write_atomic

    def recording(path: Path, content: str | bytes, **kwargs: Any) -> None:
        threads.append(threading.get_ident())
        real(path, content, **kwargs)

    monkeypatch.setattr(files, "write_atomic", recording)  # the resolver calls files.write_atomic
    id_file = tmp_path / "acme-client-id"
    async with RecordingAS() as rec:
        side = await sidecar({"upstreams": [{
            "name": "acme", "issuer": rec.issuer, "redirect_uris": [REDIRECT_URI],
            "client_id_file": str(id_file)}]})
        body = await get_json(f"{side.listen.url}/acme/client")
        assert id_file.read_text() == f"{body['client_id']}\n"
    assert threads
    assert threading.get_ident() not in threads


async def test_closing_while_the_client_id_file_is_being_written_waits_for_it(
        sidecar: SidecarFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shutting down while the resolution that registered a client waits for its
    client_id_file: the write finishes (the file holds the client_id) and close() returns.
    Before: cancelling the resolution cancelled the shared write, and close() raised
    CancelledError awaiting it (a teardown error seen once under load)."""
    started, release = threading.Event(), threading.Event()
    real = files.write_atomic

    def held(path: Path, content: str | bytes, **kwargs: Any) -> None:
        if Path(path) != id_file:  # the credential store's own writes go through
            real(path, content, **kwargs)
            return
        started.set()
        if not release.wait(30):
            raise TimeoutError("the test never released the write")
        real(path, content, **kwargs)

    id_file = tmp_path / "acme-client-id"
    monkeypatch.setattr(files, "write_atomic", held)
    async with RecordingAS() as rec:
        side = await sidecar({"upstreams": [{
            "name": "acme", "issuer": rec.issuer, "redirect_uris": [REDIRECT_URI],
            "client_id_file": str(id_file)}]})

        async def ask() -> None:
            async with aiohttp.ClientSession() as session, session.get(
                    f"{side.listen.url}/acme/client") as resp:
                await resp.read()

        asking = asyncio.create_task(ask())
        try:
            assert await asyncio.to_thread(started.wait, 10), "the write never started"
            closing = asyncio.create_task(side.resolver.close())
            for _ in range(50):  # loop turns, not time: close() cancels the resolution
                await asyncio.sleep(0)
            assert not closing.done(), closing
            release.set()
            await asyncio.wait_for(closing, 10)
        finally:
            release.set()
            asking.cancel()
            await asyncio.gather(asking, return_exceptions=True)
        registered = rec.clients[0]
    assert id_file.read_text() == registered["client_id"] + "\n"
