"""``python -m dcr_sidecar.docgen``: write docs/configuration.md from the configuration model.

Every key of :class:`dcr_sidecar.config.Settings` (nested models included, whatever they are
named) becomes a row: YAML path, type, default, an example (from config/example.yaml when it sets
the key) and what it means (the field's ``description``, else :data:`DESCRIPTIONS`). A test
(tests/test_docgen.py) fails when the file differs from what this prints, so adding a key means
running ``python -m dcr_sidecar.docgen`` (``--check`` only compares).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dcr_sidecar.config import NAME_PATTERN, EnvSecret, FileSecret, Settings
from dcr_sidecar.oauth.secret import Secret

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "configuration.md"
EXAMPLE = ROOT / "config" / "example.yaml"
COMMAND = "python -m dcr_sidecar.docgen"

# What a key means, by YAML path, for fields without a pydantic ``description``.
DESCRIPTIONS: dict[str, str] = {
    'admin': 'the admin API on the management listener; off (404) while token is null',
    'admin.token': 'the Bearer token of the admin API; null disables it',
    'backchannel_base_url': (
        'how the app reaches `listen`; the `app_issuer: sidecar` issuer is '
        '`{backchannel_base_url}/{name}`'
    ),
    'backoff': 'after a failed resolution: full jitter; `Retry-After` honoured',
    'backoff.base': 'first retry delay after a failed resolution (full jitter)',
    'backoff.cap': 'longest retry delay',
    'backoff.max_retry_after': 'longest `Retry-After` from an AS that is honoured',
    'discovery': 'metadata cache; a failed refresh keeps the stale document',
    'discovery.cache_ttl': 'longest time AS metadata is cached',
    'discovery.min_ttl': 'shortest time AS metadata is cached (also after a failed refresh)',
    'front': (
        'a browser-facing listener serving only /{name}/authorize, /{name}/callback and the '
        'public CIMD documents'
    ),
    'front.host': 'address of the front listener (not loopback: set public_base_url)',
    'front.port': 'port of the front listener',
    'front.tls': 'serve the front listener over TLS (the PEM files are re-read when they change)',
    'front.tls.cert_file': 'PEM certificate (chain) of the front listener',
    'front.tls.key_file': 'PEM private key of the front listener',
    'inbound': (
        'sidecar-local credentials the app must present on back-channel routes; required when'
        ' `listen.host` is not loopback'
    ),
    'inbound.allow_unauthenticated': 'accept unauthenticated apps on a non-loopback listen.host',
    'inbound.client_id': 'the client_id the app must present (null: any)',
    'inbound.client_secret': 'the secret the app must present on back-channel routes',
    'limits': (
        'request body (413), headers (431), AS answer caps, concurrent connections per '
        'upstream'
    ),
    'limits.connections_per_upstream': 'concurrent requests (connections) per upstream',
    'limits.flow_records': 'callback-mediation flows in progress at most; new ones get 503 '
                           'beyond (none is evicted)',
    'limits.flow_record_bytes': 'estimated memory of the flows in progress at most; new ones '
                                'get 503 beyond',
    'limits.flow_records_per_client': 'flows in progress per client address (429 beyond); 0: '
                                      'none (behind a proxy every browser has its address)',
    'limits.max_error_body_bytes': 'cap on AS error bodies during discovery/registration',
    'limits.max_header_bytes': 'request headers beyond this get 431',
    'limits.max_request_bytes': 'request bodies beyond this get 413',
    'limits.max_response_bytes': 'cap on any AS answer read by the sidecar',
    'listen': 'back channel (and front channel)',
    'listen.host': (
        'address of the back channel; keep loopback in a pod (the app shares its network)'
    ),
    'listen.port': 'port of the back channel',
    'log': '`json` or `console`; one canonical line per request',
    'log.format': '`json` (one object per line) or `console`',
    'log.level': 'the lowest level logged',
    'management': '`/healthz`, `/readyz`, `/metrics`, `/admin/...`',
    'management.host': 'address of /healthz, /readyz, /metrics and the admin API',
    'management.port': 'port of the management listener',
    'public_base_url': (
        'how the browser reaches `/{name}/authorize` and `/{name}/callback` (the callback URI'
        ' registered under `callback: sidecar` is built from it)'
    ),
    'security': 'outbound address and transport policy (docs/SECURITY.md)',
    'security.allow_http': 'hosts allowed over plain http',
    'security.allow_private_networks': (
        'CIDRs exempt from the private-address block, for configured authorities (scheme, '
        'host, port) only ([SECURITY.md](docs/SECURITY.md))'
    ),
    'security.tls': (
        'trust anchors for every outbound OAuth connection; TLS is always verified, host name '
        'included'
    ),
    'security.tls.ca_file': 'extra PEM anchors (a private CA), re-read when the file changes',
    'security.tls.ca_dir': 'every PEM file of a directory (a trust bundle), re-read on change',
    'security.tls.system': 'also trust the system store; false: only ca_file / ca_dir',
    'egress': (
        'an HTTP CONNECT proxy for outbound OAuth traffic (docs/deployment.md, "Inside a '
        'corporate network")'
    ),
    'egress.proxy': (
        '`http://HOST:PORT`: https is tunnelled end to end to the address the sidecar resolved '
        'and checked itself; plain http never crosses it'
    ),
    'egress.no_proxy': 'hosts reached directly: a name, `.domain`, an IP, a CIDR or `*`',
    'egress.proxy_auth': 'Basic credentials for the proxy, sent on the CONNECT request only',
    'egress.proxy_auth.username': 'the proxy user name',
    'egress.proxy_auth.password': 'the proxy password',
    'egress.from_environment': (
        'take proxy, no_proxy and proxy_auth from `HTTPS_PROXY` / `NO_PROXY` (either case)'
    ),
    'security.allow_private_networks_server_supplied': (
        'CIDRs exempt for server-supplied authorities too: an AS that a `resource` names on '
        'an internal network (cloud metadata addresses stay blocked)'
    ),
    'shutdown': 'after SIGTERM: keep serving `delay` s, then drain up to `grace` s',
    'shutdown.delay': (
        'after SIGTERM, seconds to keep serving before draining (a second signal skips it)'
    ),
    'shutdown.grace': 'seconds in-flight requests get to finish',
    'store': (
        'where credentials are kept: `file` (0600, atomic replace, per-key locks shared with '
        'other processes), `redis` (a fleet of replicas) or `memory`'
    ),
    'store.backend': '`file`, `redis` (a fleet of replicas) or `memory`',
    'store.encryption_keys': 'Fernet keys (secret fields), newest first: secrets in stored',
    'store.ephemeral': 'true for storage that dies with the pod (emptyDir): delete',
    'store.key_prefix': 'redis: keys {prefix}:{<upstream>:<issuer hash>}:record|lease',
    'store.lease': 'redis: lease lifetime (extended while held) and how long',
    'store.lease.ttl': 'redis: lease lifetime, extended while held',
    'store.lease.wait': 'redis: how long other replicas wait for a lease before answering 503',
    'store.path': 'file: mode 0600, atomic replace, an exclusive file lock',
    'store.url': 'redis (a secret field): redis://[[user]:pass@]host:port/db,',
    'timeouts': 'every outbound request; `client_header`/`client_body`: every listener',
    'timeouts.client_body': (
        "seconds a client may take to send a request's body after its header, on every "
        'listener (`listen`, `front`, `management`); then the connection is closed'
    ),
    'timeouts.client_header': (
        "seconds a client may take to send a request's header (from the connection's start, "
        'or the first byte of the next request on a kept-alive connection), on every listener; '
        'then the connection is closed: a slow-loris client cannot hold it'
    ),
    'timeouts.connect': 'seconds to connect to an AS',
    'timeouts.read': 'seconds without a byte from an AS',
    'timeouts.total': 'seconds for a whole outbound request',
    'upstreams': 'the authorization servers, one entry each (below)',
    'upstreams[].app_issuer': (
        "the `issuer` served to the app: the AS's, or `sidecar` = "
        '`{backchannel_base_url}/{name}` (needs `callback: sidecar`; refused with the '
        '`openid` scope)'
    ),
    'upstreams[].application_type': '`native` for loopback/custom-scheme redirects, else `web`',
    'upstreams[].assertion_audience': 'private_key_jwt `aud`: `issuer` or `token_endpoint`',
    'upstreams[].callback': (
        '`app`: the AS redirects to the app; `sidecar`: through `/{name}/callback` (see '
        'above)'
    ),
    'upstreams[].cimd': (
        'Client ID Metadata Documents: how the published client document and its keys are '
        'served'
    ),
    'upstreams[].cimd.auth_method': (
        '`private_key_jwt`: the document publishes a JWKS and the sidecar signs assertions; '
        '`none`: a public client'
    ),
    'upstreams[].cimd.max_age': (
        '`Cache-Control: max-age` of the served client document, seconds (0 to 86400)'
    ),
    'upstreams[].cimd.key_overlap': (
        'seconds a new signing key is published before it signs, and an old one after it '
        'stops; null: twice `max_age` (at least 1)'
    ),
    'upstreams[].cimd.key_rotation': (
        'rotate the signing key every this many seconds (more than twice `key_overlap`); null: '
        'only by hand'
    ),
    'upstreams[].cimd.document_url': (
        'an https URL where you publish a copy of the client document: it is then the '
        'client_id (default `{public_base_url}/{name}/client-metadata.json`)'
    ),
    'upstreams[].cimd.jwks_url': (
        'an https URL where you publish a copy of the JWKS (default '
        '`{public_base_url}/{name}/jwks.json`)'
    ),
    'upstreams[].client_assertion': (
        'static `private_key_jwt` with a ready-made JWT (a projected service-account token for '
        'workload identity), sent with `client_id`; re-read when the file changes, never sent '
        'past its `exp`'
    ),
    'upstreams[].client_assertion.file': 'the file holding the JWT',
    'upstreams[].client_id': "a static client's id (static clients only)",
    'upstreams[].client_id_file': 'file rewritten atomically (0644) with the current client_id',
    'upstreams[].client_key': (
        "static `private_key_jwt`: the client's private key (EC P-256 or RSA), signing a fresh "
        'assertion per request; re-read when the file changes'
    ),
    'upstreams[].client_key.file': 'PEM (PKCS#8, SEC1, PKCS#1) or a private JWK',
    'upstreams[].client_key.kid': "default: the JWK's, else its RFC 7638 thumbprint",
    'upstreams[].client_key.alg': "default: the JWK's, else ES256 (EC P-256) or RS256 (RSA)",
    'upstreams[].client_metadata': (
        'other RFC 7591 fields (`client_name`, `contacts`, …); keys the sidecar derives are '
        'rejected'
    ),
    'upstreams[].client_profile': '`auto`, `confidential`, `public`',
    'upstreams[].client_secret': "a static client's secret (static clients only)",
    'upstreams[].discovery_url': (
        'discover from exactly this URL (the issuer is derived unless given)'
    ),
    'upstreams[].endpoints': (
        "no discovery: the AS's endpoints given here (issuer required beside them)"
    ),
    'upstreams[].endpoints.authorization_endpoint': (
        "the AS's authorization endpoint (`/{name}/authorize` redirects there)"
    ),
    'upstreams[].endpoints.token_endpoint': "the AS's token endpoint (`/{name}/token`)",
    'upstreams[].endpoints.registration_endpoint': (
        "the AS's RFC 7591 registration endpoint; null: no DCR (a static or CIMD client)"
    ),
    'upstreams[].endpoints.revocation_endpoint': 'RFC 7009 revocation (`/{name}/revoke`)',
    'upstreams[].endpoints.introspection_endpoint': (
        'RFC 7662 introspection (`/{name}/introspect`)'
    ),
    'upstreams[].endpoints.pushed_authorization_request_endpoint': (
        'RFC 9126 pushed authorization requests (`/{name}/par`)'
    ),
    'upstreams[].endpoints.device_authorization_endpoint': (
        'RFC 8628 device authorization (`/{name}/device_authorization`)'
    ),
    'upstreams[].endpoints.code_challenge_methods_supported': (
        'the PKCE methods the AS accepts, as in its metadata'
    ),
    'upstreams[].endpoints.token_endpoint_auth_methods_supported': (
        'the client authentication methods the AS accepts, as in its metadata (the sidecar '
        'picks from them)'
    ),
    'upstreams[].generation_grace': 'how long a superseded client generation stays usable',
    'upstreams[].grant_types': (
        '`response_types` is `[code]` exactly when `authorization_code` is present'
    ),
    'upstreams[].initial_access_token': (
        'sent as Bearer, only to a registration endpoint on a configured authority'
    ),
    'upstreams[].initial_access_token.file': (
        'a file holding the token, read again at each registration (a rotated token is used)'
    ),
    'upstreams[].issuer': "the AS's issuer: discovery tries its RFC 8414 and OIDC well-known URLs",
    'upstreams[].loopback_any_port': 'loopback IP redirect URIs match any port (RFC 8252 §7.3)',
    'upstreams[].name': (
        f'route prefix; `^{NAME_PATTERN}$`, not `healthz readyz metrics admin well-known`'
    ),
    'upstreams[].pkce': (
        '`sidecar`: add S256 PKCE when the app sent none (needs `callback: sidecar`)'
    ),
    'upstreams[].prefetch': 'resolve at startup (retrying with backoff)',
    'upstreams[].redirect_uris': (
        "the app's redirect URIs (exact match): registered at the AS under `callback: app`, "
        'the allow-list under `callback: sidecar`; required with `authorization_code`. Written '
        'as a browser writes them: lower-case scheme and host, a path, no userinfo, backslash, '
        'whitespace, fragment, dot segment or default port; http(s), or a private-use scheme '
        'with a dot (`com.example.app:/cb`)'
    ),
    'upstreams[].registration': '`auto` (static when `client_id` is set), `static`, `dcr`',
    'upstreams[].registration_endpoint': 'pin the registration endpoint',
    'upstreams[].required': (
        '`/readyz` fails until this upstream has credentials; implies `prefetch`'
    ),
    'upstreams[].resource': (
        'a protected resource (RFC 9728) whose metadata names the AS (MCP servers)'
    ),
    'upstreams[].resource_indicator': (
        '`auto`: with a `resource` source, send the identifier its metadata publishes as RFC '
        '8707 `resource` on authorize, token, PAR and device authorization when the app named'
        ' none; `off`'
    ),
    'upstreams[].resource_metadata': (
        '`resource` sources: the protected-resource metadata URL, read first (its `resource` '
        'must equal the configured one)'
    ),
    'upstreams[].resource_probe': (
        '`resource` sources: how the resource is asked for its challenge — `get`, or `post` '
        '(a JSON-RPC ping without a token: MCP servers answer 401 to POST only)'
    ),
    'upstreams[].scopes': 'registered `scope` (sorted, de-duplicated); `[]` sends none',
    'upstreams[].software_statement': 'sent as is',
    'upstreams[].token_endpoint_auth_method': (
        "a static client's authentication method (static clients only)"
    ),
    'upstreams[].token_endpoint_auth_methods': (
        'preference list; `none` needs S256 PKCE at the AS; add `private_key_jwt` (first) for'
        ' key-based auth (needs a signing algorithm in common: ES256, PS256 or RS256)'
    ),
    'version': 'must be `1`',
}

# Corrections and keys the harvest above could not describe in one line.
DESCRIPTIONS.update({
    'store.path': (
        'file: the JSON file (mode 0600, atomic replace, an exclusive lock per key held '
        'across each resolution)'
    ),
    'store.url': (
        'redis: `redis://[[user]:pass@]host:port/db`, `rediss://` for TLS, or '
        '`redis+sentinel://[:pass@]host:port[,host:port...]/service[/db]`'
    ),
    'store.key_prefix': (
        'redis: keys are `{prefix}:{<upstream>:<issuer hash>}:record` and `...:lease`'
    ),
    'store.encryption_keys': (
        'Fernet keys, newest first: secrets in stored records are encrypted with the first; a'
        ' wrong key set is a startup error (exit 1)'
    ),
    'store.lease': 'redis: the per-key lease replicas take before registering',
    'store.ephemeral': (
        "storage that dies with the pod (emptyDir): delete this process's clients on a clean "
        'shutdown; memory implies it'
    ),
    'security': 'outbound address and transport policy ([SECURITY.md](SECURITY.md))',
    'upstreams[].registration': (
        '`auto` (static when `client_id` is set, else CIMD when the AS supports it and '
        '`public_base_url` is https, else DCR), `static`, `dcr`, `cimd`'
    ),
    'upstreams[].client_key': (
        'static `private_key_jwt`: the key, `{file, kid, alg}` (PEM or JWK); re-read on '
        'change'
    ),
    'upstreams[].client_assertion': (
        'static `private_key_jwt`: a ready-made JWT, `{file}` (e.g. a projected service-'
        'account token); re-read on change'
    ),
    'upstreams[].callback': (
        '`app`: the AS redirects to the app; `sidecar`: through `/{name}/callback` '
        '([clients.md](clients.md#callback-mediation-callback-sidecar))'
    ),
})

HEADER = f"""\
# Configuration reference

