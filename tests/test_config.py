"""YAML configuration version 1 (design.md §2.2) and the config-facing CLI commands (§2.1).

Every error names the file, the YAML path and the offending value; secret values are masked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from operator import attrgetter
from pathlib import Path
from typing import Any

import pytest

from dcr_sidecar import __version__
from dcr_sidecar.config import (
    OWNED_METADATA,
    FileSecret,
    Settings,
    expand_vars,
    json_schema,
    parse_settings,
    read_secret,
)
from dcr_sidecar.errors import ConfigError
from dcr_sidecar.oauth.secret import MASK, Secret

SOURCE = "x.yaml"
ISSUER = "https://login.acme.test/realms/main"
MINIMAL = f"""\
version: 1
upstreams:
  - name: acme
    issuer: {ISSUER}
    redirect_uris: [https://app.test/callback]
"""
STATIC = f"""\
version: 1
upstreams:
  - name: acme
    issuer: {ISSUER}
    redirect_uris: [https://app.test/callback]
    client_id: static-client
"""


def parse(text: str, env: dict[str, str] | None = None) -> Settings:
    return parse_settings(text, SOURCE, env={} if env is None else env)


def config_error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return str(info.value)


def assert_names(message: str, path: str, value: str) -> None:
    """The error names the file, the YAML path and the offending value."""
    assert SOURCE in message
    assert f"{path}:" in message, message
    assert value in message, message


# ---------------------------------------------------------------- valid configurations


def test_version_alone_is_a_valid_config() -> None:
    """`version: 1` is the smallest valid file: no upstreams."""
    settings = parse("version: 1\n")
    assert settings.version == 1
    assert settings.upstreams == []


def test_minimal_upstream() -> None:
    """Name, issuer and redirect URIs are enough for a DCR upstream."""
    settings = parse(MINIMAL)
    (upstream,) = settings.upstreams
    assert upstream.name == "acme"
    assert upstream.issuer == ISSUER
    assert upstream.redirect_uris == ["https://app.test/callback"]
    assert upstream.strategy == "dcr"
    assert settings.upstream("acme") is upstream
    assert settings.upstream("other") is None


@pytest.mark.parametrize(
    ("attribute", "default"),
    [
        ("listen.host", "127.0.0.1"),
        ("listen.port", 8080),
        ("front", None),
        ("public_base_url", None),
        ("backchannel_base_url", None),
        ("inbound.client_id", None),
        ("inbound.client_secret", None),
        ("inbound.allow_unauthenticated", False),
        ("management.host", "127.0.0.1"),
        ("management.port", 9090),
        ("log.format", "json"),
        ("log.level", "info"),
        ("limits.max_request_bytes", 65536),
        ("limits.max_header_bytes", 16384),
        ("limits.max_response_bytes", 1048576),
        ("limits.max_error_body_bytes", 8192),
        ("limits.connections_per_upstream", 20),
        ("timeouts.connect", 5),
        ("timeouts.read", 10),
        ("timeouts.total", 15),
        ("timeouts.client_header", 5),
        ("timeouts.client_body", 10),
        ("backoff.base", 1),
        ("backoff.cap", 300),
        ("backoff.max_retry_after", 3600),
        ("discovery.cache_ttl", 3600),
        ("discovery.min_ttl", 60),
        ("shutdown.delay", 5),
        ("shutdown.grace", 20),
        ("store.backend", "file"),
        ("store.path", "./.dcr-sidecar/credentials.json"),
        ("store.url", None),
        ("store.key_prefix", "dcr-sidecar"),
        ("store.encryption_keys", []),
        ("store.lease.ttl", 30),
        ("store.lease.wait", 10),
        ("store.ephemeral", False),
        ("security.allow_private_networks", []),
        ("security.allow_http", []),
        ("admin.token", None),
        # derived defaults
        ("public_base", "http://127.0.0.1:8080"),
        ("backchannel_base", "http://127.0.0.1:8080"),
    ],
)
def test_top_level_defaults(attribute: str, default: object) -> None:
    """Every top-level default of design.md §2.2 that the model has."""
    assert attrgetter(attribute)(parse(MINIMAL)) == default


@pytest.mark.parametrize(
    ("attribute", "default"),
    [
        ("registration", "auto"),
        ("client_id", None),
        ("client_secret", None),
        ("token_endpoint_auth_method", None),
        ("loopback_any_port", False),
        ("scopes", []),
        ("grant_types", ["authorization_code", "refresh_token"]),
        ("application_type", None),
        ("client_profile", "auto"),
        ("token_endpoint_auth_methods", ["client_secret_basic", "client_secret_post", "none"]),
        ("assertion_audience", "issuer"),
        ("initial_access_token", None),
        ("registration_endpoint", None),
        ("software_statement", None),
        ("client_metadata", {}),
        ("resource_indicator", "auto"),
        ("app_issuer", "upstream"),
        ("callback", "app"),
        ("pkce", "app"),
        ("generation_grace", 86400),
        ("client_id_file", None),
        ("prefetch", False),
        ("required", False),
        ("discovery_url", None),
        ("resource", None),
        ("endpoints", None),
        # derived defaults
        ("strategy", "dcr"),
        ("response_types", ["code"]),
    ],
)
def test_upstream_defaults(attribute: str, default: object) -> None:
    """Every upstream default of design.md §2.2 that the model has."""
    assert attrgetter(attribute)(parse(MINIMAL).upstreams[0]) == default


def test_response_types_empty_without_authorization_code() -> None:
    """response_types is [code] exactly when authorization_code is a grant type."""
    text = MINIMAL + "    grant_types: [client_credentials]\n"
    assert parse(text).upstreams[0].response_types == []


def test_static_client_defaults() -> None:
    """auto + client_id → static; the auth method defaults to none without a secret."""
    upstream = parse(STATIC).upstreams[0]
    assert upstream.strategy == "static"
    assert upstream.static_auth_method == "none"
    with_secret = parse(STATIC + "    client_secret: s3cret\n").upstreams[0]
    assert with_secret.static_auth_method == "client_secret_basic"


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after loading."""
    settings = parse(MINIMAL)
    with pytest.raises(ValueError, match="frozen"):
        settings.listen.port = 1  # type: ignore[misc]


# ---------------------------------------------------------------- ${VAR} expansion


def test_var_expansion() -> None:
    """${VAR} in a string scalar is replaced from the environment."""
    text = MINIMAL.replace("login.acme.test", "${AS_HOST}")
    settings = parse(text, {"AS_HOST": "as.example.test"})
    assert settings.upstreams[0].issuer == "https://as.example.test/realms/main"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param({}, "main", id="unset-uses-fallback"),
        pytest.param({"REALM": "prod"}, "prod", id="set-wins"),
        pytest.param({"REALM": ""}, "main", id="empty-uses-fallback-like-the-shell"),
    ],
)
def test_var_fallback(env: dict[str, str], expected: str) -> None:
    """${VAR:-fallback} gives the fallback when VAR is unset or empty."""
    text = MINIMAL.replace("realms/main", "realms/${REALM:-main}")
    assert parse(text, env).upstreams[0].issuer == f"https://login.acme.test/realms/{expected}"


