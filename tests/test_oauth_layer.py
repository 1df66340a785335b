"""The pure protocol layer: standard library only (docs/design.md §4), and the client-auth table."""

from __future__ import annotations

import ast
import base64
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from dcr_sidecar.oauth.client_auth import (
    ENCODERS,
    ClientCredentials,
    Freshness,
    auth_parts,
    basic_authorization,
    strip_client_auth,
)
from dcr_sidecar.oauth.jose import JWT_BEARER, b64url, b64url_decode
from dcr_sidecar.oauth.secret import Secret

OAUTH_DIR = Path(__file__).resolve().parent.parent / "dcr_sidecar" / "oauth"


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(OAUTH_DIR.glob("*.py")), ids=lambda p: p.name)
def test_oauth_modules_import_only_the_standard_library(path: Path) -> None:
    """oauth/ is pure: the standard library and itself (pydantic only lazily, for Secret)."""
    foreign = {name for name in imported_modules(path)
               if name.split(".")[0] not in sys.stdlib_module_names
               and not name.startswith("dcr_sidecar.oauth")
               and name.split(".")[0] not in {"pydantic", "pydantic_core"}}
    assert not foreign


class HmacSigner:
    """A stand-in signer: the encoder only needs `alg`, `kid` and `compact_jws`."""

    alg = "HS256"
    kid = "test-key"

    def compact_jws(self, header: Mapping[str, Any], claims: Mapping[str, Any]) -> str:
        import hashlib
        import hmac
        import json

        signing_input = ".".join(b64url(json.dumps(part).encode()) for part in (header, claims))
        mac = hmac.new(b"k", signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(mac)}"


FRESH = Freshness(now=1_700_000_000, jti="jti-1")
CASES = [
    ("client_secret_basic", {"Authorization"}, ()),
    ("client_secret_post", set(), ("client_id", "client_secret")),
    ("none", set(), ("client_id",)),
    ("private_key_jwt", set(), ("client_assertion_type", "client_assertion")),
]


@pytest.mark.parametrize(("method", "headers", "form"), CASES)
def test_each_encoder_carries_exactly_one_method(method: str, headers: set[str],
                                                 form: tuple[str, ...]) -> None:
    creds = ClientCredentials("client-1", Secret("s3cret"), method, signer=HmacSigner(),
                              audience="https://as.example")
    parts = auth_parts(creds, FRESH)
    assert set(parts.headers) == headers
    assert tuple(k for k, _ in parts.form) == form


def test_the_table_has_a_row_per_method() -> None:
    assert set(ENCODERS) == {method for method, _, _ in CASES}


def test_basic_form_urlencodes_before_base64() -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded first (space -> +, : -> %3A)."""
    value = basic_authorization("my client:1", "p@ss word/+")
    decoded = base64.b64decode(value.removeprefix("Basic ")).decode()
    assert decoded == "my+client%3A1:p%40ss+word%2F%2B"


def test_private_key_jwt_is_fresh_per_request() -> None:
    """Every request gets a new assertion: new jti, exp within 60 s of iat."""
    import json

    creds = ClientCredentials("client-1", None, "private_key_jwt", signer=HmacSigner(),
                              audience="https://as.example")
    first, second = auth_parts(creds), auth_parts(creds)
    assertions = [dict(p.form)["client_assertion"] for p in (first, second)]
    assert assertions[0] != assertions[1]
    assert dict(first.form)["client_assertion_type"] == JWT_BEARER
    header, claims = (json.loads(b64url_decode(part)) for part in assertions[0].split(".")[:2])
    assert header == {"alg": "HS256", "kid": "test-key", "typ": "JWT"}
    assert claims["iss"] == claims["sub"] == "client-1"
    assert claims["aud"] == "https://as.example"
    assert 0 < claims["exp"] - claims["iat"] <= 60


def test_private_key_jwt_without_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="signing key"):
        auth_parts(ClientCredentials("c", None, "private_key_jwt"))


def test_app_client_authentication_is_stripped() -> None:
    pairs = [("grant_type", "x"), ("client_id", "a"), ("client_secret", "b"),
             ("client_assertion", "c"), ("client_assertion_type", "d"), ("scope", "s")]
    assert strip_client_auth(pairs) == [("grant_type", "x"), ("scope", "s")]


def test_credentials_repr_shows_no_secret() -> None:
    creds = ClientCredentials("c", Secret("very-secret-value"), "client_secret_basic")
    assert "very-secret-value" not in repr(creds)
