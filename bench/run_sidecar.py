"""``python -m bench.run_sidecar --loop asyncio|uvloop serve --config PATH``

The ordinary CLI (``dcr_sidecar.cli.main``), with the event loop pinned: the CLI uses uvloop
whenever it is importable, so ``--loop asyncio`` hides it (an import of ``uvloop`` then fails
as if it were not installed) and ``--loop uvloop`` refuses to run without it.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "--loop" or argv[1] not in ("asyncio", "uvloop"):
        print("usage: python -m bench.run_sidecar --loop asyncio|uvloop COMMAND ...",
              file=sys.stderr)
        return 2
    if argv[1] == "asyncio":
        sys.modules["uvloop"] = None  # type: ignore[assignment]
    else:
        import uvloop  # noqa: F401 - fail here, loudly, when the fast extra is missing

    from dcr_sidecar.cli import main as cli_main

    return cli_main(argv[2:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