<!-- GENERATED by `{COMMAND}` from dcr_sidecar/config.py: do not edit by hand. -->

One YAML file: `--config PATH`, else `$DCR_SIDECAR_CONFIG`, else `./config/sidecar.yaml`.
`dcr-sidecar check-config` lists every error at once (file, YAML path, value, a hint);
`dcr-sidecar config-schema` prints the JSON Schema; [config/example.yaml](../config/example.yaml)
is a commented example. Strings may use `${{VAR}}`, `${{VAR:-fallback}}` and `$${{` (a
literal `${{`). A *secret* is a string, `{{env: NAME}}`, `{{env: NAME, optional: true}}` or
`{{file: PATH}}`; secrets are never printed. Durations are seconds. `upstreams[].key` is a key
of each upstream.
"""


@dataclass(frozen=True)
class Row:
    path: str
    type: str
    default: str
    example: str
    meaning: str


def rows(model: type[BaseModel], prefix: str = "") -> Iterator[Row]:
    """Every key of `model`, depth first (a nested model's keys follow its own row)."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield Row(path, type_text(field.annotation), default_text(field), example_text(path),
                  meaning(path, field))
        nested, many = _nested(field.annotation)
        if nested is not None:
            yield from rows(nested, f"{path}[]." if many else f"{path}.")


