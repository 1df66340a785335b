"""Callback mediation (`callback: sidecar`, design.md §3.6) in front of the real oidc-provider
and a recording AS: the sidecar's own state and callback, the RFC 9207 `iss` check, one-time
records with a TTL, sidecar-made PKCE, PAR, and the generation named in the record."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from dcr_sidecar.app import Sidecar
from dcr_sidecar.oauth.pkce import make_verifier, s256_challenge
from dcr_sidecar.store.flows import FlowCache
from dcr_sidecar.store.records import RecordKey
from tests.conftest import LeakGuard, ProviderFactory, RedisFactory, SidecarFactory
from tests.flows import REDIRECT_URI, browser_to_callback, follow_once
from tests.support.recording_as import RecordingAS
from tests.support.waiting import until


def mediated(issuer: str, **extra: Any) -> dict[str, Any]:
    upstream: dict[str, Any] = {
        "name": "acme", "issuer": issuer, "redirect_uris": [REDIRECT_URI],
        "scopes": ["api:read", "offline_access"], "callback": "sidecar",
        "grant_types": ["authorization_code", "refresh_token"]}
    upstream.update(extra)
    return {"upstreams": [upstream]}


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def with_params(url: str, **changes: str | None) -> str:
    """`url` with query parameters replaced (a value) or removed (None)."""
    parts = urlsplit(url)
    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
    params.update({k: v for k, v in changes.items() if v is not None})
    kept = {k: v for k, v in params.items() if changes.get(k, "") is not None}
    return parts._replace(query=urlencode(kept)).geturl()


def authorize_url(side: Sidecar, **params: str) -> str:
    base = {"response_type": "code", "client_id": "placeholder", "redirect_uri": REDIRECT_URI,
            "scope": "api:read offline_access", "state": "app-state-1", "prompt": "consent"}
    base.update(params)
    return f"{side.listen.url}/acme/authorize?{urlencode(base)}"


async def token(side: Sidecar, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{side.listen.url}/acme/token", data=form) as resp:
        return resp.status, await resp.json()


async def login(side: Sidecar, **params: str) -> str:
    """Authorize through the sidecar, log in, and return the sidecar's callback URL."""
    return await browser_to_callback(authorize_url(side, **params),
                                     f"{side.listen.url}/acme/callback")


