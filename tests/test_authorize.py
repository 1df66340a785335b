"""GET /{name}/authorize when credentials cannot be had (design.md §2.3): the app hears it through
its redirect URI (RFC 6749 §4.1.2.1) with its state, and with `iss` exactly when the metadata
served to it advertises RFC 9207."""

from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.conftest import SidecarFactory
from tests.flows import REDIRECT_URI, follow_once
from tests.support.recording_as import RecordingAS


@pytest.mark.parametrize(("flow", "as_flag", "expected_iss"), [
    ({}, False, None),
    ({}, True, "as"),
    ({"callback": "sidecar"}, False, "as"),
    ({"callback": "sidecar", "app_issuer": "sidecar"}, False, "sidecar"),
])
async def test_temporarily_unavailable_carries_state_and_the_served_iss(
        sidecar: SidecarFactory, flow: dict[str, str], as_flag: bool,
        expected_iss: str | None) -> None:
    metadata = {"authorization_response_iss_parameter_supported": True} if as_flag else {}
    async with RecordingAS(metadata=metadata) as rec:
        rec.answers["/register"] = (503, b"", {"Retry-After": "30"})
        side = await sidecar({"upstreams": [{"name": "acme", "issuer": rec.issuer,
                                             "redirect_uris": [REDIRECT_URI], **flow}]})
        query = {"response_type": "code", "redirect_uri": REDIRECT_URI, "state": "s-1"}
        status, location, _ = await follow_once(
            f"{side.listen.url}/acme/authorize?{urlencode(query)}")
    assert status == 302
    assert location is not None
    assert location.startswith(REDIRECT_URI + "?")
    params = parse_qs(urlsplit(location).query)
    assert params["error"] == ["temporarily_unavailable"]
    assert params["state"] == ["s-1"]
    issuers = {"as": rec.issuer, "sidecar": f"{side.listen.url}/acme"}
    assert params.get("iss") == ([issuers[expected_iss]] if expected_iss else None)


BAD_REDIRECTS = [
    pytest.param("http://evil.example\\@127.0.0.1:9999/cb", id="backslash-userinfo"),
    pytest.param("http://evil.example@127.0.0.1:9999/cb", id="userinfo"),
    pytest.param("http://127.0.0.1:9999/c\tb", id="tab"),
    pytest.param("http://127.0.0.1:9999/x/../cb", id="dot-segment"),
    pytest.param("http://127.0.0.1:9999/%2e/cb", id="escaped-dot-segment"),
    pytest.param("HTTP://127.0.0.1:9999/cb", id="upper-case-scheme"),
    pytest.param(" http://127.0.0.1:9999/cb", id="leading-space"),
]


@pytest.mark.parametrize("callback", ["app", "sidecar"])
@pytest.mark.parametrize("redirect_uri", BAD_REDIRECTS)
async def test_a_redirect_uri_a_browser_reads_otherwise_is_400_never_a_redirect(
        sidecar: SidecarFactory, callback: str, redirect_uri: str) -> None:
    """With `loopback_any_port`, `http://evil.example\\@127.0.0.1:9999/cb` looked like a loopback
    URI to urlsplit, while a browser (WHATWG URL) goes to evil.example: every redirect URI the
    sidecar compares is taken only in the canonical form a browser navigates to."""
    async with RecordingAS() as rec:
        side = await sidecar({"upstreams": [{
            "name": "acme", "issuer": rec.issuer, "redirect_uris": ["http://127.0.0.1:8765/cb"],
            "loopback_any_port": True, "callback": callback}]})
        query = {"response_type": "code", "redirect_uri": redirect_uri, "state": "s-1"}
        status, location, body = await follow_once(
            f"{side.listen.url}/acme/authorize?{urlencode(query)}")
    assert (status, location) == (400, None)
    assert body["error"] == "invalid_request"
    assert "redirect_uri" in body["error_description"]


async def test_another_loopback_port_is_still_allowed(sidecar: SidecarFactory) -> None:
    """RFC 8252 §7.3: the canonical loopback URI on another port passes."""
    async with RecordingAS() as rec:
        side = await sidecar({"upstreams": [{
            "name": "acme", "issuer": rec.issuer, "redirect_uris": ["http://127.0.0.1:8765/cb"],
            "loopback_any_port": True, "callback": "sidecar"}]})
        query = {"response_type": "code", "redirect_uri": "http://127.0.0.1:9999/cb"}
        status, location, _ = await follow_once(
            f"{side.listen.url}/acme/authorize?{urlencode(query)}")
    assert status == 302
    assert location is not None
    assert location.startswith(rec.issuer + "/authorize?")


@pytest.mark.parametrize("callback", ["app", "sidecar"])
@pytest.mark.parametrize("name", ["state", "nonce"])
async def test_a_state_or_nonce_over_512_bytes_is_400(sidecar: SidecarFactory, callback: str,
                                                      name: str) -> None:
    """The caller's state is kept for every mediated flow: 512 bytes at most (16 KB were
    accepted and held for 600 s); exactly 512 still passes."""
    async with RecordingAS() as rec:
        side = await sidecar({"upstreams": [{
            "name": "acme", "issuer": rec.issuer, "redirect_uris": ["http://127.0.0.1:8765/cb"],
            "callback": callback}]})
        base = {"response_type": "code", "redirect_uri": "http://127.0.0.1:8765/cb"}
        answers = []
        # UTF-8 bytes count: 256 é are 512 bytes; 16 KB as the review sent it
        for value in ("é" * 256, "é" * 256 + "x", "x" * 16384):
            query = urlencode({**base, name: value})
            answers.append(await follow_once(f"{side.listen.url}/acme/authorize?{query}"))
    assert answers[0][0] == 302
    for status, location, body in answers[1:]:
        assert (status, location) == (400, None)
        assert body["error_description"] == f"{name} is longer than 512 bytes"
