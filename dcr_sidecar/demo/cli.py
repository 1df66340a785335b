"""``dcr-sidecar demo-app``: arguments, validation, and serving the app."""

from __future__ import annotations

import argparse
import sys
from typing import Final

from aiohttp import web
from yarl import URL

from dcr_sidecar.config import NAME_PATTERN, NAME_RE, RESERVED_NAMES
from dcr_sidecar.demo import app
from dcr_sidecar.demo.sidecar import DemoSettings

DEFAULT_SIDECAR_URL: Final = "http://127.0.0.1:8080"
DEFAULT_UPSTREAM: Final = "demo"
DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000


def _validate_upstream(name: str) -> str:
    if not NAME_RE.fullmatch(name) or name in RESERVED_NAMES:
        raise ValueError(
            f"invalid upstream name {name!r}: expected ^{NAME_PATTERN}$, "
            f"not one of {', '.join(sorted(RESERVED_NAMES))}"
        )
    return name


def _validate_base_url(url: str, what: str) -> str:
    try:
        parsed = URL(url)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"invalid {what} {url!r}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"{what} must be an http(s) URL with a host, got {url!r}")
    if parsed.user or parsed.password:
        raise ValueError(f"{what} must not carry credentials")
    if parsed.query_string or parsed.fragment:
        raise ValueError(f"{what} must not carry a query or a fragment: {url!r}")
    return url.rstrip("/")


def create_demo_app(sidecar_url: str, upstream: str, public_url: str) -> web.Application:
    """The demo relying party; ``public_url`` is how the browser reaches it (redirect URI base)."""
    return app.create_demo_app(DemoSettings(
        sidecar_url=_validate_base_url(sidecar_url, "sidecar URL"),
        upstream=_validate_upstream(upstream),
        public_url=_validate_base_url(public_url, "public URL"),
    ))


def run_demo_app(sidecar_url: str, upstream: str, host: str, port: int) -> None:
    """Serve the demo app until interrupted; the redirect URI is http://127.0.0.1:{port}/callback."""
    public_url = f"http://127.0.0.1:{port}"
    demo = create_demo_app(sidecar_url, upstream, public_url)

    def announce(_message: str) -> None:
        print(
            f"dcr-sidecar demo app for upstream {upstream!r} via {sidecar_url}: "
            f"open {public_url}/ (redirect URI {public_url}/callback; Ctrl+C to stop)",
            file=sys.stderr,
            flush=True,
        )

    # No access log: the callback's query string carries the authorization code.
    web.run_app(demo, host=host, port=port, print=announce, access_log=None)


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 1-65535: {port}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dcr-sidecar demo-app``."""
    parser.add_argument(
        "--sidecar",
        default=DEFAULT_SIDECAR_URL,
        metavar="URL",
        help=f"the sidecar's back-channel base URL (default {DEFAULT_SIDECAR_URL})",
    )
    parser.add_argument(
        "--upstream",
        default=DEFAULT_UPSTREAM,
        metavar="NAME",
        help=f"the upstream name configured in the sidecar (default {DEFAULT_UPSTREAM})",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        metavar="P",
        help=(
            f"port to listen on (default {DEFAULT_PORT}); the redirect URI is "
            "http://127.0.0.1:P/callback and must be in the upstream's redirect_uris"
        ),
    )
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to bind (default {DEFAULT_HOST})",
    )


def main(args: argparse.Namespace) -> int:
    """Run ``demo-app``: 0 after a clean stop, 2 for bad arguments, 1 if it cannot listen."""
    sidecar = str(getattr(args, "sidecar", DEFAULT_SIDECAR_URL))
    upstream = str(getattr(args, "upstream", DEFAULT_UPSTREAM))
    host = str(getattr(args, "host", DEFAULT_HOST))
    port = int(getattr(args, "port", DEFAULT_PORT))
    try:
        _validate_base_url(sidecar, "--sidecar")
        _validate_upstream(upstream)
    except ValueError as exc:
        print(f"dcr-sidecar demo-app: {exc}", file=sys.stderr)
        return 2
    try:
        run_demo_app(sidecar, upstream, host, port)
    except OSError as exc:
        print(f"dcr-sidecar demo-app: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    return 0
