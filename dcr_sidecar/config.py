"""YAML configuration (version 1) -> validated, frozen settings.

Invariants:
- Unknown keys are errors; every error names the file, the YAML path and the offending value
  (secret values are never echoed).
- ``${VAR}`` in string scalars is expanded after parsing; ``$${`` is a literal ``${``.
- Secret fields accept a string, ``{env: NAME[, optional: true]}`` or ``{file: PATH}``. They are
  resolved at load time into :class:`Secret`, except ``initial_access_token`` given as ``{file:}``,
  which is re-read on every use (rotated or single-use tokens).
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from dcr_sidecar.errors import ConfigError
from dcr_sidecar.oauth.secret import MASK, Secret

DEFAULT_CONFIG_PATH = "./config/sidecar.yaml"
RESERVED_NAMES = frozenset({"healthz", "readyz", "metrics", "admin", "well-known"})
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SECRET_KEYS = frozenset(
    {
        "client_secret",
        "initial_access_token",
        "software_statement",
        "token",
        "url",
        "encryption_keys",
    }
)
# Registration request fields the sidecar derives itself (design.md §2.2 client_metadata).
OWNED_METADATA = frozenset(
    {
        "redirect_uris",
        "grant_types",
        "response_types",
        "scope",
        "token_endpoint_auth_method",
        "jwks",
        "jwks_uri",
        "token_endpoint_auth_signing_alg",
        "software_statement",
        "application_type",
    }
)
AuthMethod = Literal["client_secret_basic", "client_secret_post", "none", "private_key_jwt"]
DEFAULT_AUTH_METHODS: tuple[AuthMethod, ...] = ("client_secret_basic", "client_secret_post", "none")
ENDPOINT_URL_FIELDS = (
    "authorization_endpoint",
    "token_endpoint",
    "registration_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
    "pushed_authorization_request_endpoint",
    "device_authorization_endpoint",
    "userinfo_endpoint",
    "jwks_uri",
    "end_session_endpoint",
)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSecret(_Model):
    """A secret read from a file (content, trailing whitespace stripped)."""

    file: str

    def read(self) -> Secret:
        try:
            return Secret(Path(self.file).read_text(encoding="utf-8").rstrip())
        except OSError as exc:
            raise ConfigError(f"cannot read secret file {self.file!r}: {exc.strerror}") from exc


class EnvSecret(_Model):
    env: str
    optional: bool = False


_SECRET_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "writeOnly": True},
        {
            "type": "object",
            "properties": {"env": {"type": "string"}, "optional": {"type": "boolean"}},
            "required": ["env"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"file": {"type": "string"}},
            "required": ["file"],
            "additionalProperties": False,
        },
        {"type": "null"},
    ]
}


def _source(value: Any) -> EnvSecret | FileSecret | Any:
    if isinstance(value, Mapping):
        if "env" in value:
            return EnvSecret.model_validate(value)
        if "file" in value:
            return FileSecret.model_validate(value)
        raise ValueError("a secret is a string, {env: NAME} or {file: PATH}")
    return value


def _environ(info: ValidationInfo) -> Mapping[str, str]:
    """The environment parse_settings was given (validation context), else os.environ."""
    given = info.context.get("env") if isinstance(info.context, Mapping) else None
    return given if isinstance(given, Mapping) else os.environ


def _load_secret(value: Any, info: ValidationInfo) -> Any:
    source = _source(value)
    if isinstance(source, EnvSecret):
        found = _environ(info).get(source.env)
        if found is None and not source.optional:
            raise ValueError(f"environment variable {source.env} is not set")
        return None if found is None else Secret(found)
    if isinstance(source, FileSecret):
        try:
            return source.read()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
    return source


def _load_secret_keep_file(value: Any, info: ValidationInfo) -> Any:
    """Like _load_secret, but a {file:} stays a reference (re-read on every use)."""
    source = _source(value)
    if isinstance(source, FileSecret):
        if not Path(source.file).is_file():
            raise ValueError(f"secret file {source.file!r} does not exist")
        return source
    return _load_secret(value, info)


SecretField = Annotated[
    Secret | None, BeforeValidator(_load_secret), WithJsonSchema(_SECRET_SCHEMA)
]
RereadSecretField = Annotated[
    Secret | FileSecret | None,
    BeforeValidator(_load_secret_keep_file),
    WithJsonSchema(_SECRET_SCHEMA),
]


def read_secret(value: Secret | FileSecret | None) -> Secret | None:
    """The current value of a secret field (re-reading a {file:} reference)."""
    return value.read() if isinstance(value, FileSecret) else value


PositiveFloat = Annotated[float, Field(gt=0)]
Port = Annotated[int, Field(ge=0, le=65535)]


class Listen(_Model):
    host: str = "127.0.0.1"
    port: Port = 8080


class Management(_Model):
    host: str = "127.0.0.1"
    port: Port = 9090


class Inbound(_Model):
    client_id: str | None = None
    client_secret: SecretField = None
    allow_unauthenticated: bool = False


class Log(_Model):
    format: Literal["json", "console"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Limits(_Model):
    max_request_bytes: Annotated[int, Field(ge=1024)] = 65536
    max_header_bytes: Annotated[int, Field(ge=1024)] = 16384
    max_response_bytes: Annotated[int, Field(ge=1024)] = 1048576
    max_error_body_bytes: Annotated[int, Field(ge=256)] = 8192
    connections_per_upstream: Annotated[int, Field(ge=1, le=1000)] = 20


class Timeouts(_Model):
    connect: PositiveFloat = 5
    read: PositiveFloat = 10
    total: PositiveFloat = 15


class Backoff(_Model):
    base: PositiveFloat = 1
    cap: PositiveFloat = 300
    max_retry_after: PositiveFloat = 3600


class Discovery(_Model):
    cache_ttl: PositiveFloat = 3600
    min_ttl: PositiveFloat = 60


class Shutdown(_Model):
    delay: Annotated[float, Field(ge=0)] = 5
    grace: Annotated[float, Field(ge=0)] = 20


class Lease(_Model):
    ttl: Annotated[float, Field(ge=0.1)] = 30
    wait: PositiveFloat = 10


REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")
KEY_PREFIX_RE = re.compile(r"^[A-Za-z0-9._:/-]{1,64}$")


class Store(_Model):
    backend: Literal["memory", "file", "redis"] = "file"
    path: str = "./.dcr-sidecar/credentials.json"
    url: SecretField = None
    key_prefix: str = "dcr-sidecar"
    encryption_keys: list[SecretField] = Field(default_factory=list)
    lease: Lease = Lease()
    ephemeral: bool = False

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not KEY_PREFIX_RE.fullmatch(value):  # braces would break the hash tags
            raise ValueError("must be 1-64 characters of A-Z a-z 0-9 . _ : / -")
        return value

    @field_validator("encryption_keys")
    @classmethod
    def _keys(cls, value: list[Secret | None]) -> list[Secret]:
        from cryptography.fernet import Fernet

        keys = [key for key in value if key is not None]  # {env:, optional: true} unset
        for index, key in enumerate(keys):
            try:
                Fernet(key.reveal().encode())
            except (ValueError, TypeError):
                raise ValueError(
                    f"entry {index} is not a Fernet key (32 url-safe base64-encoded bytes; "
                    "make one with: python -c 'from cryptography.fernet import Fernet; "
                    "print(Fernet.generate_key().decode())')"
                ) from None
        return keys

    @model_validator(mode="after")
    def _backend(self) -> Store:
        if self.backend == "redis":
            if self.url is None:
                raise _keyed("url", "backend: redis needs url (redis://, rediss:// or "
                                    "redis+sentinel://)")
            from dcr_sidecar.store.redis_url import parse_redis_url

            try:
                parse_redis_url(self.url.reveal())
            except ValueError as exc:
                raise _keyed("url", str(exc)) from None
        elif self.url is not None:
            raise _keyed("url", f"is for backend: redis (backend is {self.backend})")
        if self.backend == "memory" and self.encryption_keys:
            raise _keyed("encryption_keys", "encrypt stored records; the memory store keeps "
                                            "nothing at rest")
        return self


IpNetwork = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(lambda v: ipaddress.ip_network(v, strict=False) if isinstance(v, str) else v),
]


class Security(_Model):
    allow_private_networks: list[IpNetwork] = Field(default_factory=list)
    # Also exempt for server-supplied authorities (an AS that a resource names on an internal
    # network, design.md §3.8); cloud metadata addresses stay blocked.
    allow_private_networks_server_supplied: list[IpNetwork] = Field(default_factory=list)
    allow_http: list[str] = Field(default_factory=list)

    @field_validator("allow_private_networks", "allow_private_networks_server_supplied",
                     mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        if isinstance(value, list):
            for item in value:
                try:
                    ipaddress.ip_network(item, strict=False)
                except (ValueError, TypeError):
                    raise ValueError(f"{item!r} is not a CIDR (example: 127.0.0.1/32)") from None
        return value


class Admin(_Model):
    token: SecretField = None


class Endpoints(BaseModel):
    """Operator-given AS metadata (no discovery). Other metadata fields are kept as given."""

    model_config = ConfigDict(extra="allow", frozen=True)

    authorization_endpoint: str | None = None
    token_endpoint: str
    registration_endpoint: str | None = None
    revocation_endpoint: str | None = None
    introspection_endpoint: str | None = None
    pushed_authorization_request_endpoint: str | None = None
    device_authorization_endpoint: str | None = None
    code_challenge_methods_supported: list[str] | None = None
    token_endpoint_auth_methods_supported: list[str] | None = None

    def as_metadata(self, issuer: str) -> dict[str, Any]:
        doc = {k: v for k, v in self.model_dump().items() if v is not None}
        doc["issuer"] = issuer
        return doc


class Upstream(_Model):
    name: str
    issuer: str | None = None
    discovery_url: str | None = None
    resource: str | None = None
    # How a `resource` source finds its metadata (design.md §3.1): the resource's challenge to a
    # GET, or to a POST of a JSON-RPC ping (MCP servers answer 401 to POST only); or a URL.
    resource_probe: Literal["get", "post"] = "get"
    resource_metadata: str | None = None
    endpoints: Endpoints | None = None
    registration: Literal["auto", "static", "dcr", "cimd"] = "auto"
    client_id: str | None = None
    client_secret: SecretField = None
    token_endpoint_auth_method: AuthMethod | None = None
    redirect_uris: list[str] = Field(default_factory=list)
    loopback_any_port: bool = False
    scopes: list[str] = Field(default_factory=list)
    grant_types: list[str] = Field(default_factory=lambda: ["authorization_code", "refresh_token"])
    application_type: Literal["web", "native"] | None = None
    client_profile: Literal["auto", "confidential", "public"] = "auto"
    token_endpoint_auth_methods: list[AuthMethod] = Field(
        default_factory=lambda: list(DEFAULT_AUTH_METHODS)
    )
    assertion_audience: Literal["issuer", "token_endpoint"] = "issuer"
    initial_access_token: RereadSecretField = None
    registration_endpoint: str | None = None
    software_statement: SecretField = None
    client_metadata: dict[str, Any] = Field(default_factory=dict)
    resource_indicator: Literal["auto", "off"] = "auto"
    app_issuer: Literal["upstream", "sidecar"] = "upstream"
    callback: Literal["app", "sidecar"] = "app"
    pkce: Literal["app", "sidecar"] = "app"
    generation_grace: Annotated[float, Field(ge=0)] = 86400
    client_id_file: str | None = None
    prefetch: bool = False
    required: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_RE.fullmatch(value):  # match() and $ would accept "name\n"
            raise ValueError("must match ^[a-z0-9][a-z0-9-]{0,62}$")
        if value in RESERVED_NAMES:
            raise ValueError(f"is reserved (one of {', '.join(sorted(RESERVED_NAMES))})")
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: list[str]) -> list[str]:
        for scope in value:
            if not scope or any(c.isspace() or c in '"\\' for c in scope):
                raise ValueError(f"scope {scope!r} is not a valid scope token (RFC 6749 §3.3)")
        return value

    @field_validator("redirect_uris")
    @classmethod
    def _redirects(cls, value: list[str]) -> list[str]:
        for uri in value:
            parts = urlsplit(uri)
            if (
                not parts.scheme
                or parts.fragment
                or (parts.scheme in ("http", "https") and not parts.netloc)
            ):
                raise ValueError(f"{uri!r} must be an absolute URI without a fragment")
        return value

    @field_validator("client_metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        owned = sorted(OWNED_METADATA.intersection(value))
        if owned:
            raise ValueError(
                f"{', '.join(owned)} are set by the sidecar from their own keys "
                "and cannot appear in client_metadata"
            )
        try:  # sent as JSON and fingerprinted: YAML dates and the like must be quoted
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(
                "values must be JSON (strings, numbers, booleans, lists, mappings); "
                "quote dates and times"
            ) from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Upstream:
        self._check_source()
        self._check_registration()
        self._check_flow()
        return self

    def _check_source(self) -> None:
        given = [k for k in ("discovery_url", "resource", "endpoints") if getattr(self, k)]
        if len(given) > 1:
            raise _keyed(given[1], f"give exactly one source, not {' and '.join(given)}")
        if not given and not self.issuer:
            raise ValueError("one source is required: issuer, discovery_url, resource or endpoints")
        if self.endpoints is not None and not self.issuer:
            raise _keyed("endpoints", "needs issuer beside it (the issuer the AS uses)")
        if self.resource is not None and urlsplit(self.resource).fragment:
            raise _keyed("resource", "must not have a fragment (RFC 8707 §2)")
        if self.resource is None:
            if self.resource_metadata is not None:
                raise _keyed("resource_metadata", "needs resource beside it")
            if self.resource_probe != "get":
                raise _keyed("resource_probe", "needs resource beside it")

    def _check_registration(self) -> None:
        if self.registration == "cimd":
            raise _keyed(
                "registration",
                "cimd (Client ID Metadata Documents) is planned after "
                "version 1 and not supported yet; use dcr or static",
            )
        strategy = self.strategy
        if strategy == "static":
            if not self.client_id:
                raise _keyed("client_id", "registration: static needs client_id")
            if self.token_endpoint_auth_method == "private_key_jwt":  # noqa: S105 - a method name
                raise _keyed(
                    "token_endpoint_auth_method",
                    "private_key_jwt is not supported for static clients in version 1",
                )
            if self.static_auth_method.startswith("client_secret") and not self.client_secret:
                raise _keyed(
                    "client_secret",
                    f"token_endpoint_auth_method {self.static_auth_method} needs client_secret",
                )
            return
        for key in ("client_id", "client_secret", "token_endpoint_auth_method"):
            if getattr(self, key) is not None:
                raise _keyed(key, f"is for static clients only (registration: {strategy})")
        if not self.token_endpoint_auth_methods:
            raise _keyed("token_endpoint_auth_methods", "must not be empty")

    def _check_flow(self) -> None:
        """design.md §2.2: the combinations of callback, app_issuer and pkce."""
        for key in ("app_issuer", "pkce"):
            if getattr(self, key) == "sidecar" and self.callback != "sidecar":
                raise _keyed(key, "sidecar needs callback: sidecar (the sidecar must see the "
                                  "authorization response)")
        if self.app_issuer == "sidecar" and "openid" in self.scopes:
            raise _keyed("app_issuer", "sidecar cannot be used with the openid scope: ID tokens "
                                       "carry the AS's issuer, which must equal the one the "
                                       "app discovered (OIDC Core §3.1.3.7); use app_issuer: "
                                       "upstream for OIDC apps")
        if "authorization_code" in self.grant_types and not self.redirect_uris:
            role = "are the app-side allow-list" if self.callback == "sidecar" else "are registered"
            raise _keyed(
                "redirect_uris",
                "must list the app's redirect URIs when grant_types has authorization_code "
                f"(they {role})",
            )

    @property
    def strategy(self) -> Literal["static", "dcr"]:
        if self.registration == "auto":
            return "static" if self.client_id else "dcr"
        return "static" if self.registration == "static" else "dcr"

    @property
    def static_auth_method(self) -> str:
        if self.token_endpoint_auth_method:
            return self.token_endpoint_auth_method
        return "client_secret_basic" if self.client_secret else "none"

    @property
    def response_types(self) -> list[str]:
        return ["code"] if "authorization_code" in self.grant_types else []

    @property
    def default_resource(self) -> str | None:
        """The RFC 8707 `resource` to send when the app named none (`resource_indicator`)."""
        return self.resource if self.resource_indicator == "auto" else None

    def configured_urls(self) -> list[str]:
        """Every URL the operator wrote for this upstream (its configured authorities)."""
        urls = [self.issuer, self.discovery_url, self.resource, self.resource_metadata,
                self.registration_endpoint]
        if self.endpoints is not None:
            dumped = self.endpoints.model_dump()
            urls.extend(dumped.get(k) for k in ENDPOINT_URL_FIELDS)
        return [u for u in urls if isinstance(u, str)]


def _keyed(key: str, message: str) -> ValueError:
    """A model-level error about one key: the loader shows that key's path and value."""
    return ValueError(f"<<{key}>>{message}")


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(_Model):
    version: Literal[1]
    listen: Listen = Listen()
    front: Listen | None = None
    public_base_url: str | None = None
    backchannel_base_url: str | None = None
    inbound: Inbound = Inbound()
    management: Management = Management()
    log: Log = Log()
    limits: Limits = Limits()
    timeouts: Timeouts = Timeouts()
    backoff: Backoff = Backoff()
    discovery: Discovery = Discovery()
    shutdown: Shutdown = Shutdown()
    store: Store = Store()
    security: Security = Security()
    admin: Admin = Admin()
    upstreams: list[Upstream] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [u.name for u in self.upstreams]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _keyed(
                    f"upstreams[{index}].name",
                    f"upstream names must be unique: already used by "
                    f"upstreams[{names.index(name)}]",
                )
        if (
            not _is_loopback_host(self.listen.host)
            and self.inbound.client_secret is None
            and not self.inbound.allow_unauthenticated
        ):
            raise _keyed(
                "listen.host",
                f"host {self.listen.host!r} is not loopback and inbound.client_secret is "
                "not set: anyone who can reach the back channel could spend the app's "
                "credentials. Set inbound.client_secret, or inbound.allow_unauthenticated: true",
            )
        if self.front and not _is_loopback_host(self.front.host) and not self.public_base_url:
            raise _keyed(
                "front", "host is not loopback: set public_base_url to the address browsers use"
            )
        if self.front is not None:
            raise _keyed(
                "front", "a separate browser-facing listener is not available in this build yet"
            )
        for base in (self.public_base_url, self.backchannel_base_url):
            if base is not None and (
                urlsplit(base).scheme not in ("http", "https") or urlsplit(base).query
            ):
                raise ValueError(f"{base!r} must be an http(s) URL without query")
        for index, upstream in enumerate(self.upstreams):
            self._check_urls(index, upstream)
        return self

    def _check_urls(self, index: int, upstream: Upstream) -> None:
        """https only, except `security.allow_http` hosts (design.md §3.8); no query or fragment."""
        for key in ("issuer", "discovery_url", "resource", "resource_metadata",
                    "registration_endpoint"):
            url = getattr(upstream, key)
            if url is not None:
                self._check_url(url, f"upstreams[{index}].{key}", issuer=key == "issuer")
        if upstream.endpoints is not None:
            for key, url in upstream.endpoints.model_dump().items():
                if key in ENDPOINT_URL_FIELDS and isinstance(url, str):
                    self._check_url(url, f"upstreams[{index}].endpoints.{key}", issuer=False)

    def _check_url(self, url: str, path: str, *, issuer: bool) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise _keyed(path, "must be an absolute https URL")
        if parts.scheme == "http" and parts.hostname not in self.security.allow_http:
            raise _keyed(
                path, f"must use https (or list {parts.hostname!r} in security.allow_http)"
            )
        if parts.fragment or (issuer and parts.query):
            raise _keyed(
                path, "must not have a query or fragment" if issuer else "must not have a fragment"
            )

    @property
    def public_base(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        if self.front is not None:
            return f"http://{_url_host(self.front.host)}:{self.front.port}"
        return f"http://127.0.0.1:{self.listen.port}"

    @property
    def backchannel_base(self) -> str:
        if self.backchannel_base_url:
            return self.backchannel_base_url.rstrip("/")
        return f"http://127.0.0.1:{self.listen.port}"

    def upstream(self, name: str) -> Upstream | None:
        return self._by_name.get(name)

    @functools.cached_property
    def _by_name(self) -> dict[str, Upstream]:
        """Upstreams by name, built once (looked up twice per proxied request)."""
        return {u.name: u for u in self.upstreams}

    def callback_uri(self, name: str) -> str:
        """The redirect URI registered at the AS under `callback: sidecar` (design.md §3.6)."""
        return f"{self.public_base}/{name}/callback"

    def sidecar_issuer(self, name: str) -> str:
        """The issuer served to the app under `app_issuer: sidecar`."""
        return f"{self.backchannel_base}/{name}"

    def registered_redirect_uris(self, upstream: Upstream) -> list[str]:
        """What registration sends: the sidecar's callback when it mediates, else the app's."""
        if upstream.callback == "app":
            return list(upstream.redirect_uris)
        return [self.callback_uri(upstream.name)] if upstream.response_types else []


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---------------------------------------------------------------------------- loading

# libyaml's safe loader (shipped in PyYAML's wheels) parses a large config 5x faster; the
# pure-Python one is the fallback. Both are safe loaders (no arbitrary objects).
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_VAR_RE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``${VAR:-fallback}``; ``$${`` stays a literal ``${``.

    As in the shell, the fallback also replaces a variable that is set but empty.
    """

    def sub(match: re.Match[str]) -> str:
        name, fallback = match.groups()
        if name is None:  # the $${ escape
            return "${"
        value = env.get(name)
        if value is not None and (value or fallback is None):
            return value
        if fallback is not None:
            return fallback
        raise KeyError(name)

    return _VAR_RE.sub(sub, text)


def _expand_tree(node: Any, env: Mapping[str, str], path: tuple[str | int, ...]) -> Any:
    if isinstance(node, str):
        try:
            return expand_vars(node, env)
        except KeyError as exc:
            raise _PathError(
                path,
                f"environment variable {exc.args[0]} is not set "
                "(write ${VAR:-default} for a fallback)",
                None,
            ) from None
    if isinstance(node, dict):
        return {k: _expand_tree(v, env, (*path, str(k))) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_tree(v, env, (*path, i)) for i, v in enumerate(node)]
    return node


class _PathError(Exception):
    def __init__(self, path: Sequence[str | int], message: str, value: Any) -> None:
        super().__init__(message)
        self.path = tuple(path)
        self.message = message
        self.value = value


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _shown(path: Sequence[str | int], value: Any) -> str:
    if any(isinstance(p, str) and p in SECRET_KEYS for p in path):
        return MASK
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


def _errors_of(exc: ValidationError, raw: Any) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = [
            p
            for p in err["loc"]
            if not (isinstance(p, str) and p.startswith(("function-", "union[")))
        ]
        # pydantic names union members in loc ("str", "EnvSecret"...): keep YAML keys only.
        path = _yaml_path(raw, loc)
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        keyed = re.match(r"<<([^>]+)>>(.*)", msg, re.DOTALL)
        if keyed:
            path, value = _extend(raw, path, keyed.group(1))
            msg = keyed.group(2)
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{format_path(path)}: {msg} (got {_shown(path, value)})")
    return lines


def _extend(raw: Any, path: list[str | int], key: str) -> tuple[list[str | int], Any]:
    """Append a dotted/indexed key (``upstreams[0].issuer`` or ``issuer``) to `path`."""
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", key)]
    full = parts if key.startswith("upstreams[") else [*path, *parts]
    node = raw
    for part in full:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return full, node


def _yaml_path(raw: Any, loc: Sequence[Any]) -> list[str | int]:
    """Keep only the parts of a pydantic location that exist in the YAML document."""
    path: list[str | int] = []
    node = raw
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            node = node[part]
            path.append(part)
        elif (
            isinstance(node, dict)
            and isinstance(part, str)
            and part not in node
            and (not path or part.isidentifier())
            and part == loc[-1]
        ):
            path.append(part)
    return path


def parse_settings(text: str, source: str, env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate YAML text; raise ConfigError naming `source`, the path and the value."""
    try:
        raw = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(
            f"{source}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with version: 1")
    environ = os.environ if env is None else env
    try:
        expanded = _expand_tree(raw, environ, ())
    except _PathError as exc:
        raise ConfigError(f"{source}: {format_path(exc.path)}: {exc.message}") from None
    try:
        return Settings.model_validate(expanded, context={"env": environ})
    except ValidationError as exc:
        lines = _errors_of(exc, expanded)
        head = f"{source}: invalid configuration ({len(lines)} error{'s' * (len(lines) > 1)})"
        raise ConfigError("\n".join([head, *(f"  {source}: {line}" for line in lines)])) from None


def config_path(explicit: str | None) -> str:
    return explicit or os.environ.get("DCR_SIDECAR_CONFIG") or DEFAULT_CONFIG_PATH


def load_settings(path: str) -> Settings:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    return parse_settings(text, path)


def json_schema() -> dict[str, Any]:
    schema = Settings.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dcr-sidecar configuration (version 1)"
    return schema
