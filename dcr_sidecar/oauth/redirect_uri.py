"""Redirect URIs read the way a browser reads them (the WHATWG URL Standard), so that the string
the allow-list compares is the place the browser goes (RFC 9700 §2.1, §4.1.3).

A redirect URI is accepted only when it is already in the canonical form a browser would
serialise it to; anything a browser would rewrite is refused rather than guessed at:

- ASCII only, and only RFC 3986 characters: no control or whitespace character (browsers strip
  tabs and newlines anywhere), no backslash (browsers read ``\\`` as ``/`` in http(s) URLs, so
  ``http://evil.example\\@127.0.0.1/`` goes to evil.example), no fragment;
- the scheme in lower case: ``http``/``https``, or a private-use scheme with a dot in it
  (RFC 8252 §7.1, ``com.example.app:/cb``) and then no authority;
- http(s): an authority without userinfo; a lower-case host that is a DNS name (no ``xn--``
  label, no empty label, not ending in a number), a dotted-quad IPv4 address, or an IPv6
  address in brackets in RFC 5952 form; a port without leading zeros that is not the scheme's
  default; a path that starts with ``/``;
- paths without dot segments (also percent-encoded ones); percent-escapes with upper-case hex
  that do not encode an unreserved character; a query, when present, not empty and without
  ``'`` (browsers escape it in http(s) queries).

``tests/test_redirect_uri_whatwg.py`` checks these rules against node's WHATWG ``URL``.
"""

from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass

from dcr_sidecar.oauth import ProtocolError

SPECIAL_DEFAULT_PORTS = {"http": 80, "https": 443}
# The other WHATWG special schemes: a browser would parse them with rules no redirect needs.
OTHER_SPECIAL = frozenset({"ftp", "file", "ws", "wss"})
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_SUB_DELIMS = frozenset("!$&'()*+,;=")
_PCHAR = _UNRESERVED | _SUB_DELIMS | frozenset(":@%")
_PATH_CHARS = _PCHAR | {"/"}
_QUERY_CHARS = (_PCHAR | frozenset("/?")) - {"'"}
_URI_CHARS = _UNRESERVED | _SUB_DELIMS | frozenset(":/?#[]@%")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_LABEL = re.compile(r"[a-z0-9-]+")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_ESCAPE = re.compile(r"%(.{0,2})")


@dataclass(frozen=True)
class RedirectURI:
    """A redirect URI in canonical form, in the parts the allow-list compares."""

    scheme: str
    host: str  # "" for a private-use scheme; IPv6 without brackets
    port: int | None  # None: the scheme's default (or none)
    path: str
    query: str | None

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


def parse_redirect_uri(uri: str) -> RedirectURI:
    """The parts of `uri`, or ProtocolError saying why a browser would read it otherwise."""
    _check_characters(uri)
    scheme, colon, rest = uri.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise ProtocolError("must start with a lower-case scheme")
    if scheme in SPECIAL_DEFAULT_PORTS:
        return _parse_http(scheme, rest)
    if scheme in OTHER_SPECIAL or "." not in scheme:
        raise ProtocolError(f"the scheme {scheme!r} is neither http(s) nor a private-use scheme "
                            "with a dot (RFC 8252 §7.1)")
    if not rest.startswith("/") or rest.startswith("//"):
        raise ProtocolError("a private-use scheme must be followed by a path starting with a "
                            "single '/' (RFC 8252 §7.1), no authority")
    path, query = _path_and_query(rest)
    return RedirectURI(scheme, "", None, path, query)


