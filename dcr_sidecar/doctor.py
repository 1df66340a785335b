"""`dcr-sidecar doctor UPSTREAM`: discovery for one upstream, every candidate awaited and shown.

Never prints a secret. With --register it resolves credentials through the configured store
and its lock (reusing stored ones); refused on the memory store, where the client would be
orphaned the moment the command exits.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from dcr_sidecar import errors
from dcr_sidecar.client_keys import static_key_summary
from dcr_sidecar.config import LiveSettings, Settings, Upstream
from dcr_sidecar.discovery import Discoverer, ResourceFetch
from dcr_sidecar.net import Outbound
from dcr_sidecar.oauth import ProtocolError
from dcr_sidecar.oauth import cimd as cimd_rules
from dcr_sidecar.oauth.text import safe_url
from dcr_sidecar.observability import Redactor
from dcr_sidecar.registrar import choose_method, registration_endpoint
from dcr_sidecar.resolver import migration

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


async def run_doctor(settings: Settings, name: str, *, register: bool, as_json: bool,
                     redactor: Redactor) -> int:
    """`redactor`: the process's, installed in its logging (cli.py)."""
    upstream = settings.upstream(name)
    if upstream is None:
        print(f"no upstream named {name!r} in the configuration "
              f"(known: {', '.join(u.name for u in settings.upstreams) or 'none'})",
              file=sys.stderr)
        return EXIT_CONFIG
    if register and settings.store.backend == "memory":
        print("doctor --register is refused with the memory store: the registered client "
              "would be orphaned when this command exits", file=sys.stderr)
        return EXIT_CONFIG
    redactor.remember_settings(settings)
    report: dict[str, Any] = {"upstream": name, "registration": upstream.strategy}
    outbound = Outbound(LiveSettings(settings))
    await outbound.start()
    try:
        code = await _diagnose(settings, name, register, outbound, report, redactor=redactor)
    finally:
        await outbound.close()
    _print(report, as_json, redactor)
    return code


async def _diagnose(settings: Settings, name: str, register: bool, outbound: Outbound,
                    report: dict[str, Any], *, redactor: Redactor) -> int:
    upstream = settings.upstream(name)
    assert upstream is not None
    try:
        result = await Discoverer(outbound).discover(
            upstream, need_registration=upstream.strategy == "dcr", await_all=True)
    except errors.UpstreamError as exc:
        report["attempts"] = list(exc.attempts)
        report["error"] = {"step": exc.step, "error": exc.error, "detail": exc.headline}
        return EXIT_FAILURE
    meta = result.metadata
    report["attempts"] = [a.report() for a in result.attempts]
    report["chosen"] = safe_url(result.source_url) if result.source_url else "endpoints (config)"
    report["issuer"] = meta.issuer
    if result.resource is not None:
        report["resource"] = _resource_report(upstream, result.resource, meta.issuer)
    report["endpoints"] = {k: safe_url(v) for k, v in meta.document.items()
                           if k.endswith("_endpoint") and isinstance(v, str)}
    try:
        mechanism, why = cimd_rules.choose(
            registration=upstream.registration, has_client_id=bool(upstream.client_id),
            metadata=meta.document, metadata_url=result.source_url,
            client_id_url=settings.cimd_document_url(upstream),
            auth_method=upstream.cimd.auth_method)
    except ProtocolError as exc:
        report["error"] = {"step": "register", "error": "server_error", "detail": exc.reason}
        return EXIT_FAILURE
    report["mechanism"] = {"mechanism": mechanism, "why": why}
    if settings.publishes_cimd(upstream):
        report["cimd"] = await check_published(settings, upstream)
    if mechanism == "cimd":
        report["auth_method"] = {"method": upstream.cimd.auth_method,
                                 "why": "cimd.auth_method (a CIMD client never uses a secret)"}
    elif upstream.strategy == "dcr":
        endpoint, provenance = registration_endpoint(upstream, meta)
        report["registration_endpoint"] = {"url": safe_url(endpoint), "source": provenance}
        if provenance == "guessed":
            report["registration_endpoint"]["note"] = (
                "the metadata names no registration_endpoint; {issuer}/register was guessed")
        try:
            method = choose_method(upstream, meta)
            report["auth_method"] = {
                "method": method,
                "why": f"first of {upstream.token_endpoint_auth_methods} that the AS offers "
                       f"({meta.get_list('token_endpoint_auth_methods_supported') or ['client_secret_basic (default)']}) "  # noqa: E501
                       f"and profile {upstream.client_profile} allows"}
        except errors.UpstreamError as exc:
            report["error"] = {"step": exc.step, "error": exc.error, "detail": exc.description}
            return EXIT_FAILURE
    else:
        report["auth_method"] = {"method": upstream.static_auth_method, "why": "static client"}
        line, problem = static_key_summary(upstream, int(time.time()), redactor)
        if line:
            report["client_key"] = line
        if problem is not None:
            report["error"] = {"step": "forward", "error": "server_error", "detail": problem}
            return EXIT_FAILURE
    if register:
        return await _register(settings, name, report, redactor)
    return EXIT_OK