def test_var_set_but_empty_without_fallback_is_empty() -> None:
    """${VAR} with VAR set to "" expands to "" (it is set)."""
    assert expand_vars("a${EMPTY}b", {"EMPTY": ""}) == "ab"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$${HOME}", "${HOME}"),
        ("$${HOME:-x}", "${HOME:-x}"),
        ("cost: $${ 5", "cost: ${ 5"),
        ("$$", "$$"),
        ("a$b", "a$b"),
        ("$${A}${A}", "${A}1"),
    ],
)
def test_dollar_dollar_brace_is_a_literal(raw: str, expected: str) -> None:
    """$${ is a literal ${ and is never expanded; other dollars are left alone."""
    assert expand_vars(raw, {"A": "1", "HOME": "/root"}) == expected


def test_dollar_escape_in_a_config_value() -> None:
    """$${ survives into the parsed value as ${."""
    text = MINIMAL + '    client_metadata: {client_name: "pay $${AMOUNT}"}\n'
    assert parse(text).upstreams[0].client_metadata == {"client_name": "pay ${AMOUNT}"}


def test_var_missing_is_an_error_naming_the_path() -> None:
    """A missing variable without fallback names the file, the YAML path and the variable."""
    message = config_error(MINIMAL.replace("realms/main", "realms/${REALM}"))
    assert SOURCE in message
    assert "upstreams[0].issuer" in message
    assert "REALM" in message


