"""HTML of the demo app: one page shell with strict security headers, tables and cards.
Nothing here renders a token or a secret (tokens truncated, refresh tokens as present/absent)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web

from dcr_sidecar.demo.idtoken import format_time, is_number
from dcr_sidecar.demo.sidecar import DemoError

_TIME_CLAIMS: Final = frozenset(
    {"exp", "iat", "nbf", "auth_time", "updated_at", "client_secret_expires_at"}
)

_CSS: Final = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f6f8;
color:#1f2933;line-height:1.5}
main{max-width:60rem;margin:2rem auto;padding:0 1rem}
h1{font-size:1.6rem;margin:0 0 1rem}h2{font-size:1.15rem;margin:1.5rem 0 .5rem}
.card{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:1rem 1.25rem;
margin-bottom:1rem}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;vertical-align:top;padding:.35rem .5rem;border-bottom:1px solid #e4e7eb}
th{width:16rem;font-weight:600;color:#52606d}
td code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.9rem}
pre{margin:0;white-space:pre-wrap;word-break:break-all}
.ok{border-left:6px solid #2f9e44}.bad{border-left:6px solid #e03131}
.warn{border-left:6px solid #f08c00}
.badge{display:inline-block;padding:.1rem .55rem;border-radius:999px;font-weight:600;color:#fff}
.badge.ok{background:#2f9e44;border:0}.badge.bad{background:#e03131;border:0}
.button{display:inline-block;background:#1c7ed6;color:#fff;text-decoration:none;
padding:.55rem 1.2rem;border-radius:6px;font-weight:600;margin-right:.5rem}
.button.secondary{background:#e9ecef;color:#1f2933}
.muted{color:#7b8794;font-size:.9rem}
"""

_SECURITY_HEADERS: Final = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, body: str, *, status: int = 200) -> web.Response:
    document = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)} · dcr-sidecar demo</title><style>{_CSS}</style></head>"
        f"<body><main><h1>{esc(title)}</h1>{body}</main></body></html>"
    )
    return web.Response(
        text=document, status=status, content_type="text/html", headers=_SECURITY_HEADERS
    )


def links(*, login: bool = True) -> str:
    login_link = '<a class=button href="/login">Log in again</a>' if login else ""
    return f'<p>{login_link}<a class="button secondary" href="/">Home</a></p>'


def render_value(name: str, value: object) -> str:
    if name == "client_secret_expires_at" and value == 0:
        return "<code>0</code> <span class=muted>(never expires)</span>"
    if isinstance(value, str):
        return f"<code>{esc(value)}</code>"
    if name in _TIME_CLAIMS and is_number(value):
        return f"<code>{esc(value)}</code> <span class=muted>({esc(format_time(value))})</span>"
    if value is None or isinstance(value, bool | int | float):
        return f"<code>{esc(json.dumps(value))}</code>"
    return f"<pre>{esc(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def table(rows: Mapping[str, Any] | list[tuple[str, str]], *, raw: bool = False) -> str:
    """A two-column table; with ``raw`` the values are already-escaped HTML."""
    items = rows if isinstance(rows, list) else list(rows.items())
    cells = "".join(
        f"<tr><th>{esc(name)}</th><td>{value if raw else render_value(name, value)}</td></tr>"
        for name, value in items
    )
    return f"<table>{cells}</table>"


def error_card(exc: DemoError) -> str:
    rows: list[tuple[str, str]] = [
        ("error", f"<code>{esc(exc.error)}</code>"),
        ("error_description", esc(exc.description)),
    ]
    if exc.retry_after:
        rows.append(("Retry-After", f"{esc(exc.retry_after)} s"))
    hint = f"<p>{esc(exc.hint)}</p>" if exc.hint else ""
    return f"<div class='card bad'>{table(rows, raw=True)}{hint}</div>"


def error_page(title: str, exc: DemoError, *, status: int | None = None) -> web.Response:
    return page(title, error_card(exc) + links(), status=status or exc.status)