def _check_characters(uri: str) -> None:
    for char in uri:
        if char == "\\":
            raise ProtocolError("has a backslash (a browser reads it as '/')")
        if char.isspace() or not char.isprintable() or ord(char) < 0x20 or ord(char) == 0x7F:
            raise ProtocolError("has a control or whitespace character")
        if char not in _URI_CHARS:
            raise ProtocolError(f"has the character {char!r}, which a browser would escape")
    if "#" in uri:
        raise ProtocolError("has a fragment (RFC 6749 §3.1.2)")
    for match in _ESCAPE.finditer(uri):
        digits = match.group(1)
        if not re.fullmatch(r"[0-9A-F]{2}", digits):
            raise ProtocolError("has a percent-escape that is not '%' and two upper-case "
                                "hex digits")
        if chr(int(digits, 16)) in _UNRESERVED:
            raise ProtocolError(f"escapes the unreserved character {chr(int(digits, 16))!r}")


def _parse_http(scheme: str, rest: str) -> RedirectURI:
    if not rest.startswith("//"):
        raise ProtocolError(f"{scheme}: must be followed by '//' and a host")
    authority, path_start, tail = _split_authority(rest[2:])
    if "@" in authority:
        raise ProtocolError("has userinfo ('@' before the host)")
    host, port = _host_and_port(authority)
    if port == SPECIAL_DEFAULT_PORTS[scheme]:
        raise ProtocolError(f"names the default port {port} (a browser drops it)")
    if path_start != "/":
        raise ProtocolError("must have a path, at least '/' (a browser adds it)")
    path, query = _path_and_query(path_start + tail)
    return RedirectURI(scheme, host, port, path, query)


def _split_authority(text: str) -> tuple[str, str, str]:
    """(authority, the character that ended it or "", the rest)."""
    match = re.search(r"[/?]", text)
    if match is None:
        return text, "", ""
    return text[:match.start()], match.group(), text[match.end():]


def _host_and_port(authority: str) -> tuple[str, int | None]:
    if authority.startswith("["):
        end = authority.find("]")
        host, after = (authority[1:end], authority[end + 1:]) if end > 0 else (authority, "")
        _check_ipv6(host)
    else:
        host, colon, port_text = authority.partition(":")
        after = colon + port_text
        _check_name_or_ipv4(host)
    if not after:
        return host, None
    if not after.startswith(":") or not _PORT.fullmatch(after[1:]) or int(after[1:]) > 65535:
        raise ProtocolError("has a port that is not a number from 1 to 65535 without leading "
                            "zeros")
    return host, int(after[1:])


def _check_ipv6(host: str) -> None:
    if not re.fullmatch(r"[0-9a-f:.]+", host):  # also no zone (%25...): browsers refuse it
        raise ProtocolError("has a bracketed host that is not a lower-case IPv6 address")
    try:
        canonical = ipaddress.IPv6Address(host).compressed
    except ValueError:
        raise ProtocolError("has a bracketed host that is not an IPv6 address") from None
    if canonical != host:
        raise ProtocolError(f"writes the IPv6 address as {host!r}; a browser writes "
                            f"{canonical!r}")


def _check_name_or_ipv4(host: str) -> None:
    labels = host.split(".")
    if not host or not all(_LABEL.fullmatch(label) for label in labels):
        raise ProtocolError("has a host that is not a lower-case DNS name or IPv4 address")
    if any(label.startswith("xn--") for label in labels):
        raise ProtocolError("has an internationalised (xn--) host name, which is not accepted")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):  # a browser reads the host as an IPv4 address
        try:
            canonical = str(ipaddress.IPv4Address(host))
        except ValueError:
            canonical = None
        if canonical != host:
            raise ProtocolError("has a host a browser reads as an IPv4 address in another form; "
                                "write it as four decimal numbers")


def _path_and_query(text: str) -> tuple[str, str | None]:
    path, question, query = text.partition("?")
    if any(char not in _PATH_CHARS for char in path):
        raise ProtocolError("has a path character a browser would escape")
    for segment in path.split("/"):
        if segment.lower().replace("%2e", ".") in (".", ".."):
            raise ProtocolError("has a dot segment in its path (a browser removes it)")
    if not question:
        return path, None
    if not query:
        raise ProtocolError("has an empty query ('?' with nothing after it)")
    if any(char not in _QUERY_CHARS for char in query):
        raise ProtocolError("has a query character a browser would escape")
    return path, query
