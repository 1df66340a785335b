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
from dcr_sidecar.config import Settings
from dcr_sidecar.discovery import Discoverer
from dcr_sidecar.net import Outbound
from dcr_sidecar.oauth.text import safe_url
from dcr_sidecar.observability import remember_settings_secrets, scrub
from dcr_sidecar.registrar import Registrar, registration_endpoint

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


async def run_doctor(settings: Settings, name: str, *, register: bool, as_json: bool) -> int:
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
    remember_settings_secrets(settings)
    report: dict[str, Any] = {"upstream": name, "registration": upstream.strategy}
    outbound = Outbound(settings)
    await outbound.start()
    try:
        code = await _diagnose(settings, name, register, outbound, report)
    finally:
        await outbound.close()
    _print(report, as_json)
    return code


async def _diagnose(settings: Settings, name: str, register: bool, outbound: Outbound,
                    report: dict[str, Any]) -> int:
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
    report["endpoints"] = {k: safe_url(v) for k, v in meta.document.items()
                           if k.endswith("_endpoint") and isinstance(v, str)}
    if upstream.strategy == "dcr":
        endpoint, provenance = registration_endpoint(upstream, meta)
        report["registration_endpoint"] = {"url": safe_url(endpoint), "source": provenance}
        if provenance == "guessed":
            report["registration_endpoint"]["note"] = (
                "the metadata names no registration_endpoint; {issuer}/register was guessed")
        try:
            method = Registrar(outbound).choose_method(upstream, meta)
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
    if register:
        return await _register(settings, name, report)
    return EXIT_OK


async def _register(settings: Settings, name: str, report: dict[str, Any]) -> int:
    from dcr_sidecar.app import Sidecar
    from dcr_sidecar.store.errors import StoreError

    sidecar = Sidecar(settings)
    await sidecar.outbound.start()
    try:
        await sidecar.store.open()
        creds = await sidecar.resolver.credentials(name)
    except errors.UpstreamError as exc:
        report["error"] = {"step": exc.step, "error": exc.error, "detail": exc.description}
        return EXIT_FAILURE
    except StoreError as exc:  # wrong store.encryption_keys: nothing was changed
        report["error"] = {"step": "store_read", "error": "temporarily_unavailable",
                           "detail": str(exc)}
        return EXIT_FAILURE
    finally:
        await sidecar.resolver.close()
        await sidecar.outbound.close()
        await sidecar.store.close()
    state = sidecar.resolver.state(name)
    report["client"] = {
        "client_id": creds.client_id, "generation": creds.generation,
        "token_endpoint_auth_method": creds.method,
        "client_secret_expires_at": creds.expires_at,
        "registered_now": state.stats["registrations"] > 0,
        "checked_at": int(time.time()),
    }
    return EXIT_OK


def _print(report: dict[str, Any], as_json: bool) -> None:
    """Print through scrub(): a secret an AS echoed into an error never reaches the terminal."""
    lines: list[str] = []
    if as_json:
        lines.append(json.dumps(report, indent=2))
    else:
        _render(report, lines.append)
    print(scrub("\n".join(lines)))


def _render(report: dict[str, Any], out: Callable[[str], object]) -> None:
    out(f"upstream {report['upstream']} (registration: {report['registration']})")
    for attempt in report.get("attempts", []):
        status = attempt["status"] if attempt["status"] is not None else "-"
        detail = f" — {attempt['detail']}" if attempt["detail"] else ""
        out(f"  {attempt['outcome']:<9} {status:>4}  {attempt['url']}{detail}")
    for key in ("chosen", "issuer"):
        if key in report:
            out(f"{key}: {report[key]}")
    for name, url in sorted(report.get("endpoints", {}).items()):
        out(f"  {name}: {url}")
    if "registration_endpoint" in report:
        reg = report["registration_endpoint"]
        out(f"registration endpoint: {reg['url']} ({reg['source']})"
              f"{' — ' + reg['note'] if 'note' in reg else ''}")
    if "auth_method" in report:
        out(f"auth method: {report['auth_method']['method']} — {report['auth_method']['why']}")
    if "client" in report:
        client = report["client"]
        out(f"client: {client['client_id']} generation {client['generation']}, "
              f"{client['token_endpoint_auth_method']}, expires_at "
              f"{client['client_secret_expires_at'] or 'never'}"
              f"{' (registered now)' if client['registered_now'] else ' (from the store)'}")
    if "error" in report:
        err = report["error"]
        out(f"FAILED at {err['step']}: {err['error']}: {err['detail']}")