def test_var_expansion_does_not_touch_non_strings() -> None:
    """Numbers stay numbers; only string scalars are expanded."""
    settings = parse(MINIMAL + "listen: {port: 8181}\n")
    assert settings.listen.port == 8181


# ---------------------------------------------------------------- secret sources


def test_secret_from_env_uses_the_given_environment() -> None:
    """{env: NAME} reads the environment passed to parse_settings."""
    text = STATIC + "    client_secret: {env: ACME_SECRET}\n"
    secret = parse(text, {"ACME_SECRET": "from-env"}).upstreams[0].client_secret
    assert isinstance(secret, Secret)
    assert secret.reveal() == "from-env"


def test_secret_from_env_missing_is_an_error() -> None:
    """A missing {env:} is an error naming the variable; the message shows no secret value."""
    message = config_error(STATIC + "    client_secret: {env: ACME_SECRET}\n")
    assert_names(message, "upstreams[0].client_secret", "ACME_SECRET")


def test_secret_from_env_optional_missing_is_none() -> None:
    """{env: NAME, optional: true} is None when unset (a static client then uses none)."""
    text = STATIC + "    client_secret: {env: ACME_SECRET, optional: true}\n"
    upstream = parse(text).upstreams[0]
    assert upstream.client_secret is None
    assert upstream.static_auth_method == "none"
    present = parse(text, {"ACME_SECRET": "s"}).upstreams[0].client_secret
    assert present == Secret("s")


def test_secret_from_file_strips_trailing_whitespace(tmp_path: Path) -> None:
    """{file: PATH} is the file's content with trailing whitespace stripped."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("  s3cret value \n\t\n", encoding="utf-8")
    text = STATIC + f"    client_secret: {{file: {secret_file}}}\n"
    assert parse(text).upstreams[0].client_secret == Secret("  s3cret value")


def test_secret_from_missing_file_is_an_error(tmp_path: Path) -> None:
    """A {file:} that cannot be read names the path of the field and the file."""
    missing = tmp_path / "absent"
    message = config_error(STATIC + f"    client_secret: {{file: {missing}}}\n")
    assert_names(message, "upstreams[0].client_secret", str(missing))


def test_secret_plain_string_and_masked_repr() -> None:
    """A plain string is a Secret whose repr and the settings' repr never show it."""
    settings = parse(STATIC + "    client_secret: plain-s3cret\n")
    assert settings.upstreams[0].client_secret == Secret("plain-s3cret")
    assert "plain-s3cret" not in repr(settings)
    assert "plain-s3cret" not in str(settings)
    assert "plain-s3cret" not in settings.model_dump_json()


def test_initial_access_token_file_is_reread(tmp_path: Path) -> None:
    """initial_access_token {file:} stays a FileSecret; read_secret re-reads it on every use."""
    iat = tmp_path / "iat"
    iat.write_text("first-token\n", encoding="utf-8")
    settings = parse(MINIMAL + f"    initial_access_token: {{file: {iat}}}\n")
    field = settings.upstreams[0].initial_access_token
    assert isinstance(field, FileSecret)
    assert read_secret(field) == Secret("first-token")
    iat.write_text("second-token  \n", encoding="utf-8")
    assert read_secret(field) == Secret("second-token")


