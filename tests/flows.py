"""Helpers that drive OAuth flows the way an unmodified app and a person would."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import aiohttp
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.jwk import KeySet

from dcr_sidecar.oauth.pkce import make_verifier
from tests.support.oidc import login_and_consent, new_browser_session

REDIRECT_URI = "http://127.0.0.1:8765/callback"


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


async def authlib_login(metadata_url: str, client_id: str, *, scope: str,
                        redirect_uri: str = REDIRECT_URI,
                        browser: Callable[[], aiohttp.ClientSession] = new_browser_session,
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """An unmodified authlib OAuth client: discovery document, authorize with PKCE, the person's
    login and consent (in a session made by ``browser``), code exchange. Returns (metadata, token
    response)."""
    metadata = await get_json(metadata_url)
    verifier = make_verifier()
    nonce = secrets.token_urlsafe(16)
    async with AsyncOAuth2Client(client_id=client_id, redirect_uri=redirect_uri, scope=scope,
                                 code_challenge_method="S256") as client:
        uri, _state = client.create_authorization_url(
            metadata["authorization_endpoint"], nonce=nonce, code_verifier=verifier,
            prompt="consent")
        async with browser() as person:
            callback = await login_and_consent(person, uri, redirect_uri)
        token = await client.fetch_token(metadata["token_endpoint"],
                                         authorization_response=callback,
                                         code_verifier=verifier)
    result = dict(token)
    result["_nonce"] = nonce
    return metadata, result


async def validate_id_token(metadata: dict[str, Any], id_token: str, client_id: str,
                            nonce: str) -> dict[str, Any]:
    """OIDC Core §3.1.3.7: signature from the AS's JWKS, iss, aud, nonce, exp."""
    keys = KeySet.import_key_set(await get_json(metadata["jwks_uri"]))
    token = jwt.decode(id_token, keys)
    registry = jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": metadata["issuer"]},
        aud={"essential": True, "value": client_id},
        nonce={"essential": True, "value": nonce},
        exp={"essential": True},
    )
    registry.validate(token.claims)
    return dict(token.claims)


async def browser_to_callback(authorize_url: str, callback_prefix: str) -> str:
    """A person's login and consent starting at the sidecar's /authorize; returns the AS's
    redirect to the sidecar's /callback (not yet requested)."""
    async with new_browser_session() as browser:
        return await login_and_consent(browser, authorize_url, callback_prefix)


async def follow_once(url: str) -> tuple[int, str | None, Any]:
    """GET without following redirects: (status, Location, JSON body or None)."""
    async with aiohttp.ClientSession() as session, session.get(
            url, allow_redirects=False) as resp:
        body = await resp.json() if resp.content_type == "application/json" else None
        return resp.status, resp.headers.get("Location"), body
