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