@pytest.mark.parametrize(
    ("value", "env"),
    [
        pytest.param("literal-iat", {}, id="string"),
        pytest.param("{env: IAT}", {"IAT": "literal-iat"}, id="env"),
    ],
)
def test_initial_access_token_other_sources_resolve_at_load(
    value: str, env: dict[str, str]
) -> None:
    """A string or {env:} initial access token is a Secret read once."""
    field = parse(MINIMAL + f"    initial_access_token: {value}\n", env).upstreams[0]
    assert field.initial_access_token == Secret("literal-iat")
    assert read_secret(field.initial_access_token) == Secret("literal-iat")
    assert read_secret(None) is None


def test_initial_access_token_missing_file_is_an_error(tmp_path: Path) -> None:
    """A {file:} IAT that does not exist at load time is a config error."""
    missing = tmp_path / "no-iat"
    message = config_error(MINIMAL + f"    initial_access_token: {{file: {missing}}}\n")
    assert_names(message, "upstreams[0].initial_access_token", str(missing))


def test_secret_mapping_with_unknown_shape_is_an_error() -> None:
    """A mapping that is neither {env:} nor {file:} is refused."""
    message = config_error(STATIC + "    client_secret: {vault: x}\n")
    assert_names(message, "upstreams[0].client_secret", MASK)


# ---------------------------------------------------------------- errors


def test_error_unknown_key() -> None:
    """Unknown keys are errors naming the key's path."""
    message = config_error(MINIMAL + "    bogus_key: 17\n")
    assert_names(message, "upstreams[0].bogus_key", "17")
    assert "unknown key" in message


def test_error_unknown_top_level_key() -> None:
    """A misspelt top-level section is an error too."""
    message = config_error(MINIMAL + "lisen: {port: 1}\n")
    assert_names(message, "lisen", '{"port": 1}')


@pytest.mark.parametrize("name", ["Acme", "acme_1", "-acme", "a" * 64, "", "acme\n"])
def test_error_bad_name(name: str) -> None:
    """Names must match ^[a-z0-9][a-z0-9-]{0,62}$ (a trailing newline too is refused)."""
    message = config_error(MINIMAL.replace("name: acme", f"name: {json.dumps(name)}"))
    assert_names(message, "upstreams[0].name", repr(name))


@pytest.mark.parametrize("name", ["healthz", "readyz", "metrics", "admin", "well-known"])
def test_error_reserved_name(name: str) -> None:
    """Names that collide with the sidecar's own routes are reserved."""
    message = config_error(MINIMAL.replace("name: acme", f"name: {name}"))
    assert_names(message, "upstreams[0].name", repr(name))
    assert "reserved" in message


def test_error_duplicate_names() -> None:
    """Two upstreams with one name: the second one's name is the error."""
    text = MINIMAL + (
        "  - name: acme\n    issuer: https://other.test\n    grant_types: [client_credentials]\n"
    )
    message = config_error(text)
    assert_names(message, "upstreams[1].name", "'acme'")
    assert "unique" in message


def test_error_no_source() -> None:
    """An upstream without issuer, discovery_url, resource or endpoints is refused."""
    message = config_error(
        "version: 1\nupstreams:\n  - name: acme\n    grant_types: [client_credentials]\n"
    )
    assert_names(message, "upstreams[0]", '"name": "acme"')
    assert "one source is required" in message


def test_error_two_sources() -> None:
    """discovery_url together with endpoints is refused (exactly one source)."""
    text = MINIMAL + (
        "    discovery_url: https://login.acme.test/.well-known/openid-configuration\n"
        "    endpoints: {token_endpoint: https://login.acme.test/token}\n"
    )
    message = config_error(text)
    assert_names(message, "upstreams[0].endpoints", "https://login.acme.test/token")
    assert "discovery_url and endpoints" in message


def test_issuer_may_pin_discovery_url() -> None:
    """issuer beside discovery_url is a pin, not a second source."""
    text = MINIMAL + "    discovery_url: https://login.acme.test/.well-known/openid-configuration\n"
    assert parse(text).upstreams[0].discovery_url is not None


