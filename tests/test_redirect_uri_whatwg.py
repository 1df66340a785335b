"""The sidecar's redirect-URI verdicts against a browser's reading (issue: a redirect URI that
urlsplit and a browser read differently, RFC 9700 §4.1.3): node's WHATWG `URL` class
(tests/oidc/whatwg_url.mjs) is the browser.

Properties, over URIs built from the pieces that make parsers disagree (backslashes, userinfo,
numeric hosts, IPv6 forms, default ports, dot segments, escapes, whitespace and controls):
- whatever the sidecar accepts, the browser parses to exactly the same string and parts;
- whatever the allow-list lets through for a configured URI, the browser goes to the same
  scheme, host, path and query (a loopback host, any port, under `loopback_any_port`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.redirect_uri import RedirectURI, parse_redirect_uri
from dcr_sidecar.proxy.redirects import redirect_allowed
from tests.support.oidc import OIDC_DIR

SCHEMES = ["http", "https", "HTTP", "hTTps", "com.example.app", "Com.example.app", "myapp",
           "ftp", "ws", "file", "javascript", "h\ttp", ""]
SEPARATORS = ["://", ":/", ":", ":///", ":\\\\", ":/\\", "://\\", ":\\/"]
USERINFO = ["", "", "", "evil.example@", "evil.example\\@", "a:b@", "@", "127.0.0.1@",
            "%40@"]
HOSTS = ["127.0.0.1", "127.0.0.2", "127.1", "0x7f.0.0.1", "0177.0.0.1", "2130706433",
         "127.0.0.1.", "[::1]", "[0:0::1]", "[::0001]", "[::ffff:127.0.0.1]",
         "[::ffff:7f00:1]", "[fe80::1%25eth0]", "[FE80::1]", "localhost", "LOCALHOST",
         "app.example", "app.example.", "App.Example", "xn--nxasmq6b.example", "ex%61mple.com",
         "1.2.3", "foo.123", "foo.0x1", "a..b", "evil.example\\", "évil.example", "a_b.example",
         "", "127.0.0.1\t", "127.0.0.1 "]
PORTS = ["", "", ":", ":80", ":443", ":8080", ":08080", ":65535", ":65536", ":0", ":9999",
         ":+1"]
PATHS = ["/cb", "/cb", "", "/", "//cb", "/a/../cb", "/a/./cb", "/%2e%2e/cb", "/.%2E/cb",
         "/c%2fb", "/c%2Fb", "/c%41b", "/c\\b", "/c\tb", "/c b", "/ü", "/c|b", "/c^b",
         "/c'b", "/c[b]", "/c{b}", "/@cb", "/:cb"]
QUERIES = ["", "", "?", "?a=b", "?a='b'", "?a=b&c", "?a=%zz", "?a b", "?a=/?x"]
TAILS = ["", "", "#f", "#", "\n", " ", "\x00", "\x7f"]
PIECE_CHARS = "/\\.%2eEaA09:@?#[]'\" \t\n\x00\x7f|^`{}<>é;=&~!$()*+,-_"


def pieces(choices: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(choices), st.text(PIECE_CHARS, max_size=6))


URIS = st.one_of(
    st.builds(lambda *parts: "".join(parts), pieces(["", " ", "\t"]), st.sampled_from(SCHEMES),
              st.sampled_from(SEPARATORS), st.sampled_from(USERINFO), pieces(HOSTS),
              st.sampled_from(PORTS), pieces(PATHS), st.sampled_from(QUERIES),
              st.sampled_from(TAILS)),
    st.builds(lambda host, port, path: f"http://{host}{port}{path}", st.sampled_from(HOSTS),
              st.sampled_from(PORTS), st.sampled_from(PATHS)),
    st.text(max_size=40),
)


class Browser:
    """One node process answering `new URL(...)` for one string at a time."""

    def __init__(self) -> None:
        node = shutil.which("node")
        assert node is not None, "node is part of the test toolchain (tests/oidc)"
        self.process = subprocess.Popen(
            [node, "whatwg_url.mjs"], cwd=OIDC_DIR, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, encoding="utf-8")

    def read(self, uri: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(uri) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the WHATWG URL helper exited"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        """Ends node (its input closes) and closes both pipes."""
        try:
            self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    started = Browser()
    yield started
    started.close()


def sidecar_view(uri: str) -> RedirectURI | None:
    try:
        return parse_redirect_uri(uri)
    except ProtocolError:
        return None


def browser_parts(answer: dict[str, Any]) -> tuple[str, str, int | None, str, str | None]:
    return (answer["protocol"].removesuffix(":"), answer["hostname"].strip("[]"),
            int(answer["port"]) if answer["port"] else None, answer["pathname"],
            answer["search"].removeprefix("?") if answer["search"] else None)


def assert_browser_agrees(browser: Browser, uri: str, parsed: RedirectURI) -> dict[str, Any]:
    answer = browser.read(uri)
    assert answer["ok"], f"accepted {uri!r}, which a browser refuses"
    assert answer["href"] == uri, f"accepted {uri!r}, which a browser reads as {answer['href']!r}"
    assert (answer["username"], answer["password"], answer["hash"]) == ("", "", "")
    assert browser_parts(answer) == (parsed.scheme, parsed.host, parsed.port, parsed.path,
                                     parsed.query)
    return answer


FUZZ = settings(max_examples=3000, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(uri=URIS)
def test_every_accepted_redirect_uri_is_what_a_browser_navigates_to(
        browser: Browser, uri: str) -> None:
    parsed = sidecar_view(uri)
    if parsed is not None:
        assert_browser_agrees(browser, uri, parsed)


CONFIGURED = ["http://127.0.0.1:8765/cb", "http://127.0.0.1/cb", "http://[::1]:8765/cb",
              "https://app.example/cb", "http://127.0.0.1:8765/cb?x=1",
              "com.example.app:/cb"]


@FUZZ
@given(configured=st.sampled_from(CONFIGURED), candidate=URIS)
def test_what_the_allow_list_lets_through_goes_where_the_configured_uri_goes(
        browser: Browser, configured: str, candidate: str) -> None:
    """Under `loopback_any_port` the only freedom is the port of a loopback IP URI."""
    try:
        allowed = redirect_allowed(candidate, [configured], loopback_any_port=True)
    except ProtocolError:
        return
    if not allowed:
        return
    got, want = browser.read(candidate), browser.read(configured)
    assert got["ok"]
    assert (got["protocol"], got["hostname"], got["pathname"], got["search"]) == (
        want["protocol"], want["hostname"], want["pathname"], want["search"])
    assert (got["username"], got["password"], got["hash"]) == ("", "", "")
    if got["port"] != want["port"]:
        assert got["hostname"] in ("127.0.0.1", "[::1]") or got["hostname"].startswith("127.")


@pytest.mark.parametrize("uri", [
    "http://evil.example\\@127.0.0.1:9999/cb",   # the review's case: a browser goes to evil
    "http://127.0.0.1:9999\\@evil.example/cb",
    "http://evil.example@127.0.0.1:9999/cb",
    "http://127.1:9999/cb", "http://0x7f.0.0.1/cb", "http://2130706433/cb",
    "http://127.0.0.1:9999/c\tb", "http://127.0.0.1:9999/cb\n", " http://127.0.0.1/cb",
    "http://[::ffff:127.0.0.1]/cb", "http://[fe80::1%25eth0]/cb",
    "http://127.0.0.1:80/cb", "http://127.0.0.1", "http://127.0.0.1:9999/x/../cb",
])
def test_known_divergent_forms_are_refused(browser: Browser, uri: str) -> None:
    """Each of these is refused; where the browser parses it, it reads it otherwise than
    written (so exact comparison of the string would not be a comparison of the place)."""
    assert sidecar_view(uri) is None
    answer = browser.read(uri)
    assert not answer["ok"] or answer["href"] != uri or answer["username"]


@pytest.mark.parametrize("uri", [
    "http://127.0.0.1:8765/cb", "http://[::1]:8765/cb", "https://app.example/cb?x=1",
    "https://app.example:8443/a/b;c=d/@e:f", "com.example.app:/oauth2redirect",
    "http://localhost:3000/cb", "https://a-b.example/c%2Fd",
])
def test_ordinary_redirect_uris_are_accepted_and_read_alike(browser: Browser, uri: str) -> None:
    parsed = sidecar_view(uri)
    assert parsed is not None
    assert_browser_agrees(browser, uri, parsed)
