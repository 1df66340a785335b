"""Launcher for the real OpenID provider in ``tests/oidc/server.mjs`` (node ``oidc-provider``).

Used by pytest fixtures and by the demo::

    async with OidcProvider(iat="x", issuer_path="/tenant-a") as op:
        op.issuer        # "http://127.0.0.1:PORT/tenant-a"
        await op.stats()

    python -m tests.support.oidc --config '{"iat": "x", "issuerPath": "/tenant-a"}'

The ``--config`` JSON and :meth:`OidcProvider.from_config` take the server's own
``OIDC_TEST_CONFIG`` keys (camelCase, see the head of ``server.mjs``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import fcntl
import hashlib
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypedDict, cast

import aiohttp
from yarl import URL

from tests.support.startup import STARTUP_DEADLINE, until_ready

OIDC_DIR = Path(__file__).resolve().parent.parent / "oidc"
STARTUP_TIMEOUT = STARTUP_DEADLINE  # a loaded machine makes node slow to start, never wrong
_NPM_CI_TIMEOUT = 300.0
_STDERR_TAIL_LINES = 200
_PIPE_LINE_LIMIT = 1 << 20
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class ProviderStats(TypedDict):
    registrations: int  # successful RFC 7591 POSTs
    registration_attempts: int  # every POST to the registration endpoint
    cimd_fetches: int  # outbound fetches (CIMD documents and client JWKS) when `cimd` is on
    clients: list[str]  # client_ids currently stored
    deleted: list[str]  # client_ids deleted with RFC 7592 DELETE


class RecordedRequest(TypedDict):
    method: str
    path: str  # as sent on the wire, issuer prefix included, no query
    query_keys: list[str]
    auth_scheme: str | None  # "Basic", "Bearer", another scheme as sent, or None
    body_keys: list[str]  # form or JSON body parameter names the provider parsed
    client_id: str | None  # the client the provider resolved for the request, if any
    route: str | None  # oidc-provider's route name, e.g. "token", "registration"
    status: int
    assertion_kid: str | None  # the kid in a client_assertion's header, if one was sent


class OidcProviderError(RuntimeError):
    """The provider could not be installed or started, or a flow against it went wrong."""


def _install_lock_path() -> Path:
    # One lock per checkout, outside the work tree so it never shows up in git status.
    digest = hashlib.sha256(str(OIDC_DIR).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"dcr-sidecar-oidc-npm-{digest}.lock"


NODE_PACKAGES = ("oidc-provider", "openid-client")


def _node_modules_ready() -> bool:
    # The packages' own manifests, not the bare folder: an interrupted `npm ci` leaves the
    # folder, and a tree installed before a package was added lacks that package.
    return all((OIDC_DIR / "node_modules" / name / "package.json").is_file()
               for name in NODE_PACKAGES)


def _ensure_node_modules_sync() -> None:
    if _node_modules_ready():
        return
    with _install_lock_path().open("w") as lock:
        # Parallel pytest workers wait here; the first one installs, the others find it done.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if _node_modules_ready():
                return
            npm = shutil.which("npm")
            if npm is None:
                raise OidcProviderError("npm is not on PATH: cannot install tests/oidc")
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=OIDC_DIR,
                capture_output=True,
                text=True,
                timeout=_NPM_CI_TIMEOUT,
                check=False,
            )
            if done.returncode != 0:
                raise OidcProviderError(
                    f"npm ci in {OIDC_DIR} failed ({done.returncode}):\n"
                    f"{done.stdout}\n{done.stderr}"
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


async def ensure_node_modules() -> None:
    """Install ``tests/oidc/node_modules`` with ``npm ci`` unless it is already there."""
    await asyncio.to_thread(_ensure_node_modules_sync)


class OidcProvider:
    """One ``node server.mjs`` process, i.e. one issuer, on 127.0.0.1."""

    def __init__(
        self,
        *,
        iat: str | None = None,
        issuer_path: str = "",
        secret_expires_in: int | None = None,
        put_extends_expiry: bool = True,
        pkce_required: bool = False,
        access_token_ttl: int = 3600,
        extra_scopes: Sequence[str] = (),
        clients: Sequence[Mapping[str, Any]] = (),
        cimd: bool = False,
        env: Mapping[str, str] | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.config: dict[str, object] = {
            "port": port,
            "host": host,
            "issuerPath": issuer_path,
            "iat": iat,
            "secretExpiresIn": secret_expires_in,
            "putExtendsExpiry": put_extends_expiry,
            "pkceRequired": pkce_required,
            "accessTokenTtl": access_token_ttl,
            "extraScopes": list(extra_scopes),
            "clients": [dict(c) for c in clients],
            "cimd": cimd,
        }
        self.env = dict(env or {})  # e.g. NODE_EXTRA_CA_CERTS for a test CA
        self.startup_timeout = startup_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._drains: list[asyncio.Task[None]] = []
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._http: aiohttp.ClientSession | None = None
        self._issuer: str | None = None
        self._port: int | None = None

    @classmethod
    def from_config(
        cls, config: Mapping[str, object], *, startup_timeout: float = STARTUP_TIMEOUT
    ) -> OidcProvider:
        """Build from ``OIDC_TEST_CONFIG``-shaped keys; the server itself validates them."""
        provider = cls(startup_timeout=startup_timeout)
        provider.config = dict(config)
        return provider

    # -- addresses -------------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            raise OidcProviderError("provider not started")
        return self._issuer

    @property
    def port(self) -> int:
        if self._port is None:
            raise OidcProviderError("provider not started")
        return self._port

    @property
    def base_url(self) -> str:
        """Server root (where ``/__test/`` lives), without the issuer path."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def stderr(self) -> str:
        """The last lines the node process wrote on stderr (for assertion messages)."""
        return "".join(self._stderr_tail)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._process is not None:
            raise OidcProviderError("provider already started")
        await ensure_node_modules()
        node = shutil.which("node")
        if node is None:
            raise OidcProviderError("node is not on PATH")
        # OIDC_TEST_PARENT_PIPE: node exits when its stdin closes, so a provider never outlives
        # a test process that was killed before it could call stop().
        env = dict(os.environ, **self.env, OIDC_TEST_CONFIG=json.dumps(self.config),
                   OIDC_TEST_PARENT_PIPE="1")
        self._process = await asyncio.create_subprocess_exec(
            node,
            "server.mjs",
            cwd=OIDC_DIR,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_PIPE_LINE_LIMIT,
        )
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        # Keep stderr drained from the start: a full pipe would block node mid-request.
        self._drains.append(asyncio.create_task(self._drain_stderr(self._process.stderr)))
        try:
            ready = await until_ready(
                self._ready_line(self._process.stdout), self._process,
                what=f"OIDC provider (config {json.dumps(self.config)})",
                output=self._final_stderr, error=OidcProviderError,
                deadline=self.startup_timeout)
            self._issuer = str(ready["issuer"])
            self._port = int(ready["port"])
        except BaseException:
            await self.stop()
            raise
        self._drains.append(asyncio.create_task(self._drain_stdout(self._process.stdout)))
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 5 s). Safe to call twice."""
        if self._http is not None:
            await self._http.close()
            self._http = None
        process, self._process = self._process, None
        if process is not None and process.stdin is not None:
            process.stdin.close()
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        drains, self._drains = self._drains, []
        # The pipes reach EOF once the process is gone, which ends the drain tasks.
        for task in drains:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=5)

    async def wait(self) -> int | None:
        """Wait for the node process to exit on its own; its exit code (None if not started)."""
        process = self._process
        return None if process is None else await process.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @staticmethod
    async def _ready_line(stream: asyncio.StreamReader) -> dict[str, Any]:
        """server.mjs prints one JSON line once it listens (its readiness signal)."""
        line = await stream.readline()
        if not line:
            raise EOFError("stdout closed before the readiness line")
        ready: dict[str, Any] = json.loads(line)
        return ready

    async def _drain_stderr(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self._stderr_tail.append(line.decode(errors="replace"))

    @staticmethod
    async def _drain_stdout(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

    async def _final_stderr(self) -> str:
        for task in self._drains:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=2)
        return self.stderr

    # -- instrumentation -------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise OidcProviderError("provider not started")
        return self._http

    async def stats(self) -> ProviderStats:
        async with self._session().get(f"{self.base_url}/__test/stats") as resp:
            resp.raise_for_status()
            return cast(ProviderStats, await resp.json())

    async def requests(self) -> list[RecordedRequest]:
        """Every request the server saw since start or the last reset, oldest first."""
        async with self._session().get(f"{self.base_url}/__test/requests") as resp:
            resp.raise_for_status()
            return cast(list[RecordedRequest], await resp.json())

    async def fault(self, status: int, seconds: float, retry_after: int = 1) -> None:
        """For `seconds`, answer every provider request `status` (503, 429) with Retry-After."""
        async with self._session().post(f"{self.base_url}/__test/fault", json={
                "status": status, "seconds": seconds, "retryAfter": retry_after}) as resp:
            resp.raise_for_status()

    async def reset(self) -> None:
        """Forget all clients, grants, tokens, counters and the request log (a fresh restart)."""
        async with self._session().post(f"{self.base_url}/__test/reset") as resp:
            resp.raise_for_status()


# -- a scripted browser ------------------------------------------------------------------------


def new_browser_session(*, timeout: float = 30.0) -> aiohttp.ClientSession:
    """A session that keeps cookies for ``127.0.0.1``, as :func:`login_and_consent` needs.

    aiohttp's default cookie jar drops cookies set by IP-address hosts; ``unsafe=True`` keeps
    them, and the provider's login and consent steps only work with their cookies.
    """
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


_FORM_ACTION = re.compile(r'<form[^>]*\baction="([^"]+)"', re.IGNORECASE)
_FORM_PROMPT = re.compile(r'<input[^>]*\bname="prompt"[^>]*\bvalue="([^"]+)"', re.IGNORECASE)


def _page_text(body: str) -> str:
    # The provider's error pages are HTML with the error in <pre>; keep only readable text.
    body = re.sub(r"(?is)<(style|script|head)\b.*?</\1>", " ", body)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


async def login_and_consent(
    session: aiohttp.ClientSession,
    start_url: str,
    redirect_prefix: str,
    login: str = "alice",
    *,
    max_hops: int = 20,
) -> str:
    """Drive an authorization request through devInteractions' login and consent pages.

    Starts at ``start_url`` (the provider's authorize URL, or a proxy that redirects to it),
    follows redirects by hand, submits the login form (``login``, any password) and the
    consent form, and returns the first ``Location`` that starts with ``redirect_prefix``,
    without requesting it: the ``?code=…&state=…&iss=…`` (or ``?error=…``) redirect.

    ``session`` must keep cookies for IP hosts: create it with :func:`new_browser_session`
    (or ``aiohttp.CookieJar(unsafe=True)``). An existing provider session or grant in its jar
    skips the login or consent step, as a browser would.
    """
    url = URL(start_url)
    method = "GET"
    form: dict[str, str] | None = None
    for _ in range(max_hops):
        async with session.request(method, url, data=form, allow_redirects=False) as resp:
            if resp.status in _REDIRECT_STATUSES:
                location = resp.headers.get("Location")
                if not location:
                    raise OidcProviderError(f"{resp.status} without Location from {method} {url}")
                target = resp.url.join(URL(location))
                if str(target).startswith(redirect_prefix):
                    return str(target)
                if resp.status not in (307, 308):
                    method, form = "GET", None
                url = target
                continue
            body = await resp.text()
        action = _FORM_ACTION.search(body)
        prompt = _FORM_PROMPT.search(body)
        if resp.status != 200 or action is None or prompt is None:
            raise OidcProviderError(
                f"unexpected answer {resp.status} to {method} {url} during login: "
                f"{_page_text(body)[:800]}"
            )
        url = url.join(URL(html.unescape(action.group(1))))
        method = "POST"
        if prompt.group(1) == "login":
            form = {"prompt": "login", "login": login, "password": "x"}
        elif prompt.group(1) == "consent":
            form = {"prompt": "consent"}
        else:
            raise OidcProviderError(f"unsupported interaction prompt {prompt.group(1)!r} at {url}")
    raise OidcProviderError(
        f"no redirect to {redirect_prefix!r} within {max_hops} hops; last request {method} {url}"
    )


# -- foreground runner for the demo --------------------------------------------------------------


async def _serve_forever(config: Mapping[str, Any]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with OidcProvider.from_config(config) as provider:
        print(provider.issuer, flush=True)
        waiter = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(provider.wait())
        await asyncio.wait([waiter, exited], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        exited.cancel()
        # Exit code 0 without our signal: Ctrl-C reached node's process group first.
        if not stop.is_set() and exited.done() and exited.result() != 0:
            print(f"OIDC provider exited; stderr:\n{provider.stderr}", file=sys.stderr)
            raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.oidc",
        description="Run the test OpenID provider in the foreground and print its issuer.",
    )
    parser.add_argument(
        "--config",
        default="{}",
        help='JSON with OIDC_TEST_CONFIG keys, e.g. \'{"iat": "x", "issuerPath": "/t"}\'',
    )
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    if not isinstance(config, dict):
        parser.error("--config must be a JSON object")
    asyncio.run(_serve_forever(config))


if __name__ == "__main__":
    main()
