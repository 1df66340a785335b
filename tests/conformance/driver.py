"""The app side of the client under test in the MCP conformance suite: an MCP client that leaves
every OAuth step to a `dcr-sidecar serve` it starts.

The suite runs ``driver.py SERVER_URL`` (``client --command``), with ``MCP_CONFORMANCE_SCENARIO``,
``MCP_CONFORMANCE_PROTOCOL_VERSION`` and, for some scenarios, ``MCP_CONFORMANCE_CONTEXT`` (JSON)
in the environment. The client under test is this app plus the sidecar, so the app does only
what an app in front of the sidecar does, and nothing the sidecar should do:

- it speaks MCP (Streamable HTTP, JSON or SSE answers) to the server URL it is given;
- on 401/403 it starts a login at the sidecar's ``/{name}/authorize`` with a placeholder
  client_id, no PKCE and no resource, adding only the ``scope`` the server's challenge names
  (the app is the one that saw the challenge; step-up asks for the union with what it asked
  before), and follows the browser's redirects until they reach its own redirect URI;
- it trades the code at the sidecar's token endpoint and retries with the bearer token.

It checks nothing: discovery, the resource's identity, registration, PKCE, `iss`, the resource
indicator and the scope from the resource's metadata are the sidecar's. The sidecar's config is
made from the server URL alone (a ``resource:`` upstream, ``callback: sidecar``, ``pkce:
sidecar``); a scenario that hands out a pre-registered client (``auth/pre-registration``) gets a
static client, the operator's job (with a private key handed out, ``auth/client-credentials-jwt``,
the key goes to a file named by ``client_key``); the client-credentials extension's scenarios (a
service, not a person's app) get an app configured for the client_credentials grant, and the
workload identity extension's (``auth/wif-jwt-bearer``) an app that trades its workload token
with the RFC 7523 §2.1 JWT-bearer grant through the sidecar's token route. The sidecar's log
goes to stderr (the suite keeps it).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path
from typing import Any

NAME = "mcp"
APP_REDIRECT = "http://127.0.0.1:{port}/app/callback"
PLACEHOLDER_CLIENT_ID = "app"
CIMD_DOCUMENT_URL = "https://conformance-test.local/client-metadata.json"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"  # RFC 7523 §2.1
MAX_LOGINS = 3  # a bounded number of logins per run: the retry limit an app must keep
MAX_REDIRECTS = 10
TIMEOUT_S = 10.0
STATEFUL = {"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


OPENER = urllib.request.build_opener(_NoRedirects)


class Answer:
    def __init__(self, status: int, headers: Message, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def http(method: str, url: str, *, headers: dict[str, str] | None = None,
         body: bytes | None = None) -> Answer:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    request = urllib.request.Request(url, data=body, method=method,  # noqa: S310 - checked above
                                     headers=headers or {})
    try:
        with OPENER.open(request, timeout=TIMEOUT_S) as response:
            return Answer(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.headers, exc.read())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- the sidecar


def app_grant(scenario: str) -> str:
    """The grant the app is built for. The OAuth client-credentials extension's scenarios test
    a service, not a person's app: that app uses the client_credentials grant. The workload
    identity federation extension's (SEP-1933) test a workload that holds an identity token
    from its platform and trades it with the RFC 7523 §2.1 JWT-bearer grant. Every other
    scenario is a person's app: the authorization code grant through a browser."""
    if scenario.startswith("auth/client-credentials-"):
        return "client_credentials"
    if scenario.startswith("auth/wif-"):
        return JWT_BEARER
    return "authorization_code"


def sidecar_config(server_url: str, listen: int, management: int, redirect: str,
                   context: dict[str, Any], *, grant: str = "authorization_code",
                   key_file: Path | None = None) -> dict[str, Any]:
    host = urllib.parse.urlsplit(server_url).hostname or "localhost"
    upstream: dict[str, Any] = {
        "name": NAME, "resource": server_url, "resource_probe": "post",
        "callback": "sidecar", "pkce": "sidecar",
        "redirect_uris": [redirect], "client_metadata": {"client_name": "conformance app"},
        # Where the operator publishes the client's metadata document (CIMD): the suite's
        # authorization servers expect this URL as the client_id. A public client (PKCE).
        "cimd": {"document_url": CIMD_DOCUMENT_URL, "auth_method": "none"},
    }
    if "client_id" in context:  # pre-registration: the operator configures the static client
        upstream.update(client_id=context["client_id"])
        if "private_key_pem" in context:  # private_key_jwt with the key the operator was handed
            if key_file is None:
                raise ValueError("a client key needs a key_file to be written to")
            upstream["client_key"] = {"file": str(key_file),
                                      "alg": context.get("signing_algorithm")}
        else:
            upstream["client_secret"] = context.get("client_secret")
        del upstream["cimd"], upstream["client_metadata"]  # a static client registers nothing
    if grant != "authorization_code":  # no browser, no redirect URIs, nothing to mediate
        for key in ("callback", "pkce", "redirect_uris"):
            del upstream[key]
        upstream["grant_types"] = [grant]
    return {
        "version": 1,
        "listen": {"host": "127.0.0.1", "port": listen},
        "management": {"host": "127.0.0.1", "port": management},
        "log": {"format": "console", "level": "info"},
        "store": {"backend": "memory"},
        "shutdown": {"delay": 0, "grace": 1},
        # The suite's servers run on this machine over plain http, its authorization servers
        # on ports that only the resource's metadata names (server-supplied authorities).
        "security": {"allow_http": sorted({host, "127.0.0.1", "localhost"}),
                     "allow_private_networks": ["127.0.0.0/8", "::1/128"],
                     "allow_private_networks_server_supplied": ["127.0.0.0/8", "::1/128"]},
        "upstreams": [upstream],
    }


