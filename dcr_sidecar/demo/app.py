"""The demo app's routes: home, /login, /callback (post/redirect/get to /result/{id})."""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web
from yarl import URL

from dcr_sidecar.demo.logins import RESULT_TTL, PendingLogin, PendingLogins, Results
from dcr_sidecar.demo.pages import error_card, error_page, esc, links, page, table
from dcr_sidecar.demo.result import result_page
from dcr_sidecar.demo.sidecar import (
    DemoError,
    DemoSettings,
    RecordedCall,
    clean,
    fetch_client,
    fetch_metadata,
    request_json,
)
from dcr_sidecar.oauth.pkce import make_verifier, s256_challenge

_log = structlog.get_logger("dcr_sidecar.demo")

SCOPE: Final = "openid profile email offline_access"
SESSION_COOKIE: Final = "dcr_demo_session"
_SESSION_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{32,64}")
SETTINGS_KEY: Final = web.AppKey("dcr_demo_settings", DemoSettings)
HTTP_KEY: Final = web.AppKey("dcr_demo_http", aiohttp.ClientSession)
PENDING_KEY: Final = web.AppKey("dcr_demo_pending", PendingLogins)
RESULTS_KEY: Final = web.AppKey("dcr_demo_results", Results)


async def handle_index(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    session = request.app[HTTP_KEY]
    intro = (
        "<div class=card><p>This is an ordinary OpenID Connect app that knows nothing about "
        "client registration: it only talks to the dcr-sidecar, which obtains a client for the "
        "upstream authorization server (static, a Client ID Metadata Document, or by Dynamic "
        "Client Registration) and "
        "gives this app just the client_id. When you log in, the sidecar passes the authorization "
        "request on and injects the real client authentication into the token request; this app "
        "then validates the ID token it receives and shows its claims.</p>"
        + table(
            [
                ("upstream", f"<code>{esc(settings.upstream)}</code>"),
                ("sidecar", f"<code>{esc(settings.sidecar_url)}</code>"),
                ("redirect_uri", f"<code>{esc(settings.redirect_uri)}</code>"),
            ],
            raw=True,
        )
        + "</div>"
    )
    try:
        client = await fetch_client(session, settings)
    except DemoError as exc:
        exc.hint = (
            "The sidecar cannot provide credentials for this upstream yet (it may still be "
            "discovering or registering, or the authorization server is unreachable). "
            "Reload this page to retry" + (f" in {exc.retry_after} s." if exc.retry_after else ".")
        )
        client_html = "<h2>Client</h2>" + error_card(exc)
    else:
        fields = [
            (name, client[name])
            for name in (
                "client_id",
                "generation",
                "token_endpoint_auth_method",
                "issuer",
                "client_secret_expires_at",
            )
            if name in client
        ]
        client_html = (
            "<h2>Client (from the sidecar's /client)</h2><div class='card ok'>"
            + table(dict(fields))
            + '<p><a class=button href="/login">Log in</a></p></div>'
        )
    warning = ""
    try:
        foreign_origin = request.url.origin() != URL(settings.public_url).origin()
    except ValueError:
        foreign_origin = False
    if foreign_origin:
        warning = (
            "<div class='card warn'><p>You opened this page as "
            f"<code>{esc(request.url.origin())}</code>, but the redirect URI is "
            f"<code>{esc(settings.redirect_uri)}</code>: the login cookie would not survive the "
            f'round trip. Open <a href="{esc(settings.public_url)}/">'
            f"{esc(settings.public_url)}/</a> instead.</p></div>"
        )
    return page("dcr-sidecar demo app", warning + intro + client_html)


async def handle_login(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    session = request.app[HTTP_KEY]
    pending = request.app[PENDING_KEY]
    calls: list[RecordedCall] = []
    try:
        client = await fetch_client(session, settings, calls)
        metadata = await fetch_metadata(session, settings, calls)
    except DemoError as exc:
        if exc.hint is None:
            exc.hint = (
                "Check that the sidecar is running and configured for this upstream, then retry."
            )
        return error_page("Cannot start the login", exc)
    client_id = str(client["client_id"])
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier = make_verifier()

    session_id = request.cookies.get(SESSION_COOKIE, "")
    if not _SESSION_ID_RE.fullmatch(session_id):
        session_id = secrets.token_urlsafe(32)
    pending.add(
        session_id,
        PendingLogin(
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            client_id=client_id,
            metadata=metadata,
            created=pending.now(),
            client=client,
            calls=tuple(calls),
        ),
    )
    _log.info("demo_login_started", issuer=str(metadata["issuer"]), client_id=client_id)
    location = URL(str(metadata["authorization_endpoint"])).extend_query(
        response_type="code",
        client_id=client_id,
        redirect_uri=settings.redirect_uri,
        scope=SCOPE,
        state=state,
        nonce=nonce,
        code_challenge=s256_challenge(verifier),
        code_challenge_method="S256",
        prompt="consent",
    )
    response = web.Response(
        status=302, headers={"Location": str(location), "Cache-Control": "no-store"}
    )
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        max_age=int(RESULT_TTL),
        path="/",
        httponly=True,
        samesite="Lax",
    )
    return response


async def handle_callback(request: web.Request) -> web.Response:
    """Exchange the code, keep the page, and redirect to it (post/redirect/get): the address
    bar loses the one-time code, and a reload shows the same result again."""
    settings = request.app[SETTINGS_KEY]
    session = request.app[HTTP_KEY]
    try:
        login = _take_pending_login(request)
    except DemoError as exc:
        _log.info("demo_login_failed", error=exc.error, status=exc.status)
        return error_page(exc.title, exc)
    calls = list(login.calls)
    try:
        code = _authorization_code(request.query, login.metadata)
        tokens = await _exchange_code(session, settings, login, code, calls)
    except DemoError as exc:
        _log.info("demo_login_failed", error=exc.error, status=exc.status)
        title, body, status = exc.title, error_card(exc) + links(), exc.status
    else:
        (title, body), status = await result_page(session, login, tokens, calls), 200
    session_id = request.cookies[SESSION_COOKIE]  # _take_pending_login checked it
    result_id = request.app[RESULTS_KEY].add(session_id, title, body, status)
    return web.Response(status=303, headers={"Location": f"/result/{result_id}",
                                             "Cache-Control": "no-store"})


async def handle_result(request: web.Request) -> web.Response:
    found = request.app[RESULTS_KEY].get(request.cookies.get(SESSION_COOKIE, ""),
                                         request.match_info["id"])
    if found is None:
        return page("This result is gone", "<div class='card warn'><p>Results are kept for 30 "
                     "minutes, in the browser that logged in. Log in again to see a new one."
                     "</p></div>" + links(), status=404)
    return page(found.title, found.body, status=found.status)


def _take_pending_login(request: web.Request) -> PendingLogin:
    """The one-time login record named by the session cookie and ``state`` (RFC 6749 §10.12)."""
    state = request.query.get("state")
    session_id = request.cookies.get(SESSION_COOKIE)
    if not state:
        raise DemoError("invalid_request", "the callback has no state parameter", status=400)
    if not session_id:
        public_url = request.app[SETTINGS_KEY].public_url
        raise DemoError(
            "invalid_request",
            "the browser did not send this app's session cookie",
            status=400,
            hint=(
                "Cookies may be blocked, or the login was started on another address than "
                f"{public_url} (the redirect URI's). Start again from that address."
            ),
        )
    login = request.app[PENDING_KEY].pop(session_id, state)
    if login is None:
        raise DemoError(
            "invalid_request",
            "unknown, already used or expired state (logins expire after 10 minutes)",
            status=400,
            hint="Start a new login.",
        )
    return login


def _authorization_code(query: Mapping[str, str], metadata: Mapping[str, Any]) -> str:
    """The code of an authorization response, after the RFC 9207 issuer check."""
    issuer = str(metadata["issuer"])
    iss = query.get("iss")
    # RFC 9207 §2.4: required when advertised, compared whenever present (mix-up defence).
    if iss is None and metadata.get("authorization_response_iss_parameter_supported") is True:
        raise DemoError(
            "invalid_request",
            "the AS advertises RFC 9207 but the authorization response has no iss parameter",
            status=400,
        )
    if iss is not None and iss != issuer:
        raise DemoError(
            "invalid_request",
            f"the authorization response names issuer {clean(iss, 200)!r}, expected {issuer!r} "
            "(RFC 9207 mix-up defence)",
            status=400,
        )
    if "error" in query:
        description = query.get("error_description")
        raise DemoError(
            clean(query["error"], 100),
            clean(description) if description else "(no error_description)",
            status=400,
            title="The authorization server refused the login",
        )
    code = query.get("code")
    if not code:
        raise DemoError("invalid_request", "the callback has neither code nor error", status=400)
    return code


async def _exchange_code(
    session: aiohttp.ClientSession, settings: DemoSettings, login: PendingLogin, code: str,
    calls: list[RecordedCall],
) -> dict[str, Any]:
    """RFC 6749 §4.1.3 at the sidecar's token endpoint: client_id only; the sidecar adds auth."""
    try:
        return await request_json(
            session,
            "POST",
            str(login.metadata["token_endpoint"]),
            what="the sidecar's token endpoint",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": settings.redirect_uri,
                "client_id": login.client_id,
                "code_verifier": login.code_verifier,
            },
            calls=calls,
        )
    except DemoError as exc:
        exc.title = "The token request failed"
        raise


