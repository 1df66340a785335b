"""design.md §2.2 combinations of callback, app_issuer, pkce, scopes and auth methods."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from dcr_sidecar.config import Settings, parse_settings
from dcr_sidecar.errors import ConfigError

REDIRECT = "http://127.0.0.1:8765/cb"


def settings(**upstream: Any) -> Settings:
    base = {"name": "u", "issuer": "https://as.example", "redirect_uris": [REDIRECT]}
    base.update(upstream)
    return parse_settings(yaml.safe_dump({"version": 1, "upstreams": [base]}), "t.yaml")


@pytest.mark.parametrize(("upstream", "path", "message"), [
    ({"app_issuer": "sidecar"}, "upstreams[0].app_issuer", "needs callback: sidecar"),
    ({"pkce": "sidecar"}, "upstreams[0].pkce", "needs callback: sidecar"),
    ({"callback": "sidecar", "app_issuer": "sidecar", "scopes": ["openid", "api:read"]},
     "upstreams[0].app_issuer", "openid scope"),
    ({"callback": "sidecar", "redirect_uris": []}, "upstreams[0].redirect_uris",
     "app-side allow-list"),
    ({"client_id": "static", "token_endpoint_auth_method": "private_key_jwt"},
     "upstreams[0].token_endpoint_auth_method", "needs client_key"),
])
def test_refused_combinations_name_the_key(upstream: dict[str, Any], path: str,
                                           message: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**upstream)
    assert f"{path}: " in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("upstream", [
    {"callback": "sidecar"},
    {"callback": "sidecar", "pkce": "sidecar", "app_issuer": "sidecar", "scopes": ["api:read"]},
    {"callback": "sidecar", "app_issuer": "upstream", "scopes": ["openid"]},
    {"token_endpoint_auth_methods": ["private_key_jwt", "client_secret_basic"],
     "assertion_audience": "token_endpoint"},
])
def test_accepted_combinations(upstream: dict[str, Any]) -> None:
    settings(**upstream)


def test_mediation_registers_the_sidecar_callback_not_the_app_uris() -> None:
    mediated = settings(callback="sidecar", redirect_uris=[REDIRECT, REDIRECT + "2"])
    direct = settings()
    assert mediated.registered_redirect_uris(mediated.upstreams[0]) == [
        "http://127.0.0.1:8080/u/callback"]
    assert direct.registered_redirect_uris(direct.upstreams[0]) == [REDIRECT]
    no_code = settings(callback="sidecar", grant_types=["client_credentials"])
    assert no_code.registered_redirect_uris(no_code.upstreams[0]) == []


def test_sidecar_issuer_is_under_the_backchannel_base() -> None:
    config = parse_settings(yaml.safe_dump({
        "version": 1, "backchannel_base_url": "http://sidecar.local:9000/",
        "public_base_url": "https://login.app.example",
        "upstreams": [{"name": "u", "issuer": "https://as.example", "callback": "sidecar",
                       "redirect_uris": [REDIRECT]}]}), "t.yaml")
    assert config.sidecar_issuer("u") == "http://sidecar.local:9000/u"
    assert config.callback_uri("u") == "https://login.app.example/u/callback"


@pytest.mark.parametrize(("uri", "reason"), [
    ("http://evil.example\\@127.0.0.1:9999/cb", "backslash"),
    ("http://evil.example@127.0.0.1:9999/cb", "userinfo"),
    ("http://127.0.0.1:9999/c\tb", "control or whitespace"),
    ("http://127.0.0.1:9999/a/../cb", "dot segment"),
    ("http://127.1:9999/cb", "IPv4"),
    ("HTTP://127.0.0.1:9999/cb", "lower-case scheme"),
    ("https://app.example:443/cb", "default port"),
    ("https://app.example", "at least '/'"),
])
def test_a_redirect_uri_a_browser_would_read_otherwise_is_a_config_error(
        uri: str, reason: str) -> None:
    """The allow-list holds only what a browser navigates to as written (WHATWG URL): the
    error names the YAML path, the value and why."""
    with pytest.raises(ConfigError) as info:
        settings(redirect_uris=[REDIRECT, uri])
    assert "upstreams[0].redirect_uris" in str(info.value)
    assert repr(uri) in str(info.value)
    assert reason in str(info.value)


def test_a_public_base_url_whose_callback_a_browser_would_rewrite_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(yaml.safe_dump({
            "version": 1, "public_base_url": "https://Login.App.example:443",
            "upstreams": [{"name": "u", "issuer": "https://as.example", "callback": "sidecar",
                           "redirect_uris": [REDIRECT]}]}), "t.yaml")
    assert "public_base_url" in str(info.value)