async def test_sidecar_pkce_lets_an_app_without_pkce_through_a_provider_requiring_it(
        oidc: ProviderFactory, sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """`pkce: sidecar` + `app_issuer: sidecar`: the app sends no PKCE and gets its own state,
    the code and the sidecar's issuer back; the code exchange with the app's redirect_uri and a
    placeholder client works, and so does refresh."""
    provider = await oidc(pkce_required=True)
    side = await sidecar(mediated(provider.issuer, pkce="sidecar", app_issuer="sidecar"))
    to_as = await follow_once(authorize_url(side))
    assert to_as[0] == 302
    assert to_as[1] is not None
    sent = query(to_as[1])
    assert sent["redirect_uri"] == [f"{side.listen.url}/acme/callback"]
    assert sent["state"] != ["app-state-1"]
    assert sent["code_challenge_method"] == ["S256"]
    callback = await login(side)
    status, location, _ = await follow_once(callback)
    assert status == 302
    assert location is not None
    assert location.startswith(REDIRECT_URI + "?")
    back = query(location)
    assert back["state"] == ["app-state-1"]
    assert back["iss"] == [f"{side.listen.url}/acme"]
    status, body = await token(side, {"grant_type": "authorization_code", "code": back["code"][0],
                                      "redirect_uri": REDIRECT_URI, "client_id": "placeholder"})
    leak_guard.add_token_response(body)
    assert status == 200, body
    assert body["scope"] == "api:read offline_access"
    status, refreshed = await token(side, {"grant_type": "refresh_token",
                                           "refresh_token": body["refresh_token"]})
    leak_guard.add_token_response(refreshed)
    assert status == 200, refreshed
    token_calls = [r for r in await provider.requests() if r["route"] == "token"]
    assert "code_verifier" in token_calls[0]["body_keys"]


async def test_without_sidecar_pkce_the_as_error_reaches_the_app_the_same_way(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    """The control: `pkce: app` and an app without PKCE -> the AS's error, handed on to the
    app's redirect URI with the app's state and the issuer the app expects."""
    provider = await oidc(pkce_required=True)
    side = await sidecar(mediated(provider.issuer))
    status, location, _ = await follow_once(authorize_url(side))
    assert status == 302
    assert location is not None
    status, to_callback, _ = await follow_once(location)
    assert status in (302, 303)
    assert to_callback is not None
    assert to_callback.startswith(f"{side.listen.url}/acme/callback?")
    status, app_location, _ = await follow_once(to_callback)
    assert status == 302
    assert app_location is not None
    back = query(app_location)
    assert back["error"] == ["invalid_request"]
    assert back["state"] == ["app-state-1"]
    assert back["iss"] == [provider.issuer]
    assert "code" not in back


async def test_the_apps_own_pkce_is_kept(oidc: ProviderFactory, sidecar: SidecarFactory,
                                         leak_guard: LeakGuard) -> None:
    provider = await oidc(pkce_required=True)
    side = await sidecar(mediated(provider.issuer, pkce="sidecar"))
    verifier = make_verifier()
    challenge = s256_challenge(verifier)
    sent = query((await follow_once(authorize_url(side, code_challenge=challenge,
                                                  code_challenge_method="S256")))[1] or "")
    assert sent["code_challenge"] == [challenge]
    callback = await login(side, code_challenge=challenge, code_challenge_method="S256")
    code = query((await follow_once(callback))[1] or "")["code"][0]
    status, body = await token(side, {"grant_type": "authorization_code", "code": code,
                                      "code_verifier": verifier})
    leak_guard.add_token_response(body)
    assert status == 200, body


async def test_forged_iss_is_refused_and_the_state_is_then_spent(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    """RFC 9207: an `iss` other than the AS's is a mix-up (RFC 9700 §4.4): 400, no redirect.
    The state was taken, so the genuine response can no longer be used either."""
    provider = await oidc()
    side = await sidecar(mediated(provider.issuer))
    callback = await login(side)
    params = query(callback)
    assert params["iss"] == [provider.issuer]
    forged = with_params(callback, iss="http://127.0.0.2:9")
    status, location, body = await follow_once(forged)
    assert (status, location) == (400, None)
    assert body["error"] == "invalid_request"
    assert "mix-up" in body["error_description"]
    status, location, body = await follow_once(callback)
    assert (status, location) == (400, None)
    assert "state" in body["error_description"]


async def test_missing_iss_is_refused_when_the_as_advertises_it(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    provider = await oidc()
    side = await sidecar(mediated(provider.issuer))
    metadata_url = f"{provider.issuer}/.well-known/openid-configuration"
    async with aiohttp.ClientSession() as session, session.get(metadata_url) as resp:
        assert (await resp.json())["authorization_response_iss_parameter_supported"] is True
    callback = await login(side)
    stripped = with_params(callback, iss=None)
    assert "iss" not in query(stripped)
    status, _, body = await follow_once(stripped)
    assert status == 400
    assert "no iss" in body["error_description"]


async def test_unknown_and_replayed_state_are_refused(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    provider = await oidc()
    side = await sidecar(mediated(provider.issuer))
    base = f"{side.listen.url}/acme/callback"
    for url in (f"{base}?code=x&iss={provider.issuer}", f"{base}?code=x&state=made-up"):
        status, location, body = await follow_once(url)
        assert (status, location, body["error"]) == (400, None, "invalid_request")
    callback = await login(side)
    assert (await follow_once(callback))[0] == 302
    status, location, body = await follow_once(callback)  # replayed
    assert (status, location) == (400, None)
    assert body["error_description"] == "unknown, replayed or expired state"


async def test_expired_records_are_refused(oidc: ProviderFactory,
                                           sidecar: SidecarFactory) -> None:
    """After their TTL a state record, and a code's record, are gone: the flow cache (aiocache
    in memory) with a short TTL, waited on until it holds nothing (no sleep-and-hope)."""
    provider = await oidc()
    flows = FlowCache.in_memory(ttl=FLOW_TTL_SHORT)
    side = await sidecar(mediated(provider.issuer), flows=flows)
    callback = await login(side)
    await until(lambda: _empty(flows), "the state record expired")
    status, _, body = await follow_once(callback)
    assert status == 400
    assert "expired" in body["error_description"]
    callback = await login(side)
    code = query((await follow_once(callback))[1] or "")["code"][0]
    await until(lambda: _empty(flows), "the code's record expired")
    status, answer = await token(side, {"grant_type": "authorization_code", "code": code})
    assert (status, answer["error"]) == (400, "invalid_grant")


FLOW_TTL_SHORT = 2.0  # a login at the local provider (registered already) takes ~0.1 s


async def _empty(flows: FlowCache) -> bool:
    return await flows.held() == 0


async def test_a_code_that_did_not_come_through_the_callback_is_refused(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    provider = await oidc()
    side = await sidecar(mediated(provider.issuer))
    status, answer = await token(side, {"grant_type": "authorization_code", "code": "forged",
                                        "redirect_uri": REDIRECT_URI})
    assert (status, answer["error"]) == (400, "invalid_grant")
    assert not [r for r in await provider.requests() if r["route"] == "token"]


async def test_code_exchange_with_another_redirect_uri_is_refused(
        oidc: ProviderFactory, sidecar: SidecarFactory) -> None:
    provider = await oidc()
    side = await sidecar(mediated(provider.issuer, pkce="sidecar"))
    code = query((await follow_once(await login(side)))[1] or "")["code"][0]
    status, answer = await token(side, {"grant_type": "authorization_code", "code": code,
                                        "redirect_uri": REDIRECT_URI + "/other"})
    assert (status, answer["error"]) == (400, "invalid_grant")


async def test_par_is_mediated_too(oidc: ProviderFactory, sidecar: SidecarFactory,
                                   leak_guard: LeakGuard) -> None:
    """PAR: the pushed request carries the sidecar's redirect URI, state and PKCE; the
    browser then goes to /authorize with client_id beside request_uri."""
    provider = await oidc(pkce_required=True)
    side = await sidecar(mediated(provider.issuer, pkce="sidecar"))
    form = {"response_type": "code", "client_id": "placeholder", "redirect_uri": REDIRECT_URI,
            "scope": "api:read", "state": "par-state", "prompt": "consent"}
    async with aiohttp.ClientSession() as session, session.post(
            f"{side.listen.url}/acme/par", data=form) as resp:
        pushed = await resp.json()
        assert resp.status == 201, pushed
    par_call = next(r for r in await provider.requests()
                    if r["route"] == "pushed_authorization_request")
    assert {"code_challenge", "state", "redirect_uri"} <= set(par_call["body_keys"])
    url = (f"{side.listen.url}/acme/authorize?"
           f"{urlencode({'client_id': 'placeholder', 'request_uri': pushed['request_uri']})}")
    callback = await browser_to_callback(url, f"{side.listen.url}/acme/callback")
    back = query((await follow_once(callback))[1] or "")
    assert back["state"] == ["par-state"]
    status, body = await token(side, {"grant_type": "authorization_code", "code": back["code"][0],
                                      "redirect_uri": REDIRECT_URI})
    leak_guard.add_token_response(body)
    assert status == 200, body


@pytest.mark.parametrize(("params", "reason"), [
    ({"response_type": "token"}, "response_type=code"),
    ({"response_mode": "form_post"}, "query response mode"),
    ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request parameter"),
    ({"redirect_uri": "http://127.0.0.1:8765/elsewhere"}, "redirect_uris"),
    ({"scope": "openid api:read"}, "openid scope"),
])
async def test_unmediable_requests_get_400_never_a_redirect(
        sidecar: SidecarFactory, params: dict[str, str], reason: str) -> None:
    async with RecordingAS() as rec:
        side = await sidecar(mediated(rec.issuer, app_issuer="sidecar"))
        status, location, body = await follow_once(authorize_url(side, **params))
    assert (status, location) == (400, None)
    assert reason in body["error_description"]


async def test_the_sidecar_callback_is_what_gets_registered(sidecar: SidecarFactory) -> None:
    async with RecordingAS() as rec:
        side = await sidecar(mediated(rec.issuer))
        await follow_once(f"{side.listen.url}/acme/client")
        body = rec.requests("/register")[0].json
    assert body["redirect_uris"] == [f"{side.listen.url}/acme/callback"]
    assert body["application_type"] == "native"  # a loopback callback (OIDC Registration §2)


async def test_the_exchange_uses_the_generation_the_flow_started_with(
        sidecar: SidecarFactory) -> None:
    """A new client generation between authorize and token: the record names the old one,
    whose client authenticates the exchange (design.md §3.4, §3.6)."""
    async with RecordingAS() as rec:
        side = await sidecar(mediated(rec.issuer))
        status, location, _ = await follow_once(authorize_url(side))
        assert status == 302
        assert location is not None
        first = rec.clients[0]
        sidecar_state = query(location)["state"][0]
        await new_generation(side, rec.issuer)
        callback = (f"{side.listen.url}/acme/callback?"
                    f"{urlencode({'code': 'c-1', 'state': sidecar_state, 'iss': rec.issuer})}")
        assert (await follow_once(callback))[0] == 302
        status, _ = await token(side, {"grant_type": "authorization_code", "code": "c-1"})
        assert status == 200
        client = await follow_once(f"{side.listen.url}/acme/client")
        assert client[2]["generation"] == 2
        [seen] = rec.requests("/token")
    from dcr_sidecar.oauth.client_auth import basic_authorization

    assert seen.header("Authorization") == [
        basic_authorization(first["client_id"], first["client_secret"])]
    assert dict(seen.form)["redirect_uri"] == f"{side.listen.url}/acme/callback"


async def new_generation(side: Sidecar, issuer: str) -> None:
    """Stand-in for a rotation: a second generation of the same configuration in the store,
    the first superseded, and the resolver made to load it."""
    store = side.store
    key = RecordKey(issuer, "acme")
    async with store.lock(key):  # a redis store takes writes only under the lease
        record = await store.get(key)
        assert record is not None
        current = record.generations[-1]
        second = replace(current, generation=2, client_id="client-gen-2",
                         received_at=time.time())
        await store.put(record.with_generation(second, time.time()))
    side.resolver.forget("acme")


async def test_a_login_started_on_one_replica_finishes_on_another(
        oidc: ProviderFactory, sidecar: SidecarFactory, redis_server: RedisFactory,
        leak_guard: LeakGuard) -> None:
    """With the redis store the flow records live in Redis: replica A sends the browser to the
    AS, the callback (routed by a load balancer) lands on replica B, and the code exchange goes
    through A again — each record is still taken exactly once."""
    provider = await oidc(pkce_required=True)
    redis = await redis_server()
    first = await sidecar({**mediated(provider.issuer, pkce="sidecar"),
                           "store": {"backend": "redis", "url": redis.url}})
    # Replicas share public_base_url (one registered callback URI); here: A's address.
    second = await sidecar({**mediated(provider.issuer, pkce="sidecar"),
                            "public_base_url": first.listen.url,
                            "store": {"backend": "redis", "url": redis.url}})
    callback = await login(first)
    on_second = callback.replace(first.listen.url, second.listen.url, 1)
    status, location, _ = await follow_once(on_second)
    assert status == 302
    assert location is not None
    back = query(location)
    assert back["state"] == ["app-state-1"]
    status, body = await token(first, {"grant_type": "authorization_code",
                                       "code": back["code"][0], "redirect_uri": REDIRECT_URI})
    leak_guard.add_token_response(body)
    assert status == 200, body
    assert (await provider.stats())["registrations"] == 1
    assert (await follow_once(callback))[0] == 400  # the state was spent on replica B


def two_mediated(honest: str, evil: str) -> dict[str, Any]:
    """Two mediated upstreams on one sidecar: `honest` and `evil` (an AS an attacker runs)."""
    [first] = mediated(honest, pkce="sidecar")["upstreams"]
    [second] = mediated(evil, pkce="sidecar")["upstreams"]
    return {"upstreams": [{**first, "name": "honest"}, {**second, "name": "evil"}]}


async def sidecar_state(side: Sidecar, name: str) -> str:
    """The state the sidecar hands the AS of upstream `name` for a fresh /authorize."""
    url = authorize_url(side).replace("/acme/", f"/{name}/", 1)
    status, location, _ = await follow_once(url)
    assert status == 302
    assert location is not None
    return query(location)["state"][0]


def callback_url(side: Sidecar, name: str, **params: str) -> str:
    return f"{side.listen.url}/{name}/callback?{urlencode(params)}"


async def test_a_state_minted_at_another_upstream_is_refused_at_the_callback_and_spent(
        sidecar: SidecarFactory) -> None:
    """Mix-up (RFC 9700 §4.4): a state from /evil/authorize presented at /honest/callback with
    honest's `iss` is 400, never a redirect, and the record is consumed (design.md §3.6)."""
    async with RecordingAS(metadata={"authorization_response_iss_parameter_supported": True}
                           ) as honest, RecordingAS() as evil:
        side = await sidecar(two_mediated(honest.issuer, evil.issuer))
        state = await sidecar_state(side, "evil")
        status, location, body = await follow_once(
            callback_url(side, "honest", code="c-1", state=state, iss=honest.issuer))
        assert (status, location) == (400, None)
        assert "another upstream" in body["error_description"]
        status, location, _ = await follow_once(callback_url(side, "evil", code="c-1",
                                                             state=state))
        assert (status, location) == (400, None)  # the record was spent by the mismatch


async def test_a_state_minted_at_honest_cannot_skip_its_required_iss_at_another_callback(
        sidecar: SidecarFactory) -> None:
    """The other direction: honest's state at /evil/callback (whose AS does not advertise
    RFC 9207, so no `iss` is required there) is refused too."""
    async with RecordingAS(metadata={"authorization_response_iss_parameter_supported": True}
                           ) as honest, RecordingAS() as evil:
        side = await sidecar(two_mediated(honest.issuer, evil.issuer))
        state = await sidecar_state(side, "honest")
        status, location, body = await follow_once(callback_url(side, "evil", code="c-1",
                                                                state=state))
        assert (status, location) == (400, None)
        assert "another upstream" in body["error_description"]


async def test_a_code_from_one_upstreams_callback_is_refused_at_another_token_endpoint(
        sidecar: SidecarFactory) -> None:
    """Honest's code (with the sidecar-held PKCE verifier) never goes to evil's token
    endpoint: 400 invalid_grant, and the code's record is consumed."""
    async with RecordingAS(metadata={"authorization_response_iss_parameter_supported": True}
                           ) as honest, RecordingAS() as evil:
        side = await sidecar(two_mediated(honest.issuer, evil.issuer))
        state = await sidecar_state(side, "honest")
        status, _, _ = await follow_once(callback_url(side, "honest", code="c-honest",
                                                     state=state, iss=honest.issuer))
        assert status == 302
        async with aiohttp.ClientSession() as session, session.post(
                f"{side.listen.url}/evil/token",
                data={"grant_type": "authorization_code", "code": "c-honest"}) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert body["error"] == "invalid_grant"
        assert "another upstream" in body["error_description"]
        assert evil.requests("/token") == []
        async with aiohttp.ClientSession() as session, session.post(
                f"{side.listen.url}/honest/token",
                data={"grant_type": "authorization_code", "code": "c-honest"}) as resp:
            assert resp.status == 400  # spent by the refused attempt
        assert honest.requests("/token") == []


@pytest.mark.parametrize("flows_in", ["redis", "memory"])
async def test_redis_stopped_mid_flow_makes_the_code_exchange_a_503_with_retry_after(
        sidecar: SidecarFactory, redis_server: RedisFactory, flows_in: str) -> None:
    """design.md §3.7: a store failure is 503 + Retry-After, never 500 — also when the code
    exchange reads the store for the generation the flow started with (a new generation came
    between /authorize and /token), with the flow records in Redis or in process memory."""
    redis = await redis_server()
    async with RecordingAS() as rec:
        side = await sidecar({**mediated(rec.issuer),
                              "store": {"backend": "redis", "url": redis.url}},
                             **({"flows": FlowCache.in_memory()} if flows_in == "memory" else {}))
        state = await sidecar_state(side, "acme")
        await new_generation(side, rec.issuer)
        assert (await follow_once(f"{side.listen.url}/acme/client"))[2]["generation"] == 2
        status, _, _ = await follow_once(callback_url(side, "acme", code="c-1", state=state))
        assert status == 302
        await redis.stop()
        async with aiohttp.ClientSession() as session, session.post(
                f"{side.listen.url}/acme/token",
                data={"grant_type": "authorization_code", "code": "c-1"}) as resp:
            body = await resp.json()
            assert resp.status == 503, body
            assert int(resp.headers["Retry-After"]) > 0
        assert body["error"] == "temporarily_unavailable"
        assert rec.requests("/token") == []


async def test_a_request_uri_the_sidecar_did_not_push_is_refused_under_mediation(
        sidecar: SidecarFactory) -> None:
    """RFC 9126 under `callback: sidecar`: /authorize accepts only a request_uri the sidecar
    pushed itself at this upstream's /par (mediated), once; anything else is 400, never a
    redirect to the AS."""
    async with RecordingAS() as rec, RecordingAS() as other:
        config = two_mediated(rec.issuer, other.issuer)
        side = await sidecar(config)

        async def authorize_with(name: str, request_uri: str) -> tuple[int, str | None, Any]:
            params = urlencode({"client_id": "placeholder", "request_uri": request_uri})
            return await follow_once(f"{side.listen.url}/{name}/authorize?{params}")

        forged = "urn:ietf:params:oauth:request_uri:made-up"
        status, location, body = await authorize_with("honest", forged)
        assert (status, location) == (400, None)
        assert "request_uri" in body["error_description"]
        form = {"response_type": "code", "redirect_uri": REDIRECT_URI, "state": "s"}
        async with aiohttp.ClientSession() as session, session.post(
                f"{side.listen.url}/honest/par", data=form) as resp:
            assert resp.status == 201
            pushed = (await resp.json())["request_uri"]
        status, location, _ = await authorize_with("evil", pushed)  # another upstream's
        assert (status, location) == (400, None)
        async with aiohttp.ClientSession() as session, session.post(
                f"{side.listen.url}/honest/par", data=form) as resp:
            assert resp.status == 201
        status, location, _ = await authorize_with("honest", pushed)
        assert status == 302
        assert location is not None
        assert location.startswith(rec.issuer + "/authorize?")
        assert (await authorize_with("honest", pushed))[0] == 400  # used once


async def authorize_from(side: Sidecar, address: str, count: int) -> list[tuple[int, str]]:
    """`count` mediated /authorize requests from `address` (another loopback "host"):
    (status, Retry-After) each."""
    answers = []
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            async with session.get(authorize_url(side), allow_redirects=False) as resp:
                answers.append((resp.status, resp.headers.get("Retry-After", "")))
    return answers


@pytest.mark.parametrize(("limits", "refused"), [
    ({"flow_records": 5, "flow_records_per_client": 0}, 503),   # the whole store is full
    ({"flow_records_per_client": 4}, 429),                       # the flooding address's budget
])
async def test_a_flood_neither_evicts_a_login_in_progress_nor_starts_beyond_the_budget(
        sidecar: SidecarFactory, limits: dict[str, int], refused: int) -> None:
    """design.md §3.6: beyond `limits.flow_records` (or one address's
    `flow_records_per_client`) a new flow is refused with Retry-After; the person's flow,
    started before the flood, still finishes."""
    async with RecordingAS() as rec:
        side = await sidecar({**mediated(rec.issuer), "limits": limits})
        state = await sidecar_state(side, "acme")  # the person, from 127.0.0.1
        flood = await authorize_from(side, "127.0.0.2", 10)
        assert [status for status, _ in flood] == [302] * 4 + [refused] * 6
        assert all(int(retry) > 0 for _, retry in flood[4:])
        status, location, _ = await follow_once(callback_url(side, "acme", code="c-1",
                                                             state=state))
        assert status == 302
        assert location is not None
        status, _ = await token(side, {"grant_type": "authorization_code", "code": "c-1"})
        assert status == 200