def write_key_file(context: dict[str, Any], workdir: Path) -> Path | None:
    """The private key a scenario hands out, as the operator's key file (owner-only)."""
    pem = context.get("private_key_pem")
    if not isinstance(pem, str):
        return None
    path = workdir / "client-key.pem"
    path.touch(mode=0o600)
    path.write_text(pem)
    return path


@contextmanager
def sidecar(config: dict[str, Any], workdir: Path) -> Iterator[str]:
    """`dcr-sidecar serve` on this config until the block ends; yields its base URL."""
    path = workdir / "sidecar.yaml"
    path.write_text(json.dumps(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "dcr_sidecar", "serve", "--config", str(path)],
        stdout=sys.stderr, stderr=sys.stderr)
    try:
        base = f"http://127.0.0.1:{config['listen']['port']}"
        health = f"http://127.0.0.1:{config['management']['port']}/healthz"
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the sidecar exited with {process.returncode}")
            try:
                if http("GET", health).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the sidecar did not come up within 15 s")
            time.sleep(0.05)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------- OAuth via the sidecar


def challenged_scope(answer: Answer) -> str | None:
    """The `scope` a Bearer challenge names (the app saw it; the sidecar did not)."""
    for value in answer.headers.get_all("WWW-Authenticate") or []:
        marker = 'scope="'
        start = value.find(marker)
        if start >= 0:
            end = value.find('"', start + len(marker))
            return value[start + len(marker):end] if end > 0 else None
    return None