def test_error_http_issuer_not_allow_listed() -> None:
    """http is refused unless the host is in security.allow_http."""
    message = config_error(MINIMAL.replace("https://login", "http://login"))
    assert_names(message, "upstreams[0].issuer", "'http://login.acme.test/realms/main'")
    assert "https" in message
    allowed = MINIMAL.replace("https://login", "http://login") + (
        "security: {allow_http: [login.acme.test]}\n"
    )
    assert parse(allowed).upstreams[0].issuer == "http://login.acme.test/realms/main"


def test_registration_cimd_is_accepted() -> None:
    """registration: cimd (design.md §3.11) parses, with the cimd defaults (given an https
    public_base_url: the document URL is the client_id)."""
    upstream = parse("public_base_url: https://app.test\n" + MINIMAL
                     + "    registration: cimd\n").upstreams[0]
    assert upstream.strategy == "cimd"
    assert upstream.cimd_possible
    assert upstream.cimd.auth_method == "private_key_jwt"
    assert upstream.cimd.overlap == 600


def test_error_cimd_with_client_id() -> None:
    """registration: cimd cannot take a static client_id."""
    message = config_error("public_base_url: https://app.test\n" + MINIMAL
                           + "    registration: cimd\n    client_id: abc\n")
    assert_names(message, "upstreams[0].client_id", "'abc'")


def test_error_static_without_client_id() -> None:
    """registration: static needs client_id."""
    message = config_error(MINIMAL + "    registration: static\n")
    assert_names(message, "upstreams[0].client_id", "null")
    assert "needs client_id" in message


def test_error_client_secret_on_a_dcr_upstream_is_masked() -> None:
    """client_secret on a DCR upstream is refused and the secret text never appears."""
    message = config_error(MINIMAL + "    client_secret: hunter2-super-secret\n")
    assert_names(message, "upstreams[0].client_secret", MASK)
    assert "hunter2" not in message
    assert "static clients only" in message


@pytest.mark.parametrize("key", sorted(OWNED_METADATA))
def test_error_owned_key_in_client_metadata(key: str) -> None:
    """Keys the sidecar derives itself cannot be set through client_metadata."""
    message = config_error(MINIMAL + f"    client_metadata: {{{key}: x, client_name: demo}}\n")
    assert_names(message, "upstreams[0].client_metadata", f'"{key}": "x"')


def test_error_client_metadata_must_be_json() -> None:
    """A YAML date in client_metadata is refused at load time (it is sent as JSON)."""
    message = config_error(MINIMAL + "    client_metadata: {software_version: 2024-01-31}\n")
    assert_names(message, "upstreams[0].client_metadata", "2024-01-31")
    quoted = MINIMAL + '    client_metadata: {software_version: "2024-01-31"}\n'
    assert parse(quoted).upstreams[0].client_metadata == {"software_version": "2024-01-31"}


def test_error_authorization_code_without_redirect_uris() -> None:
    """authorization_code under callback: app needs redirect_uris."""
    text = MINIMAL.replace("    redirect_uris: [https://app.test/callback]\n", "")
    message = config_error(text)
    assert_names(message, "upstreams[0].redirect_uris", "null")
    client_credentials = text + "    grant_types: [client_credentials]\n"
    assert parse(client_credentials).upstreams[0].redirect_uris == []


def test_error_public_listen_without_inbound_secret() -> None:
    """listen.host 0.0.0.0 without inbound.client_secret is refused, saying why."""
    message = config_error(MINIMAL + "listen: {host: 0.0.0.0}\n")
    assert_names(message, "listen.host", "'0.0.0.0'")
    assert "inbound.client_secret" in message


@pytest.mark.parametrize(
    "inbound",
    ["{client_secret: inbound-s3cret}", "{allow_unauthenticated: true}"],
)
def test_public_listen_with_inbound_protection_is_valid(inbound: str) -> None:
    """An inbound secret, or an explicit allow_unauthenticated, permits a public listener."""
    settings = parse(MINIMAL + f"listen: {{host: 0.0.0.0}}\ninbound: {inbound}\n")
    assert settings.listen.host == "0.0.0.0"  # noqa: S104 - the value under test


