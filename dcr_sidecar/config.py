"""YAML configuration (version 1) -> validated, frozen settings.

Invariants:
- Unknown keys are errors; every error names the file, the YAML path and the offending value
  (secret values are never echoed), with a hint when there is one ("did you mean ...").
- One pass reports every error: a missing ``${VAR}`` is one error among the rest, a field error
  does not hide the cross-key checks of the keys that did validate, and each model's cross-key
  checks (``_problems``) yield all they find. Paths travel as data (:class:`Problem` in the
  pydantic error's context), never parsed back from a message.
- ``${VAR}`` in string scalars is expanded after parsing; ``$${`` is a literal ``${``.
- Secret fields accept a string, ``{env: NAME[, optional: true]}`` or ``{file: PATH}``. They are
  resolved at load time into :class:`Secret`, except ``initial_access_token`` given as ``{file:}``,
  which is re-read on every use (rotated or single-use tokens).
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from dcr_sidecar.errors import ConfigError
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth.metadata import URL_MEMBERS, unsafe_url_character
from dcr_sidecar.oauth.redirect_uri import parse_redirect_uri
from dcr_sidecar.oauth.secret import MASK, Secret

DEFAULT_CONFIG_PATH = "./config/sidecar.yaml"
RESERVED_NAMES = frozenset({"healthz", "readyz", "metrics", "admin", "well-known"})
# An upstream's name: its route prefix (app.py, management.py) and its label everywhere.
NAME_PATTERN = r"[a-z0-9][a-z0-9-]{0,62}"
NAME_RE = re.compile(f"^{NAME_PATTERN}$")
SECRET_KEYS = frozenset(
    {
        "client_secret",
        "initial_access_token",
        "software_statement",
        "token",
        "url",
        "encryption_keys",
        "password",
        "proxy",
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
# Keys only registration reads: on a static client they do nothing (why, for the error).
DCR_ONLY = {
    "token_endpoint_auth_methods": "it ranks the methods to register with",
    "initial_access_token": "it authorizes a registration request (RFC 7591 §3)",
    "registration_endpoint": "it is where the sidecar registers",
    "software_statement": "it is sent in the registration request (RFC 7591 §2.3)",
    "client_metadata": "it is sent in the registration request",
    "client_profile": "it chooses what kind of client to register",
    "application_type": "it is sent in the registration request",
    "generation_grace": "it keeps a replaced registration usable; a static client has one",
}
AuthMethod = Literal["client_secret_basic", "client_secret_post", "none", "private_key_jwt"]
DEFAULT_AUTH_METHODS: tuple[AuthMethod, ...] = ("client_secret_basic", "client_secret_post", "none")
ENDPOINT_URL_FIELDS = URL_MEMBERS  # one list of URL members (oauth/metadata.py)


YamlPath = tuple[str | int, ...]
PROBLEMS = "config_problems"  # the pydantic error type that carries a list of Problem


@dataclass(frozen=True)
class Problem:
    """One configuration error found by a model: `path` is relative to that model.

    `involves` names the other keys of the model a cross-key check read: when one of them has
    its own error, the check ran on a default in its place and its verdict is dropped.
    """

    path: YamlPath
    message: str
    hint: str | None = None
    involves: tuple[str, ...] = ()


def _problems_error(problems: Sequence[Problem]) -> PydanticCustomError:
    return PydanticCustomError(
        PROBLEMS, "{count} configuration error(s)",
        {"count": len(problems), "problems": tuple(problems)},
    )


class _Model(BaseModel):
    """Frozen, no unknown keys; validation collects every error of the subtree (see module)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="wrap")
    @classmethod
    def _all_errors(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            model = handler(data)
        except ValidationError as exc:
            found = [p for err in exc.errors() for p in _problems_of(cls, err, data)]
            found += _partial_problems(data, handler, found)
            raise _problems_error(found) from None
        problems = list(model._problems())
        if problems:
            raise _problems_error(problems)
        return model

    def _problems(self) -> Iterator[Problem]:
        """Cross-key checks of a model whose keys validated (override; yield every problem)."""
        return iter(())


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


class FrontTls(_Model):
    """PEM files for the front listener; re-read when they change (a Secret rotation)."""

    cert_file: str
    key_file: str

    def _problems(self) -> Iterator[Problem]:
        for key in ("cert_file", "key_file"):
            if not Path(getattr(self, key)).is_file():
                yield Problem((key,), "is not a readable file",
                              "mount the TLS Secret there (PEM), or remove front.tls")


class Front(_Model):
    """The browser-facing listener (design.md §2.2, §3.11)."""

    host: str = "127.0.0.1"
    port: Port = 8081
    tls: FrontTls | None = None


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
    # Callback-mediation records in progress (design.md §3.6): refused beyond, never evicted.
    flow_records: Annotated[int, Field(ge=1)] = 100_000
    flow_record_bytes: Annotated[int, Field(ge=65536)] = 32 * 1024 * 1024
    flow_records_per_client: Annotated[int, Field(ge=0)] = 1_000  # per client address; 0: off


class Timeouts(_Model):
    connect: PositiveFloat = 5
    read: PositiveFloat = 10
    total: PositiveFloat = 15
    # Inbound, on every listener (listeners.py): a request's header, then its body.
    client_header: PositiveFloat = 5
    client_body: PositiveFloat = 10


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

    def _problems(self) -> Iterator[Problem]:
        if self.backend == "redis":
            if self.url is None:
                yield Problem(("url",), "backend: redis needs url",
                              "add url: redis://, rediss:// or redis+sentinel://",
                              involves=("backend",))
                return
            from dcr_sidecar.store.redis_url import parse_redis_url

            try:
                parse_redis_url(self.url.reveal())
            except ValueError as exc:
                yield Problem(("url",), str(exc))
        elif self.url is not None:
            yield Problem(("url",), f"is for backend: redis (backend is {self.backend})",
                          "remove url, or set backend: redis", involves=("backend",))
        if self.backend == "memory" and self.encryption_keys:
            yield Problem(("encryption_keys",), "encrypt stored records; the memory store keeps "
                          "nothing at rest", "remove encryption_keys", involves=("backend",))


IpNetwork = Annotated[
    ipaddress.IPv4Network | ipaddress.IPv6Network,
    BeforeValidator(lambda v: ipaddress.ip_network(v, strict=False) if isinstance(v, str) else v),
]


class Tls(_Model):
    """Trust anchors for outbound TLS (design.md §3.8); verification itself is never optional."""

    ca_file: str | None = None
    ca_dir: str | None = None
    system: bool = True

    def _problems(self) -> Iterator[Problem]:
        if self.ca_file is None and self.ca_dir is None:
            if not self.system:
                yield Problem(("system",), "false needs ca_file or ca_dir (else nothing is "
                              "trusted)", "add ca_file: /path/to/ca.pem, or system: true")
            return
        from dcr_sidecar.tls import AnchorError, build_context

        try:
            build_context(self)
        except AnchorError as exc:
            yield Problem((exc.key,), exc.message)


class Security(_Model):
    allow_private_networks: list[IpNetwork] = Field(default_factory=list)
    # Also exempt for server-supplied authorities (an AS that a resource names on an internal
    # network, design.md §3.8); cloud metadata addresses stay blocked.
    allow_private_networks_server_supplied: list[IpNetwork] = Field(default_factory=list)
    allow_http: list[str] = Field(default_factory=list)
    tls: Tls = Tls()

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


class ProxyAuth(_Model):
    """Credentials for the egress proxy (Proxy-Authorization: Basic), sent only to the proxy."""

    username: str
    password: SecretField = None


NO_PROXY_RE = re.compile(r"^(\*|\.?[A-Za-z0-9_.-]+|[0-9A-Fa-f:.]+(/\d{1,3})?)$")


def _split_no_proxy(text: str) -> list[str]:
    return [entry.strip() for entry in text.split(",") if entry.strip()]


def _no_proxy_entry(entry: Any) -> Any:
    """The forms NO_PROXY lists carry, reduced to the ones :meth:`Egress.bypasses` knows:
    ``*.corp.example`` is ``.corp.example``; ``host:port`` is ``host`` (every port)."""
    if not isinstance(entry, str):
        return entry
    entry = entry.strip()
    if entry.startswith("*.") and len(entry) > 2:
        entry = entry[1:]
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        entry = host
    return entry


class Egress(_Model):
    """An HTTP CONNECT proxy for outbound OAuth traffic (design.md §3.8): https is tunnelled
    end to end to the address the sidecar resolved and checked itself."""

    proxy: str | None = None
    no_proxy: list[str] = Field(default_factory=list)
    proxy_auth: ProxyAuth | None = None
    from_environment: bool = False

    @field_validator("no_proxy", mode="before")
    @classmethod
    def _no_proxy(cls, value: Any) -> Any:
        return [_no_proxy_entry(e) for e in value] if isinstance(value, list) else value

    @model_validator(mode="before")
    @classmethod
    def _from_environment(cls, data: Any, info: ValidationInfo) -> Any:
        """`from_environment: true` reads HTTPS_PROXY / NO_PROXY (either case) now, into the
        same fields; credentials in the variable's userinfo become proxy_auth."""
        if not isinstance(data, Mapping) or data.get("from_environment") is not True:
            return data
        clash = [key for key in ("proxy", "no_proxy", "proxy_auth") if key in data]
        if clash:
            raise ValueError(f"from_environment: true takes {', '.join(clash)} from the "
                             "environment (HTTPS_PROXY, NO_PROXY): remove them, or remove "
                             "from_environment")
        env = _environ(info)
        url = env.get("HTTPS_PROXY") or env.get("https_proxy") or None
        no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
        derived: dict[str, Any] = {**data, "no_proxy": _split_no_proxy(no_proxy)}
        if url:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.username is not None:
                derived["proxy_auth"] = {"username": parts.username,
                                         "password": Secret(parts.password or "")}
                parts = parts._replace(netloc=parts.netloc.rsplit("@", 1)[1])
            derived["proxy"] = parts.geturl()
        return derived

    def _problems(self) -> Iterator[Problem]:
        if self.proxy is not None:
            yield from self._check_proxy(self.proxy)
        for index, entry in enumerate(self.no_proxy):
            if not NO_PROXY_RE.fullmatch(entry):
                yield Problem(("no_proxy", index), f"{entry!r} is not a host name, a .domain, "
                              "an IP address, a CIDR or *", "for example .corp.test")
        if self.proxy is None and self.proxy_auth is not None:
            yield Problem(("proxy_auth",), "is for egress.proxy, which is not set",
                          "set proxy: http://proxy.example:3128")

    def _check_proxy(self, url: str) -> Iterator[Problem]:
        where = ("from_environment",) if self.from_environment else ("proxy",)
        shown = "HTTPS_PROXY: " if self.from_environment else ""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            parts, port = urlsplit(""), None
        if parts.username is not None or parts.password is not None:  # before any echo
            yield Problem(where, "must not carry credentials in the URL",
                          "put them in egress.proxy_auth (the password is a secret)")
        elif parts.scheme != "http" or not parts.hostname or port is None:
            yield Problem(where, f"{shown}{url!r} must be http://HOST:PORT (an HTTP CONNECT "
                          "proxy; https traffic is tunnelled through it end to end)",
                          "for example http://proxy.corp.example:3128")
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            yield Problem(where, f"{shown}{url!r} must have no path, query or fragment")

    def proxy_authority(self) -> tuple[str, str, int] | None:
        """(scheme, host, port) of the proxy as the address policy names it."""
        if self.proxy is None:
            return None
        parts = urlsplit(self.proxy)
        assert parts.hostname is not None
        assert parts.port is not None
        return "http", parts.hostname.lower(), parts.port

    def bypasses(self, host: str) -> bool:
        """Whether `host` (lower-case, as dialled) is reached directly (``no_proxy``):
        ``*``, the host itself, a parent domain (``corp.test`` or ``.corp.test``), or an IP
        literal within an address or CIDR entry. Names are never resolved to decide."""
        for given in self.no_proxy:
            entry = given.lower()
            if entry == "*" or host == entry.lstrip(".") or host.endswith(
                    "." + entry.lstrip(".")):
                return True
            try:
                if ipaddress.ip_address(host.strip("[]")) in ipaddress.ip_network(
                        entry, strict=False):
                    return True
            except ValueError:
                continue
        return False


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


SigningAlg = Literal["ES256", "PS256", "RS256"]


class ClientKeyFile(_Model):
    """A static client's private key for private_key_jwt: PEM (PKCS#8 / SEC1 / PKCS#1) or a
    private JWK; re-read when the file changes. `kid` and `alg` override the JWK's own (else
    the RFC 7638 thumbprint, and ES256 for P-256 keys, RS256 for RSA keys)."""

    file: str
    kid: str | None = None
    alg: SigningAlg | None = None

    def _problems(self) -> Iterator[Problem]:
        from dcr_sidecar.client_keys import KeyFileError, load_key_file

        try:
            load_key_file(self.file, kid=self.kid, alg=self.alg)
        except KeyFileError as exc:
            yield Problem(("file",), str(exc), exc.hint)


class ClientAssertionFile(_Model):
    """A ready-made client assertion (RFC 7523 §2.2), e.g. a projected service-account token:
    re-read when the file changes, never sent at or past its `exp`."""

    file: str

    def _problems(self) -> Iterator[Problem]:
        if not Path(self.file).is_file():
            yield Problem(("file",), f"client assertion file {self.file!r} does not exist",
                          "mount the token (a projected service-account token volume)")


class Cimd(_Model):
    """Client ID Metadata Documents (design.md §3.11)."""

    auth_method: Literal["private_key_jwt", "none"] = "private_key_jwt"
    max_age: Annotated[int, Field(ge=0, le=86400)] = 300
    key_overlap: Annotated[float, Field(ge=1)] | None = None  # whole-second schedule
    key_rotation: Annotated[float, Field(gt=0)] | None = None
    document_url: str | None = None
    jwks_url: str | None = None

    @field_validator("document_url", "jwks_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme != "https" or not parts.hostname or parts.fragment \
                    or parts.username is not None or parts.password is not None:
                raise ValueError("must be an https URL without userinfo or fragment "
                                 "(the CIMD draft's client_id rules)")
        return value

    @property
    def overlap(self) -> float:
        """How long a new key is published before it signs, and an old one after it stops."""
        return self.key_overlap if self.key_overlap is not None else max(1.0, 2.0 * self.max_age)

    def _problems(self) -> Iterator[Problem]:
        if self.key_rotation is not None and self.key_rotation <= 2 * self.overlap:
            yield Problem(("key_rotation",), f"must exceed twice key_overlap "
                          f"({2 * self.overlap:g} s): a rotation ends only after two overlaps",
                          "raise key_rotation or lower key_overlap / max_age",
                          involves=("key_overlap", "max_age"))


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
    cimd: Cimd = Cimd()
    client_id: str | None = None
    client_secret: SecretField = None
    token_endpoint_auth_method: AuthMethod | None = None
    client_key: ClientKeyFile | None = None
    client_assertion: ClientAssertionFile | None = None
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
            raise ValueError(f"must match ^{NAME_PATTERN}$")
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
        for uri in value:  # what a browser navigates to, as written (design.md §3.6)
            try:
                parse_redirect_uri(uri)
            except ProtocolError as exc:
                raise ValueError(f"{uri!r} {exc.reason}") from None
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

    def _problems(self) -> Iterator[Problem]:
        yield from self._check_source()
        yield from self._check_registration()
        yield from self._check_flow()

    def _check_source(self) -> Iterator[Problem]:
        given = [k for k in ("discovery_url", "resource", "endpoints") if getattr(self, k)]
        if len(given) > 1:
            yield Problem((given[1],), f"give exactly one source, not {' and '.join(given)}",
                          f"keep one of {', '.join(given)}", involves=tuple(given))
        if not given and not self.issuer:
            yield Problem((), "one source is required: issuer, discovery_url, resource or "
                          "endpoints", "add issuer: https://your-as.example (the AS's issuer)",
                          involves=("issuer", "discovery_url", "resource", "endpoints"))
        if self.endpoints is not None and not self.issuer:
            yield Problem(("endpoints",), "needs issuer beside it (the issuer the AS uses)",
                          "add issuer:", involves=("issuer",))
        if self.resource is not None and urlsplit(self.resource).fragment:
            yield Problem(("resource",), "must not have a fragment (RFC 8707 §2)")
        if self.resource is None:
            for key, default in (("resource_metadata", None), ("resource_probe", "get")):
                if getattr(self, key) != default:
                    yield Problem((key,), "needs resource beside it",
                                  f"remove {key}, or use a resource source",
                                  involves=("resource",))

    def _check_registration(self) -> Iterator[Problem]:
        deciding = ("registration", "client_id")
        if self.strategy == "static":
            yield from self._check_static(deciding)
            return
        why = (f"registration: {self.registration}" if self.registration != "auto"
               else "no client_id, so DCR or CIMD")
        for key in ("client_id", "client_secret", "token_endpoint_auth_method", "client_key",
                    "client_assertion"):
            if getattr(self, key) is None:
                continue
            hint = ("add client_id: to use a static client, or remove client_secret to "
                    "register by DCR" if key == "client_secret" and self.registration != "dcr"
                    else f"remove {key} (the sidecar registers its own client)")
            yield Problem((key,), f"is for static clients only ({why})", hint,
                          involves=deciding)
        if not self.token_endpoint_auth_methods:
            yield Problem(("token_endpoint_auth_methods",), "must not be empty",
                          f"for example {list(DEFAULT_AUTH_METHODS)}")

    def _check_static(self, deciding: tuple[str, ...]) -> Iterator[Problem]:
        if not self.client_id:
            yield Problem(("client_id",), "registration: static needs client_id",
                          "add client_id: (the id the AS issued), or use registration: dcr",
                          involves=deciding)
        if self.static_auth_method == "private_key_jwt":
            yield from self._check_static_keys()
        elif self.static_auth_method.startswith("client_secret") and not self.client_secret:
            yield Problem(("client_secret",), f"token_endpoint_auth_method "
                          f"{self.static_auth_method} needs client_secret",
                          "add client_secret: {env: NAME}",
                          involves=("token_endpoint_auth_method",))
        for key in sorted(self.model_fields_set & DCR_ONLY.keys()):
            yield Problem((key,), f"does nothing for a static client: {DCR_ONLY[key]}",
                          f"remove {key}, or remove client_id to register by DCR",
                          involves=deciding)
        if self.static_auth_method != "private_key_jwt":
            for key in ("client_key", "client_assertion", "assertion_audience"):
                if key in self.model_fields_set:
                    yield Problem((key,), f"is for private_key_jwt (token_endpoint_auth_method "
                                  f"is {self.static_auth_method})", f"remove {key}",
                                  involves=("token_endpoint_auth_method",))

    def _check_static_keys(self) -> Iterator[Problem]:
        """private_key_jwt for a static client: exactly one of client_key, client_assertion."""
        given = [k for k in ("client_key", "client_assertion") if getattr(self, k) is not None]
        if len(given) > 1:
            yield Problem(("client_assertion",), "give client_key or client_assertion, not both",
                          "keep one of them", involves=("client_key",))
        if not given:
            yield Problem(("token_endpoint_auth_method",), "private_key_jwt needs client_key "
                          "(a private key file) or client_assertion (an assertion file)",
                          "add client_key: {file: /path/to/key.pem}")
        if self.client_secret is not None:
            yield Problem(("client_secret",), "is not used with private_key_jwt",
                          "remove client_secret", involves=("token_endpoint_auth_method",))

    def _check_flow(self) -> Iterator[Problem]:
        """design.md §2.2: the combinations of callback, app_issuer and pkce."""
        for key in ("app_issuer", "pkce"):
            if getattr(self, key) == "sidecar" and self.callback != "sidecar":
                yield Problem((key,), "sidecar needs callback: sidecar (the sidecar must see "
                              "the authorization response)", "add callback: sidecar",
                              involves=("callback",))
        if self.app_issuer == "sidecar" and "openid" in self.scopes:
            yield Problem(("app_issuer",), "sidecar cannot be used with the openid scope: ID "
                          "tokens carry the AS's issuer, which must equal the one the app "
                          "discovered (OIDC Core §3.1.3.7)", "use app_issuer: upstream for "
                          "OIDC apps", involves=("scopes",))
        if "authorization_code" in self.grant_types and not self.redirect_uris:
            role = "are the app-side allow-list" if self.callback == "sidecar" else "are registered"
            yield Problem(
                ("redirect_uris",),
                "must list the app's redirect URIs when grant_types has authorization_code "
                f"(they {role})", "add redirect_uris: [https://your-app.example/callback]",
                involves=("grant_types", "callback"),
            )

    @property
    def strategy(self) -> Literal["static", "dcr", "cimd"]:
        """The configured way: `auto` is static with a client_id, else dynamic ("dcr"), where
        the resolver may still pick CIMD (see :attr:`cimd_possible`)."""
        if self.registration == "auto":
            return "static" if self.client_id else "dcr"
        return self.registration

    @property
    def cimd_possible(self) -> bool:  # see also Settings.publishes_cimd
        """Does the sidecar publish a CIMD document for this upstream (design.md §3.11)?"""
        return self.registration == "cimd" or (self.registration == "auto"
                                               and not self.client_id)

    @property
    def static_auth_method(self) -> str:
        if self.token_endpoint_auth_method:
            return self.token_endpoint_auth_method
        if self.client_key is not None or self.client_assertion is not None:
            return "private_key_jwt"
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
    front: Front | None = None
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
    egress: Egress = Egress()
    admin: Admin = Admin()
    upstreams: list[Upstream] = Field(default_factory=list)

    def _problems(self) -> Iterator[Problem]:
        names = [u.name for u in self.upstreams]
        for index, name in enumerate(names):
            if name in names[:index]:
                yield Problem(("upstreams", index, "name"), "upstream names must be unique: "
                              f"already used by upstreams[{names.index(name)}]",
                              "rename one of them (the name is the route prefix)")
        if (
            not _is_loopback_host(self.listen.host)
            and self.inbound.client_secret is None
            and not self.inbound.allow_unauthenticated
        ):
            yield Problem(
                ("listen", "host"),
                f"host {self.listen.host!r} is not loopback and inbound.client_secret is "
                "not set: anyone who can reach the back channel could spend the app's "
                "credentials", "set inbound.client_secret, or inbound.allow_unauthenticated: true",
                involves=("inbound",),
            )
        if self.front and not _is_loopback_host(self.front.host) and not self.public_base_url:
            yield Problem(("front",), "host is not loopback",
                          "set public_base_url to the address browsers use",
                          involves=("public_base_url",))
        for key in ("public_base_url", "backchannel_base_url"):
            base = getattr(self, key)
            if base is not None and (
                urlsplit(base).scheme not in ("http", "https") or urlsplit(base).query
            ):
                yield Problem((key,), "must be an http(s) URL without query")
        for index, upstream in enumerate(self.upstreams):
            yield from self._check_urls(index, upstream)
            yield from self._check_cimd(index, upstream)
            if upstream.callback == "sidecar" and self.public_base_url:
                yield from self._check_callback_uri(upstream.name)

    def _check_callback_uri(self, name: str) -> Iterator[Problem]:
        """The sidecar's own redirect URI as a browser would navigate to it (the default one,
        from the listen address, is built so)."""
        uri = self.callback_uri(name)
        try:
            parse_redirect_uri(uri)
        except ProtocolError as exc:
            yield Problem(("public_base_url",), f"makes the callback redirect URI {uri!r}, which "
                          f"{exc.reason}", "write it as a browser would (lower-case host, "
                          "no default port, no userinfo)")

    def _check_cimd(self, index: int, upstream: Upstream) -> Iterator[Problem]:
        """`registration: cimd` needs a document URL the draft allows as a client_id."""
        from dcr_sidecar.oauth.cimd import valid_client_id_url

        url = self.cimd_document_url(upstream)
        if upstream.registration == "cimd" and not valid_client_id_url(url):
            yield Problem(("upstreams", index, "registration"),
                          f"cimd needs an https document URL (the client_id); {url!r} is not one",
                          "set public_base_url to the https address browsers and the AS use "
                          "(or front.tls, or upstreams[].cimd.document_url)",
                          involves=("public_base_url", "front"))

    def _check_urls(self, index: int, upstream: Upstream) -> Iterator[Problem]:
        """https only, except `security.allow_http` hosts (design.md §3.8); no query or fragment."""
        for key in ("issuer", "discovery_url", "resource", "resource_metadata",
                    "registration_endpoint"):
            url = getattr(upstream, key)
            if url is not None:
                yield from self._check_url(url, ("upstreams", index, key), issuer=key == "issuer")
        if upstream.endpoints is not None:
            for key, url in upstream.endpoints.model_dump().items():
                if key in ENDPOINT_URL_FIELDS and isinstance(url, str):
                    yield from self._check_url(url, ("upstreams", index, "endpoints", key),
                                               issuer=False)

    def _check_url(self, url: str, path: YamlPath, *, issuer: bool) -> Iterator[Problem]:
        unsafe = unsafe_url_character(url)
        if unsafe is not None:  # the rule discovered metadata follows (design.md §3.1)
            yield Problem(path, f"holds the character {unsafe}, which no URL may contain")
            return
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            yield Problem(path, "must be an absolute https URL")
        elif parts.scheme == "http" and parts.hostname not in self.security.allow_http:
            yield Problem(path, "must use https",
                          f"or list {parts.hostname!r} in security.allow_http",
                          involves=("security",))
        if parts.fragment or (issuer and parts.query):
            yield Problem(
                path, "must not have a query or fragment" if issuer else "must not have a fragment"
            )

    @property
    def public_base(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        if self.front is not None:
            scheme = "https" if self.front.tls is not None else "http"
            return _origin(scheme, _url_host(self.front.host), self.front.port)
        return _origin("http", "127.0.0.1", self.listen.port)

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

    def cimd_document_url(self, upstream: Upstream) -> str:
        """The CIMD client_id: where the document is published (design.md §3.11)."""
        default = f"{self.public_base}/{upstream.name}/client-metadata.json"
        return upstream.cimd.document_url or default

    def publishes_cimd(self, upstream: Upstream) -> bool:
        """The upstream may be a CIMD client: `registration: cimd`, or `auto` without a
        client_id whose document URL is https (design.md §3.11)."""
        from dcr_sidecar.oauth.cimd import valid_client_id_url

        return upstream.cimd_possible and valid_client_id_url(self.cimd_document_url(upstream))

    def cimd_jwks_url(self, upstream: Upstream) -> str:
        return upstream.cimd.jwks_url or f"{self.public_base}/{upstream.name}/jwks.json"

    def sidecar_issuer(self, name: str) -> str:
        """The issuer served to the app under `app_issuer: sidecar`."""
        return f"{self.backchannel_base}/{name}"

    def registered_redirect_uris(self, upstream: Upstream) -> list[str]:
        """What registration sends: the sidecar's callback when it mediates, else the app's."""
        if upstream.callback == "app":
            return list(upstream.redirect_uris)
        return [self.callback_uri(upstream.name)] if upstream.response_types else []


def _origin(scheme: str, host: str, port: int) -> str:
    """As a browser writes it: without the scheme's default port (WHATWG URL)."""
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}" + (f":{port}" if port != default else "")


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


def _missing_vars(text: str, env: Mapping[str, str]) -> list[str]:
    """The ``${VAR}`` names in `text` that are unset and have no fallback."""
    return [
        m.group(1) for m in _VAR_RE.finditer(text)
        if m.group(1) is not None and m.group(2) is None and env.get(m.group(1)) is None
    ]


def _expand_tree(node: Any, env: Mapping[str, str], path: YamlPath,
                 missing: list[Problem]) -> Any:
    """Expand every string; a missing variable is recorded and its string kept as written."""
    if isinstance(node, str):
        try:
            return expand_vars(node, env)
        except KeyError:
            names = _missing_vars(node, env)
            missing.append(Problem(
                path, f"environment variable {', '.join(names)} is not set",
                f"export {names[0]}=..., or write ${{{names[0]}:-default}} for a fallback"))
            return node
    if isinstance(node, dict):
        return {k: _expand_tree(v, env, (*path, str(k)), missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_tree(v, env, (*path, i), missing) for i, v in enumerate(node)]
    return node


def format_path(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _shown(path: Sequence[str | int], value: Any) -> str:
    if value is _ABSENT:
        return "null"
    if any(isinstance(p, str) and p in SECRET_KEYS for p in path):
        return MASK
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


# ------------------------------------------------------- pydantic errors -> Problem

_ABSENT: Any = object()
# A hint per pydantic error type (prefix match), for errors raised by pydantic itself.
_TYPE_HINTS = (
    ("missing", "this key is required here; add it"),
    ("int_", "write a whole number, e.g. 8080"),
    ("float_", "write a number, e.g. 5 or 0.5"),
    ("bool_", "write true or false"),
    ("string_type", "write a string (quote it if YAML reads it as a number or a date)"),
    ("list_type", "write a YAML list, e.g. [a, b] or one '- item' per line"),
    ("model_type", "write a mapping of keys under it"),
    ("dict_type", "write a mapping of keys under it"),
    ("model_attributes_type", "write a mapping of keys under it"),
    ("literal_error", "use one of the values listed"),
    ("greater_than", "use a larger value"),
    ("less_than", "use a smaller value"),
)
_MESSAGES = {"missing": "required key is missing", "extra_forbidden": "unknown key"}


def _problems_of(model: type[BaseModel], err: Any, data: Any) -> list[Problem]:
    """Translate one pydantic error raised while validating `model` from `data`."""
    path = _yaml_path(data, err["loc"])
    ctx = err.get("ctx") or {}
    if err["type"] == PROBLEMS:  # a nested model's errors: prefix their relative paths
        return [replace(p, path=(*path, *p.path)) for p in ctx["problems"]]
    cause = ctx.get("error")
    # A field validator's ValueError: its text is the message (pydantic's "Value error, "
    # rendering is not parsed); the key is the error's location.
    message = _MESSAGES.get(err["type"]) or (str(cause) if isinstance(cause, ValueError)
                                             else err["msg"])
    return [Problem(tuple(path), message, _hint(model, err["type"], path, data))]


def _hint(model: type[BaseModel], kind: str, path: Sequence[str | int], data: Any) -> str | None:
    if kind == "extra_forbidden":
        if len(path) != 1 or not isinstance(path[0], str):
            return None
        known = list(model.model_fields)
        close = difflib.get_close_matches(path[0], known, n=1, cutoff=0.6)
        if close:
            return f"did you mean {close[0]}?"
        return f"the keys here are: {', '.join(known)}"
    return next((hint for prefix, hint in _TYPE_HINTS if kind.startswith(prefix)), None)


def _partial_problems(data: Any, handler: Any, found: Sequence[Problem]) -> list[Problem]:
    """Cross-key checks on what did validate: drop the keys (and list items) with errors, validate
    the rest, and keep the problems that involve no dropped key (indexes mapped back)."""
    if not isinstance(data, dict):
        return []
    bad: set[Any] = set()
    bad_items: dict[str, set[int]] = {}
    for problem in found:
        if not problem.path:
            return []  # the model as a whole is wrong: nothing to check beside it
        key, rest = problem.path[0], problem.path[1:]
        if rest and isinstance(rest[0], int) and isinstance(data.get(key), list):
            bad_items.setdefault(str(key), set()).add(rest[0])
        else:
            bad.add(key)
    kept = {key: [i for i in range(len(data[key])) if i not in items]
            for key, items in bad_items.items()}
    trimmed = {k: v for k, v in data.items() if k not in bad}
    trimmed.update({key: [data[key][i] for i in idx] for key, idx in kept.items()})
    try:
        partial = handler(trimmed)
    except ValidationError:
        return []
    out = []
    for problem in partial._problems():
        path = problem.path
        if bad & {path[0] if path else None, *problem.involves}:
            continue
        if path and path[0] in kept and len(path) > 1 and isinstance(path[1], int):
            path = (path[0], kept[str(path[0])][path[1]], *path[2:])
        out.append(replace(problem, path=path))
    return out


def _yaml_path(raw: Any, loc: Sequence[Any]) -> YamlPath:
    """Keep only the parts of a pydantic location that exist in the YAML document (pydantic
    names union members and validator functions in it), plus a final missing/unknown key."""
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
    return tuple(path)


def _value_at(raw: Any, path: Sequence[str | int]) -> Any:
    node = raw
    for part in path:
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if not (in_list or (isinstance(node, dict) and part in node)):
            return _ABSENT
        node = node[part]
    return node


def _document_order(raw: Any, path: YamlPath) -> tuple[int, ...]:
    """Where `path` sits in the file (a key that is absent sorts after its siblings)."""
    order, node = [], raw
    for part in path:
        if isinstance(node, dict) and part in node:
            order.append(list(node).index(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            order.append(part)
            node = node[part]
        else:
            order.append(1 << 30)
            node = None
    return tuple(order)


def _under(path: YamlPath, prefix: YamlPath) -> bool:
    return path[: len(prefix)] == prefix


def _problems_in(exc: ValidationError, raw: Any) -> list[Problem]:
    return [p for err in exc.errors() for p in _problems_of(Settings, err, raw)]


def validation_messages(exc: ValidationError, raw: Any) -> list[str]:
    """Each error of a whole-settings validation as ``path: message — hint``."""
    return [
        f"{format_path(p.path)}: {p.message}" + (f" — {p.hint}" if p.hint else "")
        for p in _problems_in(exc, raw)
    ]


def format_problem(source: str, problem: Problem, raw: Any) -> str:
    """``file: path: message (got value) — hint``."""
    value = _shown(problem.path, _value_at(raw, problem.path))
    hint = f" — {problem.hint}" if problem.hint else ""
    return f"{source}: {format_path(problem.path)}: {problem.message} (got {value}){hint}"


def parse_settings(text: str, source: str, env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate YAML text; raise ConfigError listing every error, each naming
    `source`, the path, the value and a hint."""
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
    missing: list[Problem] = []
    expanded = _expand_tree(raw, environ, (), missing)
    try:
        settings = Settings.model_validate(expanded, context={"env": environ})
        problems: list[Problem] = []
    except ValidationError as exc:
        problems = _problems_in(exc, expanded)
    # An error at a missing variable's path is that variable's (its value is the raw ${...}).
    problems = missing + [p for p in problems if not any(_under(p.path, m.path) for m in missing)]
    if not problems:
        return settings
    problems.sort(key=lambda p: _document_order(expanded, p.path))
    lines = [format_problem(source, p, expanded) for p in problems]
    head = f"{source}: invalid configuration ({len(lines)} error{'s' * (len(lines) > 1)})"
    raise ConfigError("\n".join([head, *(f"  {line}" for line in lines)]))


def config_path(explicit: str | None) -> str:
    return explicit or os.environ.get("DCR_SIDECAR_CONFIG") or DEFAULT_CONFIG_PATH


def load_settings(path: str) -> Settings:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}") from None
    return parse_settings(text, path)


class LiveSettings:
    """The one reference to the settings in force, shared by the Sidecar, the Runtime, the
    resolver and the outbound client: a reload swaps :attr:`current` in one assignment
    (design.md §3.10), so every reader sees the old settings or the new, never a mix."""

    __slots__ = ("current",)

    def __init__(self, settings: Settings) -> None:
        self.current = settings


def json_schema() -> dict[str, Any]:
    schema = Settings.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "dcr-sidecar configuration (version 1)"
    return schema
