"""WWW-Authenticate parsing (RFC 9110 §11.6.1, grammar in §11.1-11.4).

    WWW-Authenticate = #challenge
    challenge        = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
    auth-param       = token BWS "=" BWS ( token / quoted-string )

Several challenges may share one header value, separated by commas like their parameters; a new
challenge starts at a token that is not followed by "=". Scheme and parameter names are
case-insensitive (returned lower-case); values are returned as sent, quoted-pairs unescaped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dcr_sidecar.oauth import ProtocolError

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TOKEN68 = frozenset("-._~+/0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_WS = " \t"
MAX_LENGTH = 8192


@dataclass(frozen=True)
class Challenge:
    scheme: str
    params: dict[str, str] = field(default_factory=dict)
    token68: str | None = None


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip(self, chars: str) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1

    def take(self, allowed: frozenset[str]) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in allowed:
            self.pos += 1
        return self.text[start:self.pos]

    def quoted(self) -> str:
        """A quoted-string; the opening quote is the current character."""
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
            elif char == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(char)
                self.pos += 1
        raise ProtocolError("unterminated quoted-string in WWW-Authenticate")

    def param_ahead(self) -> bool:
        """Is the next item `token BWS "=" BWS value` (not a token68 ending in "=")?"""
        save = self.pos
        try:
            if not self.take(_TCHAR):
                return False
            self.skip(_WS)
            if self.peek() != "=":
                return False
            self.pos += 1
            self.skip(_WS)
            return self.peek() not in ("", ",", "=")
        finally:
            self.pos = save


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Every challenge in a WWW-Authenticate field value, in order."""
    if len(value) > MAX_LENGTH:
        raise ProtocolError("WWW-Authenticate value too long")
    scan = _Scanner(value)
    challenges: list[Challenge] = []
    while True:
        scan.skip(_WS + ",")
        if not scan.peek():
            return challenges
        scheme = scan.take(_TCHAR)
        if not scheme:
            raise ProtocolError(f"malformed WWW-Authenticate near position {scan.pos}")
        challenges.append(_challenge(scan, scheme.lower()))


def _challenge(scan: _Scanner, scheme: str) -> Challenge:
    scan.skip(_WS)
    if not scan.param_ahead():
        token68 = _token68(scan)
        if token68 is not None:
            return Challenge(scheme, {}, token68)
        return Challenge(scheme)
    params: dict[str, str] = {}
    while scan.param_ahead():
        name = scan.take(_TCHAR).lower()
        scan.skip(_WS)
        scan.pos += 1  # "="
        scan.skip(_WS)
        value = scan.quoted() if scan.peek() == '"' else scan.take(_TCHAR)
        params.setdefault(name, value)  # a repeated parameter: the first one counts
        scan.skip(_WS)
        if scan.peek() == ",":
            scan.pos += 1
            scan.skip(_WS + ",")
        elif scan.peek():
            raise ProtocolError(f"malformed WWW-Authenticate near position {scan.pos}")
    return Challenge(scheme, params)


def _token68(scan: _Scanner) -> str | None:
    save = scan.pos
    body = scan.take(_TOKEN68)
    pad = scan.take(frozenset("="))
    scan.skip(_WS)
    if body and scan.peek() in ("", ","):
        return body + pad
    scan.pos = save
    return None


def resource_metadata_url(challenges: list[Challenge]) -> str | None:
    """RFC 9728 §5.1: the `resource_metadata` parameter of the first challenge carrying one."""
    for challenge in challenges:
        url = challenge.params.get("resource_metadata")
        if url:
            return url
    return None