def test_error_bad_yaml_names_the_line() -> None:
    """Broken YAML names the file and the line."""
    message = config_error("version: 1\nupstreams:\n  - name: acme\n    issuer: [unclosed\n")
    assert SOURCE in message
    assert "line 5" in message
    assert "not valid YAML" in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_error_top_level_not_a_mapping(text: str) -> None:
    """The document must be a mapping."""
    message = config_error(text)
    assert SOURCE in message
    assert "top level" in message


def test_error_wrong_version() -> None:
    """Only version 1 is understood."""
    message = config_error("version: 2\n")
    assert_names(message, "version", "2")


def test_several_errors_are_all_reported() -> None:
    """Every error is listed, each on its own line with the file name."""
    message = config_error(MINIMAL + "    bogus: 1\nlimits: {max_request_bytes: 1}\n")
    assert "2 errors" in message
    lines = [line for line in message.splitlines() if line.strip().startswith(SOURCE)]
    assert len(lines) == 3
    assert any("upstreams[0].bogus" in line for line in lines)
    assert any("limits.max_request_bytes" in line for line in lines)


# ---------------------------------------------------------------- JSON Schema


def test_json_schema_describes_the_file() -> None:
    """The schema has the top-level sections and masks secrets as write-only strings."""
    schema = json_schema()
    assert {"version", "listen", "upstreams", "store"} <= set(schema["properties"])
    assert "$schema" in schema
    dumped = json.dumps(schema)
    assert '"writeOnly": true' in dumped


# ---------------------------------------------------------------- CLI


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dcr_sidecar", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=dict(os.environ),
        check=False,
    )


def test_cli_check_config_broken_file_exits_2(tmp_path: Path) -> None:
    """check-config on an invalid file: exit 2, stderr names the file, path and value."""
    path = tmp_path / "broken.yaml"
    path.write_text(MINIMAL.replace("https://login", "http://login"), encoding="utf-8")
    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr
    assert "upstreams[0].issuer" in result.stderr
    assert "'http://login.acme.test/realms/main'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_check_config_valid_file_prints_a_summary(tmp_path: Path) -> None:
    """check-config on a valid file: exit 0 and a summary naming each upstream."""
    path = tmp_path / "ok.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{path}: ok" in result.stdout
    assert "upstream acme" in result.stdout
    assert ISSUER in result.stdout


def test_cli_check_config_missing_file_exits_2(tmp_path: Path) -> None:
    """A file that cannot be read is a configuration error (exit 2) naming the file."""
    path = tmp_path / "absent.yaml"
    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert str(path) in result.stderr


def test_cli_config_schema_prints_json(tmp_path: Path) -> None:
    """config-schema prints the JSON Schema, whose properties include upstreams."""
    result = run_cli("config-schema", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    schema: dict[str, Any] = json.loads(result.stdout)
    assert "upstreams" in schema["properties"]


def test_cli_version(tmp_path: Path) -> None:
    """--version exits 0 and prints the package version."""
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert __version__ in result.stdout


@pytest.mark.parametrize(("escape", "code"), [("\\x1b", "U+001B"), ("\\v", "U+000B"),
                                              ("\\x7f", "U+007F"), ("\\0", "U+0000")])
@pytest.mark.parametrize("key", ["issuer", "endpoints.authorization_endpoint"])
def test_a_configured_url_with_a_control_character_is_refused(
        escape: str, code: str, key: str) -> None:
    """The operator's URLs follow the rule discovered metadata follows (review finding 8): a
    control character is a config error naming the YAML path and the character."""
    issuer = f"https://login.acme.test/a{escape}b" if key == "issuer" \
        else "https://login.acme.test"
    endpoint = f"https://login.acme.test/auth{escape}orize" if key != "issuer" \
        else "https://login.acme.test/authorize"
    message = config_error(
        "version: 1\nupstreams:\n  - name: acme\n"
        f'    issuer: "{issuer}"\n    client_id: static-client\n'
        "    redirect_uris: [https://app.test/callback]\n"
        "    endpoints: {token_endpoint: https://login.acme.test/token,\n"
        f'                authorization_endpoint: "{endpoint}"}}\n')
    assert_names(message, f"upstreams[0].{key}", code)
