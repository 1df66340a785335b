"""The command line (design.md §2.1): serve, check-config, config-schema, doctor, demo-app."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import textwrap
from typing import TYPE_CHECKING

import structlog

from dcr_sidecar import __version__
from dcr_sidecar.config import Settings, Upstream, config_path, json_schema, load_settings
from dcr_sidecar.errors import ConfigError

if TYPE_CHECKING:
    from dcr_sidecar.observability import Redactor

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
    if settings.front is not None:
        print(f"  front {settings.front.host}:{settings.front.port}"
              f"{' (tls)' if settings.front.tls else ''}, public {settings.public_base}")
    for upstream in settings.upstreams:
        source = next(k for k in ("endpoints", "discovery_url", "resource", "issuer")
                      if getattr(upstream, k) is not None)
        flags = [f for f in ("prefetch", "required") if getattr(upstream, f)]
        print(f"  upstream {upstream.name}: {source} "
              f"{upstream.issuer or upstream.discovery_url or upstream.resource}, registration "
              f"{_registration(settings, upstream)}{', ' + ', '.join(flags) if flags else ''}")
    return EXIT_OK


def _registration(settings: Settings, upstream: Upstream) -> str:
    """What check-config says of the registration: CIMD candidates name their client_id."""
    if not settings.publishes_cimd(upstream):
        return upstream.strategy
    way = ("cimd" if upstream.registration == "cimd"
           else "auto (cimd if the AS supports it, else dcr)")
    return f"{way}, CIMD client_id {settings.cimd_document_url(upstream)}"


def cmd_config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from dcr_sidecar.lifecycle import POLL_INTERVAL_S, content_digest

    path = config_path(args.config)
    digest = content_digest(path)  # before loading: a change in between is seen by the poll
    settings = load_settings(path)
    from dcr_sidecar.observability import Redactor, configure_logging, flush_logs

    redactor = Redactor()  # the process's one: its logging and every part that learns secrets
    configure_logging(redactor, settings.log.format, settings.log.level)
    _use_uvloop()
    interval = float(os.environ.get(POLL_ENV) or POLL_INTERVAL_S)
    try:
        return asyncio.run(_serve(settings, path, digest, interval, redactor))
    finally:
        flush_logs()  # the lines of the loop's last iteration (also registered with atexit)


def _use_uvloop() -> None:
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(settings: Settings, path: str, digest: str | None, poll_s: float,
                 redactor: Redactor) -> int:
    from dcr_sidecar.app import Sidecar
    from dcr_sidecar.lifecycle import ConfigWatcher
    from dcr_sidecar.store.errors import StoreError

    sidecar = Sidecar(settings, redactor=redactor)
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
    from dcr_sidecar.observability import Redactor, configure_logging

    settings = _load(args)
    redactor = Redactor()
    # The report goes to stdout; the sidecar's own log lines (warnings and up) to stderr.
    configure_logging(redactor, "console", "warning")
    return asyncio.run(run_doctor(settings, args.upstream, register=args.register,
                                  as_json=args.json, redactor=redactor))


def cmd_demo_app(args: argparse.Namespace) -> int:
    from dcr_sidecar import demo

    return demo.main(args)


EXIT_CODES = """\
exit codes:
  0  success (serve: stopped cleanly)
  1  failure (doctor: a check failed; serve: cannot listen or read the store)
  2  invalid configuration or arguments (every configuration error is listed)"""
COMMANDS = {
    "serve": ("run the sidecar (the OAuth listener and the management listener)",
              "Run the sidecar until SIGTERM or Ctrl-C; SIGHUP or a changed file reloads."),
    "check-config": ("validate the configuration and print a summary",
                     "Validate the configuration file and list every error at once "
                     "(file, YAML path, value, hint); contacts nothing."),
    "config-schema": ("print the JSON Schema of the configuration file",
                      "Print the JSON Schema of the configuration file (for editors and CI)."),
    "doctor": ("check one upstream: discovery, registration endpoint, auth method",
               "Diagnose one upstream: try every discovery URL and show what each answered, "
               "the registration endpoint and the client authentication method the sidecar "
               "would use. Only reads from the authorization server unless --register."),
    "demo-app": ("a small web app to try a login through the sidecar",
                 "Serve a small web app that logs in through the sidecar (make demo starts "
                 "it with a local OIDC provider)."),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcr-sidecar",
        description=textwrap.fill(
            "OAuth 2 Dynamic Client Registration as a sidecar: your app talks to the sidecar "
            "as if it were the authorization server; the sidecar discovers the AS, registers "
            "a client and adds its credentials.", 79),
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"dcr-sidecar {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands")

    def command(name: str) -> argparse.ArgumentParser:
        short, long = COMMANDS[name]
        return sub.add_parser(name, help=short, description=textwrap.fill(long, 79),
                              epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="PATH", help="the YAML configuration file (default: "
                       "$DCR_SIDECAR_CONFIG, then ./config/sidecar.yaml)")
        return p

    with_config(command("serve")).set_defaults(func=cmd_serve)
    with_config(command("check-config")).set_defaults(func=cmd_check_config)
    command("config-schema").set_defaults(func=cmd_config_schema)
    doctor = with_config(command("doctor"))
    doctor.add_argument("upstream", metavar="UPSTREAM",
                        help="the name of the upstream to check (upstreams[].name)")
    doctor.add_argument("--register", action="store_true",
                        help="also obtain credentials: registers a REAL client at the "
                             "authorization server (or reuses the one in the configured "
                             "store) and keeps it in that store")
    doctor.add_argument("--json", action="store_true",
                        help="print the report as JSON instead of text")
    doctor.set_defaults(func=cmd_doctor)
    demo_app = command("demo-app")
    from dcr_sidecar import demo

    demo.add_arguments(demo_app)
    demo_app.set_defaults(func=cmd_demo_app)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a closed stdout (``| head``) or Ctrl-C ends it without a traceback."""
    try:
        args = build_parser().parse_args(argv)
        try:
            code: int = args.func(args)
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_CONFIG
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130  # the shell's code for SIGINT
    except BrokenPipeError:
        # The reader went away: point stdout at /dev/null so the interpreter's final flush
        # does not raise again (Python docs, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    return code
