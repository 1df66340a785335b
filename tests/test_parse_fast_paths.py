"""The warm hop's faster parse stage (issue 12) decides exactly as the reference does: the
form parser as :func:`urllib.parse.parse_qsl` in its strict settings, the inbound fast path as
the full check. Random input, bad escapes, non-UTF-8, ``+`` and empty fields included."""

from __future__ import annotations

import asyncio
import base64
from urllib.parse import parse_qsl, quote_plus, urlencode

import pytest
from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.streams import StreamReader
from aiohttp.test_utils import TestServer, make_mocked_request
from hypothesis import example, given
from hypothesis import strategies as st

from dcr_sidecar import errors
from dcr_sidecar.config import Inbound, parse_settings
from dcr_sidecar.forward import parse_request
from dcr_sidecar.oauth.client_auth import CLIENT_AUTH_PARAMS, basic_authorization
from dcr_sidecar.oauth.forwarding import build_form, form_quote
from dcr_sidecar.oauth.secret import Secret
from dcr_sidecar.proxy import forms
from dcr_sidecar.proxy.inbound import InboundCheck, canonical_digest, check, full_check


def reference_parse(text: str, what: str) -> list[tuple[str, str]]:
    """The parser as it was before the fast one: the escape check, then parse_qsl."""
    if forms._BAD_ESCAPE.search(text):
        raise errors.BadRequest(f"the {what} has a malformed percent-escape")
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                         errors="strict", max_num_fields=forms.MAX_FIELDS)
    except UnicodeDecodeError:
        raise errors.BadRequest(f"the {what} is not UTF-8 after percent-decoding") from None
    except ValueError:
        raise errors.BadRequest(f"the {what} is not valid "
                                "application/x-www-form-urlencoded") from None


def outcome(parse: object, text: str) -> object:
    try:
        return parse(text, "form body")  # type: ignore[operator]
    except errors.BadRequest as exc:
        return ("400", exc.description)


# Pieces that hit every rule: escapes good and bad, UTF-8 and not, '+', empty fields, '='.
PIECES = ["a", "b=", "=", "&", "&&", "+", "%", "%2", "%20", "%2B", "%zz", "%C3%A9", "%C3",
          "%FF", "%ed%a0%80", "é", "=x", "grant_type=client_credentials", "%3D", "%26", " "]
form_text = st.lists(st.sampled_from(PIECES), max_size=12).map("".join) | st.text(max_size=40)


@given(form_text)
@example("")
@example("a=1&&b=2")
@example("a")
@example("=")
@example("a=%zz")
@example("a=%FF")
@example("a+b=c+d%2B")
@example("&".join(["a=1"] * forms.MAX_FIELDS))
@example("&".join(["a=1"] * (forms.MAX_FIELDS + 1)))
def test_form_parser_decides_as_parse_qsl(text: str) -> None:
    assert outcome(forms.parse_urlencoded, text) == outcome(reference_parse, text)


@given(st.binary(max_size=40))
def test_form_bodies_decide_as_parse_qsl(body: bytes) -> None:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return
    assert outcome(forms.parse_urlencoded, text) == outcome(reference_parse, text)


SECRET = "inbound-secret-0123456789"
WITH_ID = Inbound(client_id="app", client_secret=Secret(SECRET))
ANY_ID = Inbound(client_secret=Secret(SECRET))
CANONICAL = basic_authorization("app", SECRET)


def verdict(decide: object, inbound: Inbound, headers: dict[str, str],
            form: list[tuple[str, str]]) -> str:
    try:
        decide(inbound, headers, form)  # type: ignore[operator]
    except errors.SidecarError as exc:
        return type(exc).__name__
    return "accepted"


def other_encoding(client_id: str, secret: str) -> str:
    """The same credentials, base64 of the unencoded pair (not the canonical value)."""
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


header_values = st.sampled_from([
    CANONICAL, CANONICAL + " ", CANONICAL.lower(), "basic " + CANONICAL[6:],
    basic_authorization("app", SECRET + "x"), basic_authorization("other", SECRET),
    basic_authorization("app", SECRET[:-1]), other_encoding("app", SECRET),
    "Basic " + base64.b64encode(f"{quote_plus('app', safe='/')}:{SECRET}".encode()).decode(),
    "Bearer x", "Basic !!", "\udcff",
]) | st.text(max_size=30)
form_pairs = st.lists(st.tuples(
    st.sampled_from(["client_id", "client_secret", "grant_type"]),
    st.sampled_from(["app", SECRET, "", "other"])), max_size=4)


@given(st.sampled_from([WITH_ID, ANY_ID, Inbound()]),
       st.dictionaries(st.just("Authorization"), header_values, max_size=1), form_pairs)
def test_inbound_fast_path_decides_as_the_full_check(inbound: Inbound,
                                                     headers: dict[str, str],
                                                     form: list[tuple[str, str]]) -> None:
    assert verdict(check, inbound, headers, form) == verdict(full_check, inbound, headers, form)