def _nested(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model a key holds (directly, optionally, or as a list of them)."""
    for arg in _members(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, False
        if get_origin(arg) is list:
            inner = get_args(arg)[0]
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner, True
    return None, False


def _members(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


_NAMES: dict[Any, str] = {
    str: "string", int: "integer", float: "number", bool: "boolean", Secret: "secret",
    ipaddress.IPv4Network: "CIDR", ipaddress.IPv6Network: "CIDR", Any: "any",
}


def type_text(annotation: Any) -> str:
    members = [m for m in _members(annotation) if m is not type(None)]
    words = list(dict.fromkeys(_one_type(m) for m in members))
    if "secret" in words:
        words = ["secret"]  # the {file:} reference is another form of the same secret
    text = " or ".join(words)
    return f"{text} or null" if len(members) < len(_members(annotation)) else text


def _one_type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Annotated:  # constraints live in the field's metadata; the base type speaks
        return type_text(get_args(annotation)[0])
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in get_args(annotation))
    if origin is list:
        return f"list of {type_text(get_args(annotation)[0])}"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "secret" if annotation in (EnvSecret, FileSecret) else "mapping"
    name = _NAMES.get(annotation, getattr(annotation, "__name__", None))
    return name if isinstance(name, str) else str(annotation).replace("|", "or")


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    return _code(value)


def _code(value: Any) -> str:
    if value is PydanticUndefined:
        return ""
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return f"`{text}`".replace("|", "\\|")


def meaning(path: str, field: FieldInfo) -> str:
    text = field.description or DESCRIPTIONS.get(path, "")
    # Links are written from the repository root; the reference lives in docs/.
    text = text.replace("](docs/", "](")
    return " ".join(text.split()).replace("|", "\\|")


def _example_tree() -> Any:
    try:
        return yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}


def example_text(path: str, tree: Any = None) -> str:
    """The value config/example.yaml gives `path` (the first upstream that sets it)."""
    nodes = [tree if tree is not None else _EXAMPLE]
    for part in path.split("."):
        many = part.endswith("[]")
        key = part.removesuffix("[]")
        found = [n[key] for n in nodes if isinstance(n, dict) and key in n]
        nodes = [item for f in found for item in f] if many and found and all(
            isinstance(f, list) for f in found) else found
    for node in nodes:
        if (node is not None and not isinstance(node, dict | list)) or (
                isinstance(node, list) and node and not any(isinstance(i, dict) for i in node)):
            return _code(node)
    return ""


_EXAMPLE = _example_tree()


def render() -> str:
    """The top-level keys in one table, then one table per key that holds a mapping."""
    every = list(rows(Settings))
    out = [HEADER, "## Top level\n", *_table([r for r in every if "." not in r.path])]
    for top in (r.path for r in every if "." not in r.path):
        below = [r for r in every if r.path.startswith((f"{top}.", f"{top}[]."))]
        if below:
            out += [f"\n## `{top}`\n", *_table(below)]
    return "\n".join(out) + "\n"


def _table(items: list[Row]) -> list[str]:
    return ["| key | type | default | example | meaning |", "|---|---|---|---|---|",
            *(f"| `{r.path}` | {r.type} | {r.default} | {r.example} | {r.meaning} |"
              for r in items)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare; exit 1 when docs/configuration.md is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