def _resource_report(upstream: Upstream, fetch: ResourceFetch, issuer: str) -> dict[str, Any]:
    """What the protected resource names (design.md §3.1), and what `serve` does with it."""
    servers = list(fetch.metadata.authorization_servers)
    if upstream.issuer is not None:
        follows = "issuer pinned: serve stays with it whatever the resource names"
    elif upstream.strategy == "static":
        follows = "static client: serve stays with the AS it discovered first"
    else:
        follows = ("serve re-checks this document at authorization starts (at most every "
                   f"{migration.RECHECK_INTERVAL:g} s) and moves to a new AS, with a new client, "
                   "when it no longer names the one in use")
    return {"metadata_url": safe_url(fetch.url), "resource": fetch.metadata.resource,
            "authorization_servers": servers, "uses": issuer,
            "scopes_supported": list(fetch.metadata.scopes_supported or ()),
            "migration": follows}


async def _register(settings: Settings, name: str, report: dict[str, Any],
                    redactor: Redactor) -> int:
    from dcr_sidecar.app import Sidecar
    from dcr_sidecar.store.errors import map_store_errors

    sidecar = Sidecar(settings, redactor=redactor)
    await sidecar.outbound.start()
    try:
        with map_store_errors("store_read"):  # wrong store.encryption_keys: nothing changed
            await sidecar.store.open()
        creds = await sidecar.resolver.credentials(name)
    except errors.UpstreamError as exc:  # store failures too (store/errors.py, the one map)
        report["error"] = {"step": exc.step, "error": exc.error, "detail": exc.description}
        return EXIT_FAILURE
    finally:
        await sidecar.resolver.close()
        await sidecar.outbound.close()
        await sidecar.store.close()
    stats = sidecar.resolver.snapshot(name).stats
    report["client"] = {
        "client_id": creds.client_id, "mechanism": creds.mechanism,
        "generation": creds.generation,
        "token_endpoint_auth_method": creds.method,
        "client_secret_expires_at": creds.expires_at,
        "registered_now": stats["registrations"] > 0,
        "checked_at": int(time.time()),
    }
    return EXIT_OK


async def check_published(settings: Settings, upstream: Upstream) -> dict[str, Any]:
    """Fetch the document and JWKS through their public URLs (as the AS would) and compare
    them with what this configuration and the store say they must be."""
    from dcr_sidecar.cimd import document_of

    out: dict[str, Any] = {"document_url": settings.cimd_document_url(upstream)}
    expected = json.loads(document_of(settings, upstream).body)
    out["document"] = await _compare(out["document_url"], expected)
    if upstream.cimd.auth_method == "private_key_jwt":
        out["jwks_url"] = settings.cimd_jwks_url(upstream)
        keys = await _stored_jwks(settings, upstream.name)
        out["jwks"] = await _compare(out["jwks_url"], keys)
    return out


async def _stored_jwks(settings: Settings, name: str) -> dict[str, Any] | None:
    from dcr_sidecar.cimd import jwks_of, keys_record_key
    from dcr_sidecar.store import open_store
    from dcr_sidecar.store.errors import StoreError

    if settings.store.backend == "memory":
        return None
    store = open_store(settings.store)
    try:
        await store.open()
        record = await store.get(keys_record_key(name))
    except (StoreError, OSError, ValueError):
        return None
    finally:
        await store.close()
    return json.loads(jwks_of(record).body) if record is not None else None


