"""The result page of a finished login: the ID token verdict, its claims, the token response
(tokens truncated), UserInfo, and "What the sidecar did" — the sidecar's own account of this
login (its /client answer: discovery and registration) and the request ids of this login's calls
to it, so each step can be found in the sidecar's log."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import structlog

from dcr_sidecar.demo.idtoken import decode_jwt_unverified, verify_at_hash, verify_id_token
from dcr_sidecar.demo.logins import PendingLogin
from dcr_sidecar.demo.pages import error_card, esc, links, render_value, table
from dcr_sidecar.demo.sidecar import DemoError, RecordedCall, request_json

_log = structlog.get_logger("dcr_sidecar.demo")


async def result_page(
    session: aiohttp.ClientSession, login: PendingLogin, tokens: Mapping[str, Any],
    calls: list[RecordedCall],
) -> tuple[str, str]:
    """(title, body HTML) of a login that got tokens."""
    claims, problem = await _validated_claims(session, login, tokens, calls)
    sections = [_verdict_card(login, problem), "", _claims_section(tokens, claims)]
    sections.append("<h2>Token response</h2><div class=card>" + _token_table(tokens) + "</div>")
    userinfo_endpoint = login.metadata.get("userinfo_endpoint")
    if isinstance(userinfo_endpoint, str) and userinfo_endpoint:
        card = await _userinfo_card(session, userinfo_endpoint, tokens.get("access_token"),
                                    claims, calls)
        sections.append("<h2>UserInfo</h2>" + card)
    sections[1] = "<h2>What the sidecar did</h2>" + sidecar_panel(login, calls)  # every call
    sections.append(links())
    _log.info(
        "demo_login_completed",
        issuer=str(login.metadata.get("issuer")),
        client_id=login.client_id,
        id_token_valid=claims is not None,
    )
    title = "Logged in" if claims is not None else "Login finished, but the ID token is NOT valid"
    return title, "".join(sections)


def sidecar_panel(login: PendingLogin, calls: Sequence[RecordedCall]) -> str:
    """The sidecar's account of this login: its /client answer and the calls' request ids."""
    client = login.client
    method = client.get("token_endpoint_auth_method")
    mechanism = client.get("mechanism")
    if mechanism == "static":
        registered = (f"a static client from the configuration: client_id "
                      f"<code>{esc(login.client_id)}</code>")
    else:
        how = {"cimd": "a Client ID Metadata Document"}.get(
            str(mechanism), "Dynamic Client Registration (RFC 7591)")
        registered = (f"registered by {esc(how)}: client_id "
                      f"<code>{esc(login.client_id)}</code>, generation "
                      f"<code>{esc(client.get('generation'))}</code>, at "
                      f"<code>{esc(client.get('registered_at') or 'unknown')}</code>")
    rows = [
        ("discovery", f"read the AS metadata from <code>{esc(client.get('discovered_from'))}"
                      f"</code> at <code>{esc(client.get('discovered_at') or 'unknown')}</code>"),
        ("registration", registered),
        ("client authentication", f"<code>{esc(method)}</code>"),
        ("token request", "the app sent no secret; the sidecar added "
                          f"<code>{esc(method)}</code>" if method != "none" else
                          "the app sent no secret; the client is public (method none), so the "
                          "sidecar added none either"),
    ]
    return ("<div class='card ok' id=sidecar-panel>" + table(rows, raw=True)
            + "<p class=muted>From the sidecar's <code>/client</code>. This login's calls "
              "(the sidecar answers with an X-Request-Id: find each in its log):</p>"
            + _calls_table(calls)
            + "</div>")


def _calls_table(calls: Sequence[RecordedCall]) -> str:
    rows = "".join(
        f"<tr><td>{esc(c.method)} <code>{esc(c.url)}</code></td>"
        f"<td>{esc(c.status if c.status is not None else 'no answer')}</td>"
        f"<td><code>{esc(c.request_id or '-')}</code></td></tr>"
        for c in calls)
    return ("<table><tr><th>call</th><th>status</th><th>X-Request-Id</th></tr>"
            f"{rows}</table>")


async def _validated_claims(
    session: aiohttp.ClientSession, login: PendingLogin, tokens: Mapping[str, Any],
    calls: list[RecordedCall],
) -> tuple[dict[str, Any] | None, str | None]:
    """(claims, None) for a valid ID token, else (None, why not)."""
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        return None, "the token response has no id_token"
    try:
        jwks = await request_json(
            session, "GET", str(login.metadata["jwks_uri"]), what="the AS's jwks_uri",
            calls=calls,
        )
    except DemoError as exc:
        return None, f"cannot fetch the AS's keys: {exc.error}: {exc.description}"
    try:
        claims = verify_id_token(
            id_token,
            jwks,
            issuer=str(login.metadata["issuer"]),
            client_id=login.client_id,
            nonce=login.nonce,
            now=time.time(),
        )
        access_token = tokens.get("access_token")
        if isinstance(access_token, str):
            verify_at_hash(claims, access_token)
    except ValueError as exc:
        return None, str(exc)
    return claims, None


def _verdict_card(login: PendingLogin, problem: str | None) -> str:
    if problem is None:
        return (
            "<div class='card ok'><p><span class='badge ok'>ID token valid</span> "
            "signature (AS's JWKS), iss, aud, exp, iat and nonce all check out for client_id "
            f"<code>{esc(login.client_id)}</code>.</p></div>"
        )
    return (
        "<div class='card bad'><p><span class='badge bad'>ID token NOT valid</span> "
        f"{esc(problem)}</p></div>"
    )


def _claims_section(tokens: Mapping[str, Any], claims: Mapping[str, Any] | None) -> str:
    if claims is not None:
        return "<h2>ID token claims</h2><div class=card>" + table(claims) + "</div>"
    id_token = tokens.get("id_token")
    try:
        unverified = decode_jwt_unverified(id_token) if isinstance(id_token, str) else None
    except ValueError:
        unverified = None
    if unverified is None:
        return ""
    return (
        "<h2>ID token claims (unverified — do not trust them)</h2><div class='card warn'>"
        + table(unverified)
        + "</div>"
    )


def _truncated_token(token: object) -> str:
    """Enough of a token to recognise it, never enough to use it."""
    if not isinstance(token, str) or not token:
        return "<em>absent</em>"
    if len(token) < 16:
        return "<em>present (too short to show a prefix safely)</em>"
    return f"<code>{esc(token[:8])}…</code>"


def _token_table(tokens: Mapping[str, Any]) -> str:
    rows: list[tuple[str, str]] = [
        ("access_token", _truncated_token(tokens.get("access_token"))),
        ("refresh_token", "present: yes" if tokens.get("refresh_token") else "present: no"),
        ("id_token", "present: yes" if isinstance(tokens.get("id_token"), str) else "present: no"),
    ]
    rows.extend(
        (name, render_value(name, tokens[name]))
        for name in ("token_type", "expires_in", "scope")
        if name in tokens
    )
    return table(rows, raw=True)


async def _userinfo_card(
    session: aiohttp.ClientSession,
    endpoint: str,
    access_token: object,
    claims: Mapping[str, Any] | None,
    calls: list[RecordedCall],
) -> str:
    if claims is None:
        return "<div class='card warn'><p>Skipped: the ID token did not validate.</p></div>"
    if not isinstance(access_token, str):
        return (
            "<div class='card warn'><p>Skipped: the token response has no access token.</p></div>"
        )
    try:
        userinfo = await request_json(
            session,
            "GET",
            endpoint,
            what="the AS's userinfo endpoint",
            headers={"Authorization": f"Bearer {access_token}"},
            calls=calls,
        )
    except DemoError as exc:
        return error_card(exc)
    note = ""
    if userinfo.get("sub") != claims.get("sub"):
        note = (
            "<p><span class='badge bad'>sub mismatch</span> the UserInfo sub differs from the ID "
            "token's; a real app must not use these claims (OIDC Core §5.3.4).</p>"
        )
    return f"<div class=card>{note}{table(userinfo)}</div>"