def test_the_canonical_header_is_still_refused_beside_a_form_secret() -> None:
    """Two methods at once stay a 400 even when the header is exactly right."""
    assert verdict(check, WITH_ID, {"Authorization": CANONICAL},
                   [("client_secret", SECRET)]) == "BadRequest"
    assert verdict(check, WITH_ID, {"Authorization": CANONICAL},
                   [("client_id", "app"), ("client_id", "app")]) == "BadRequest"


def test_a_reload_takes_the_new_secret_at_once() -> None:
    """The canonical value is kept per settings object: one checker (as the forwarder holds)
    refuses the old header under the new settings and accepts the new one."""
    checker = InboundCheck()
    checker(WITH_ID, {"Authorization": CANONICAL}, [])
    reloaded = Inbound(client_id="app", client_secret=Secret(SECRET + "-rotated"))
    assert verdict(checker, reloaded, {"Authorization": CANONICAL}, []) == "InboundUnauthorized"
    checker(reloaded, {"Authorization": basic_authorization("app", SECRET + "-rotated")}, [])
    assert verdict(checker, WITH_ID, {"Authorization": CANONICAL}, []) == "accepted"


def test_the_fast_path_holds_a_fixed_length_digest_only() -> None:
    """What is compared is 32 bytes whatever the secret's length (no length exit)."""
    short = Inbound(client_id="a", client_secret=Secret("s"))
    long = Inbound(client_id="a", client_secret=Secret("s" * 500))
    assert len(canonical_digest(short) or b"") == len(canonical_digest(long) or b"") == 32
    assert canonical_digest(ANY_ID) is None


# ---------------------------------------------------------------------- the request itself

def body_stream() -> StreamReader:
    """aiohttp's own body stream, fed by the test (a protocol without a transport)."""
    loop = asyncio.get_running_loop()
    return StreamReader(BaseProtocol(loop), 2**16, loop=loop)


async def test_a_body_arriving_in_two_parts_is_read_whole() -> None:
    """Part of the body buffered when the handler reads it, the rest sent only once the
    handler runs: read_body returns both parts (a real server, a raw client socket)."""
    body = b"grant_type=client_credentials&scope=a+b"
    handler_running = asyncio.Event()
    read: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        handler_running.set()
        read.append(await forms.read_body(request, 65536))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/t", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"POST /t HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        await writer.drain()
        await asyncio.wait_for(handler_running.wait(), 5)
        writer.write(body[10:])
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        await writer.wait_closed()
    assert answer.startswith(b"HTTP/1.1 200")
    assert read == [body]


async def test_a_client_gone_before_the_end_of_its_body_is_a_reset() -> None:
    content = body_stream()
    content.feed_data(b"grant_type=")
    content.feed_eof()
    request = make_mocked_request("POST", "/acme/token", payload=content, headers={
        "Content-Type": forms_type(), "Content-Length": "40"})
    with pytest.raises(ConnectionResetError):
        await forms.read_body(request, 65536)


def forms_type() -> str:
    return "application/x-www-form-urlencoded"


@pytest.mark.parametrize(("content_type", "accepted"), [
    ("application/x-www-form-urlencoded", True),
    ("application/x-www-form-urlencoded; charset=UTF-8", True),
    ("Application/X-WWW-Form-Urlencoded", True),
    ("application/x-www-form-urlencodedx", False),
    ("text/plain", False),
    ("", False),
])
async def test_the_content_type_shortcut_decides_as_the_mime_parse(content_type: str,
                                                                   accepted: bool) -> None:
    body = b"grant_type=client_credentials"
    content = body_stream()
    content.feed_data(body)
    content.feed_eof()
    request = make_mocked_request("POST", "/acme/token", payload=content, headers={
        "Content-Type": content_type, "Content-Length": str(len(body))})
    settings = parse_settings("version: 1\n", "test.yaml")
    try:
        pairs = await parse_request(request, settings, InboundCheck())
    except errors.BadRequest:
        assert not accepted
    else:
        assert accepted
        assert pairs == [("grant_type", "client_credentials")]


# ---------------------------------------------------------------------- the outbound form

@given(st.text() | st.sampled_from(["", "client_credentials", "a b", "a+b", "~._-", "é", "/",
                                    "\udcff", "a\x00", "AZaz09"]))
def test_form_quote_is_quote_plus(text: str) -> None:
    def result(quote: object) -> str | type[Exception]:
        try:
            return quote(text)  # type: ignore[operator,no-any-return]
        except UnicodeEncodeError:  # a lone surrogate, as quote_plus says
            return UnicodeEncodeError
    assert result(form_quote) == result(quote_plus)


@given(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=20)), max_size=5),
       st.sampled_from(["", "client_id=x", "client_assertion_type=a&client_assertion=b"]))
def test_the_outbound_form_is_what_urlencode_gives(pairs: list[tuple[str, str]],
                                                   tail: str) -> None:
    head = urlencode([(k, v) for k, v in pairs if k not in CLIENT_AUTH_PARAMS])
    expected = f"{head}&{tail}" if head and tail else head or tail
    try:
        want: bytes | type[Exception] = expected.encode("ascii")
    except UnicodeEncodeError:
        want = UnicodeEncodeError
    try:
        got: bytes | type[Exception] = build_form(pairs, tail)
    except UnicodeEncodeError:
        got = UnicodeEncodeError
    assert got == want