async def _compare(url: str, expected: dict[str, Any] | None) -> dict[str, Any]:
    """GET `url` (public: no credentials, no redirects) and say whether it matches."""
    import ssl

    import aiohttp

    timeout = aiohttp.ClientTimeout(total=10)
    trust = ssl.create_default_context()  # made now: honours SSL_CERT_FILE / SSL_CERT_DIR
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                url, allow_redirects=False, ssl=trust) as resp:
            status = resp.status
            body = await resp.content.read(1 << 20)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"reachable": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    if status != 200:
        return {"reachable": False, "detail": f"HTTP {status}"}
    try:
        found = json.loads(body)
    except ValueError:
        return {"reachable": True, "matches": False, "detail": "not JSON"}
    if expected is None:
        return {"reachable": True, "matches": None,
                "detail": "nothing to compare with: no stored key set readable here"}
    if found == expected:
        return {"reachable": True, "matches": True}
    differing = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
    return {"reachable": True, "matches": False, "detail": f"differs in: {', '.join(differing)}"}


def _print(report: dict[str, Any], as_json: bool, redactor: Redactor) -> None:
    """Print through the redactor: a secret an AS echoed into an error never reaches the
    terminal."""
    lines: list[str] = []
    if as_json:
        lines.append(json.dumps(report, indent=2))
    else:
        _render(report, lines.append)
    print(redactor.scrub("\n".join(lines)))


def _render(report: dict[str, Any], out: Callable[[str], object]) -> None:
    out(f"upstream {report['upstream']} (registration: {report['registration']})")
    for attempt in report.get("attempts", []):
        status = attempt["status"] if attempt["status"] is not None else "-"
        detail = f" — {attempt['detail']}" if attempt["detail"] else ""
        out(f"  {attempt['outcome']:<9} {status:>4}  {attempt['url']}{detail}")
    if "resource" in report:
        res = report["resource"]
        out(f"protected resource {res['resource']} ({res['metadata_url']}): authorization "
            f"servers {', '.join(res['authorization_servers'])}; uses {res['uses']}"
            f"{'; scopes ' + ' '.join(res['scopes_supported']) if res['scopes_supported'] else ''}")
        out(f"  {res['migration']}")
    for key in ("chosen", "issuer"):
        if key in report:
            out(f"{key}: {report[key]}")
    for name, url in sorted(report.get("endpoints", {}).items()):
        out(f"  {name}: {url}")
    if "registration_endpoint" in report:
        reg = report["registration_endpoint"]
        out(f"registration endpoint: {reg['url']} ({reg['source']})"
              f"{' — ' + reg['note'] if 'note' in reg else ''}")
    if "mechanism" in report:
        out(f"mechanism: {report['mechanism']['mechanism']} — {report['mechanism']['why']}")
    for what in ("document", "jwks"):
        check = report.get("cimd", {}).get(what)
        if check is not None:
            verdict = ("unreachable" if not check["reachable"] else
                       {True: "matches", False: "DIFFERS", None: "reachable"}[check["matches"]])
            detail = f" — {check['detail']}" if check.get("detail") else ""
            out(f"CIMD {what}: {report['cimd'][what + '_url']}: {verdict}{detail}")
    if "auth_method" in report:
        out(f"auth method: {report['auth_method']['method']} — {report['auth_method']['why']}")
    if "client_key" in report:
        out(report["client_key"])
    if "client" in report:
        client = report["client"]
        out(f"client ({client['mechanism']}): {client['client_id']} "
              f"generation {client['generation']}, "
              f"{client['token_endpoint_auth_method']}, expires_at "
              f"{client['client_secret_expires_at'] or 'never'}"
              f"{' (registered now)' if client['registered_now'] else ' (from the store)'}")
    if "error" in report:
        err = report["error"]
        out(f"FAILED at {err['step']}: {err['error']}: {err['detail']}")