@web.middleware
async def _friendly_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return page(
            "Not found",
            "<div class='card bad'><p>There is no such page in the demo app.</p></div>"
            + links(login=False),
            status=404,
        )
    except web.HTTPException:
        raise
    except Exception:
        _log.exception("demo_request_failed", path=request.path)
        return page(
            "Something went wrong",
            error_card(
                DemoError("internal_error", "the demo app hit an unexpected error (see its log)")
            )
            + links(),
            status=500,
        )


async def _http_session(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=15, connect=5, sock_read=10)
    async with aiohttp.ClientSession(
        timeout=timeout, headers={"User-Agent": "dcr-sidecar-demo-app"}
    ) as session:
        app[HTTP_KEY] = session
        yield


def create_demo_app(settings: DemoSettings) -> web.Application:
    """The demo relying party for validated `settings`."""
    app = web.Application(middlewares=[_friendly_errors])
    app[SETTINGS_KEY] = settings
    app[PENDING_KEY] = PendingLogins()
    app[RESULTS_KEY] = Results()
    app.cleanup_ctx.append(_http_session)
    app.router.add_get("/", handle_index)
    app.router.add_get("/login", handle_login)
    app.router.add_get("/callback", handle_callback)
    app.router.add_get("/result/{id}", handle_result)
    return app
