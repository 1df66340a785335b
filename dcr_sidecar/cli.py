"""The command line (design.md §2.1): serve, check-config, config-schema, doctor, demo-app."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys

import structlog

from dcr_sidecar import __version__
from dcr_sidecar.config import Settings, config_path, json_schema, load_settings
from dcr_sidecar.errors import ConfigError

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
# Internal (tests): how often `serve` checks the config file's content; 10 s otherwise.
POLL_ENV = "DCR_SIDECAR_CONFIG_POLL_INTERVAL"
log = structlog.get_logger("dcr_sidecar.cli")


def _load(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args.config))


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    settings = load_settings(path)
    print(f"{path}: ok (version 1)")
    print(f"  listen {settings.listen.host}:{settings.listen.port}, management "
          f"{settings.management.host}:{settings.management.port}, store {settings.store.backend}")
    for upstream in settings.upstreams:
        source = next(k for k in ("endpoints", "discovery_url", "resource", "issuer")
                      if getattr(upstream, k) is not None)
        flags = [f for f in ("prefetch", "required") if getattr(upstream, f)]
        print(f"  upstream {upstream.name}: {source} "
              f"{upstream.issuer or upstream.discovery_url or upstream.resource}, registration "
              f"{upstream.strategy}{', ' + ', '.join(flags) if flags else ''}")
    return EXIT_OK


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from dcr_sidecar.lifecycle import POLL_INTERVAL_S, content_digest

    path = config_path(args.config)
    digest = content_digest(path)  # before loading: a change in between is seen by the poll
    settings = load_settings(path)
    from dcr_sidecar.observability import configure_logging

    configure_logging(settings.log.format, settings.log.level)
    _use_uvloop()
    interval = float(os.environ.get(POLL_ENV) or POLL_INTERVAL_S)
    return asyncio.run(_serve(settings, path, digest, interval))


def _use_uvloop() -> None:
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(settings: Settings, path: str, digest: str | None, poll_s: float) -> int:
    from dcr_sidecar.app import Sidecar
    from dcr_sidecar.lifecycle import ConfigWatcher
    from dcr_sidecar.store.errors import StoreError

    sidecar = Sidecar(settings)
    try:
        await sidecar.start()
    except OSError as exc:
        log.error("startup_failed", detail=f"{type(exc).__name__}: {exc.strerror or exc}")
        return EXIT_FAILURE
    except StoreError as exc:  # wrong store.encryption_keys (design.md §3.9)
        log.error("startup_failed", detail=f"credential store ({settings.store.backend}): {exc}")
        return EXIT_FAILURE
    watcher = ConfigWatcher(sidecar, path, digest=digest, interval_s=poll_s)
    polling = asyncio.create_task(watcher.run())
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, watcher.reload, "sighup")
    await stopping.wait()
    # No reloads once stopping; the values in force now (perhaps reloaded) govern shutdown.
    polling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await polling
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("reload_ignored",
                                                            detail="shutting down"))
    settings = sidecar.settings
    delay = settings.shutdown.delay
    log.info("shutdown_started", delay_s=delay, grace_s=settings.shutdown.grace)
    # Keep serving while the app finishes its own work; a second signal skips the delay.
    second = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, second.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(second.wait(), timeout=delay)
    await sidecar.stop()
    log.info("shutdown_complete")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from dcr_sidecar.doctor import run_doctor
    from dcr_sidecar.observability import configure_logging

    settings = _load(args)
    # The report goes to stdout; the sidecar's own log lines (warnings and up) to stderr.
    configure_logging("console", "warning")
    return asyncio.run(run_doctor(settings, args.upstream, register=args.register,
                                  as_json=args.json))


def cmd_demo_app(args: argparse.Namespace) -> int:
    from dcr_sidecar import demo_app

    return demo_app.main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcr-sidecar",
        description="OAuth 2 Dynamic Client Registration as a sidecar.")
    parser.add_argument("--version", action="version", version=f"dcr-sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="PATH", help="YAML file (default: "
                       "$DCR_SIDECAR_CONFIG, then ./config/sidecar.yaml)")
        return p

    with_config(sub.add_parser("serve", help="run the sidecar")).set_defaults(func=cmd_serve)
    with_config(sub.add_parser("check-config", help="validate the configuration")).set_defaults(
        func=cmd_check_config)
    sub.add_parser("config-schema", help="print the JSON Schema of the configuration"
                   ).set_defaults(func=cmd_config_schema)
    doctor = with_config(sub.add_parser("doctor", help="diagnose discovery for one upstream"))
    doctor.add_argument("upstream")
    doctor.add_argument("--register", action="store_true",
                        help="also resolve credentials through the configured store")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=cmd_doctor)
    demo = sub.add_parser("demo-app", help="a small web app to try a login through the sidecar")
    from dcr_sidecar import demo_app

    demo_app.add_arguments(demo)
    demo.set_defaults(func=cmd_demo_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return EXIT_OK
    return code
