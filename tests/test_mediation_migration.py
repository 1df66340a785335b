"""A mediated login (`callback: sidecar`, design.md §3.6) across an authorization-server
migration (§3.1): a flow started at AS-1 whose callback, or whose code exchange, arrives after
the upstream switched to AS-2. The switch drops AS-1's credentials (no fallback to its
generation), so the flow cannot be finished with AS-1's client: it is refused, with a message
that says the upstream moved to another AS and the login must start again (not the mix-up
message of another upstream's state), its record is spent, and neither AS's token endpoint
sees the code. Real in-process servers on loopback: a resource whose metadata moves, and two
recording authorization servers."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp

from dcr_sidecar.app import Sidecar
from tests.conftest import FakeFactory, SidecarFactory
from tests.flows import follow_once
from tests.support.recording_as import RecordingAS
from tests.test_resource_source import MovingResource, authorize_at, unpinned


def state_of(location: str) -> str:
    return parse_qs(urlsplit(location).query)["state"][0]


def callback(side: Sidecar, **params: str) -> str:
    return f"{side.listen.url}/mcp/callback?{urlencode(params)}"


def moved_message(body: Any, first: RecordingAS, second: RecordingAS) -> str:
    description: str = body["error_description"]
    assert "another upstream" not in description, description
    assert first.issuer in description, description
    assert second.issuer in description, description
    assert "again" in description, description
    return description


async def test_a_callback_after_the_switch_is_refused_as_a_moved_flow_and_spent(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """State minted for AS-1; the resource moves to AS-2 and the next authorization start
    switches the upstream; AS-1's answer then reaches the callback: 400 naming both issuers,
    never a redirect to the app; the state is spent."""
    fake = await fake_server()
    async with RecordingAS() as as1, RecordingAS() as as2:
        resource = MovingResource(fake, as1.issuer)
        side = await sidecar(unpinned(fake, callback="sidecar"))
        first = await authorize_at(side.listen.url)
        assert first.startswith(as1.issuer + "/authorize?")
        resource.move_to(as2.issuer)
        second = await authorize_at(side.listen.url)
        assert second.startswith(as2.issuer + "/authorize?")

        status, location, body = await follow_once(
            callback(side, code="c-as1", state=state_of(first), iss=as1.issuer))
        assert (status, location) == (400, None), body
        assert body["error"] == "invalid_request"
        moved_message(body, as1, as2)
        status, location, body = await follow_once(
            callback(side, code="c-as1", state=state_of(first), iss=as1.issuer))
        assert (status, location) == (400, None)
        assert "unknown, replayed or expired" in body["error_description"]
        assert as1.requests("/token") == as2.requests("/token") == []


async def test_a_code_exchange_after_the_switch_is_refused_as_a_moved_flow(
        fake_server: FakeFactory, sidecar: SidecarFactory) -> None:
    """AS-1's callback came through before the switch (the app holds the code); the exchange
    comes after it: 400 invalid_grant naming both issuers; the code goes to neither AS and
    its record is spent."""
    fake = await fake_server()
    async with RecordingAS() as as1, RecordingAS() as as2:
        resource = MovingResource(fake, as1.issuer)
        side = await sidecar(unpinned(fake, callback="sidecar"))
        first = await authorize_at(side.listen.url)
        status, location, _ = await follow_once(
            callback(side, code="c-as1", state=state_of(first), iss=as1.issuer))
        assert status == 302
        assert location is not None
        resource.move_to(as2.issuer)
        assert (await authorize_at(side.listen.url)).startswith(as2.issuer + "/authorize?")

        form = {"grant_type": "authorization_code", "code": "c-as1"}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{side.listen.url}/mcp/token", data=form) as resp:
                status, body = resp.status, await resp.json()
            assert status == 400, body
            assert body["error"] == "invalid_grant"
            moved_message(body, as1, as2)
            async with session.post(f"{side.listen.url}/mcp/token", data=form) as resp:
                assert resp.status == 400  # spent
        assert as1.requests("/token") == as2.requests("/token") == []