class Login:
    def __init__(self, base: str, redirect: str, *, grant: str = "authorization_code",
                 assertion: str | None = None) -> None:
        self.base, self.redirect, self.grant, self.assertion = base, redirect, grant, assertion
        self.asked: list[str] = []

    def token(self, scope: str | None) -> str:
        for item in (scope or "").split():
            if item not in self.asked:  # step-up: the union with what was asked before
                self.asked.append(item)
        meta = http("GET", f"{self.base}/{NAME}/.well-known/oauth-authorization-server")
        if meta.status != 200:
            raise RuntimeError(f"the sidecar served no AS metadata: {meta.status} {meta.body!r}")
        document = meta.json()
        if self.grant != "authorization_code":
            grant = {"grant_type": self.grant, "client_id": PLACEHOLDER_CLIENT_ID}
            if self.grant == JWT_BEARER:  # the workload's own identity token (RFC 7523 §2.1)
                if not self.assertion:
                    raise RuntimeError("no workload identity token to trade")
                grant["assertion"] = self.assertion
            if self.asked:
                grant["scope"] = " ".join(self.asked)
            return self._exchange(document["token_endpoint"], grant)
        state = secrets.token_urlsafe(16)
        query = {"response_type": "code", "client_id": PLACEHOLDER_CLIENT_ID,
                 "redirect_uri": self.redirect, "state": state}
        if self.asked:
            query["scope"] = " ".join(self.asked)
        url = document["authorization_endpoint"] + "?" + urllib.parse.urlencode(query)
        params = self._follow(url)
        if "code" not in params:
            raise RuntimeError(f"the login ended without a code: {params}")
        return self._exchange(document["token_endpoint"], {
            "grant_type": "authorization_code", "code": params["code"],
            "redirect_uri": self.redirect, "client_id": PLACEHOLDER_CLIENT_ID})

    def _exchange(self, endpoint: str, grant: dict[str, str]) -> str:
        answer = http("POST", endpoint, body=urllib.parse.urlencode(grant).encode(),
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
        if answer.status != 200:
            raise RuntimeError(f"the token request failed: {answer.status} {answer.body!r}")
        return str(answer.json()["access_token"])

    def _follow(self, url: str) -> dict[str, str]:
        """The browser: follow redirects until one reaches the app's redirect URI."""
        for _ in range(MAX_REDIRECTS):
            if url.startswith(self.redirect + "?") or url == self.redirect:
                return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
            answer = http("GET", url)
            location = answer.headers.get("Location")
            if answer.status not in (301, 302, 303, 307, 308) or not location:
                raise RuntimeError(f"the login stopped at {answer.status}: {answer.body[:300]!r}")
            url = urllib.parse.urljoin(url, location)
        raise RuntimeError("too many redirects during the login")


# ---------------------------------------------------------------------------- MCP


class Mcp:
    def __init__(self, url: str, version: str, login: Login) -> None:
        self.url, self.version, self.login = url, version, login
        self.token: str | None = None
        self.session: str | None = None
        self.logins = 0
        self.next_id = 1

    def call(self, method: str, params: dict[str, Any] | None = None, *,
             notify: bool = False) -> Any:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if not notify:
            message["id"] = self.next_id
            self.next_id += 1
        params = dict(params or {})
        if self.version not in STATEFUL:  # the stateless wire carries the lifecycle in _meta
            params["_meta"] = {
                "io.modelcontextprotocol/protocolVersion": self.version,
                "io.modelcontextprotocol/clientInfo": {"name": "dcr-sidecar-conformance",
                                                       "version": "1.0.0"},
                "io.modelcontextprotocol/clientCapabilities": {}}
        if params:
            message["params"] = params
        while True:
            answer = self._post(message)
            if answer.status in (401, 403):
                if self.logins >= MAX_LOGINS:
                    raise RuntimeError(f"{method}: still {answer.status} after {self.logins} "
                                       "logins; giving up")
                self.logins += 1
                self.token = self.login.token(challenged_scope(answer))
                continue
            if notify:
                return None
            if answer.status != 200:
                raise RuntimeError(f"{method}: HTTP {answer.status} {answer.body[:300]!r}")
            return _result(answer, message["id"])

    def _post(self, message: dict[str, Any]) -> Answer:
        headers = {"Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream",
                   "MCP-Protocol-Version": self.version}
        if self.version not in STATEFUL:
            headers["Mcp-Method"] = message["method"]
            name = message.get("params", {}).get("name")
            if isinstance(name, str):
                headers["Mcp-Name"] = name
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        answer = http("POST", self.url, headers=headers, body=json.dumps(message).encode())
        self.session = answer.headers.get("Mcp-Session-Id") or self.session
        return answer


def _result(answer: Answer, wanted: int) -> Any:
    if "text/event-stream" in (answer.headers.get("Content-Type") or ""):
        for line in answer.body.decode().splitlines():
            if line.startswith("data:"):
                event = json.loads(line[5:].strip())
                if event.get("id") == wanted:
                    return _unwrap(event)
        raise RuntimeError("the event stream carried no answer")
    return _unwrap(answer.json())


def _unwrap(message: dict[str, Any]) -> Any:
    if "error" in message:
        raise RuntimeError(f"JSON-RPC error {message['error']}")
    return message.get("result")


def session(mcp: Mcp) -> None:
    """What an MCP client does with a server: connect, list the tools, call one, list again."""
    if mcp.version in STATEFUL:
        mcp.call("initialize", {"protocolVersion": mcp.version, "capabilities": {},
                                "clientInfo": {"name": "dcr-sidecar-conformance",
                                               "version": "1.0.0"}})
        mcp.call("notifications/initialized", notify=True)
    tools = mcp.call("tools/list") or {}
    for tool in tools.get("tools", [])[:1]:
        mcp.call("tools/call", {"name": tool["name"], "arguments": {}})
    mcp.call("tools/list")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: driver.py SERVER_URL", file=sys.stderr)
        return 2
    server_url = argv[1]
    version = os.environ.get("MCP_CONFORMANCE_PROTOCOL_VERSION", "2025-11-25")
    context = json.loads(os.environ.get("MCP_CONFORMANCE_CONTEXT") or "{}")
    redirect = APP_REDIRECT.format(port=free_port())
    grant = app_grant(os.environ.get("MCP_CONFORMANCE_SCENARIO", ""))
    # The workload identity token the platform gives the workload (a projected token file in
    # a real deployment); the scenario hands it out in its context.
    assertion = context.get("valid_jwt")
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        key_file = write_key_file(context, Path(tmp))
        config = sidecar_config(server_url, free_port(), free_port(), redirect, context,
                                grant=grant, key_file=key_file)
        with sidecar(config, Path(tmp)) as base:
            return run_app(Mcp(server_url, version, Login(base, redirect, grant=grant,
                                                             assertion=assertion)))


def run_app(mcp: Mcp) -> int:
    try:
        session(mcp)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        print(f"driver: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
