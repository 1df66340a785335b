"""``python -m bench.log_line`` — µs per canonical log line (issue 12, deliver 8).

A small bounded micro-measurement, not a scenario of ``make bench``: the request line exactly
as proxy/boundary.py writes it, through the production logging set-up (JSON at info, the
redaction processor), written to /dev/null; and the same call with the level at warning (the
line not written). Each line starts a new request context with a fresh request id first, as
the boundary does. 5 repeats of 20,000 lines each, in CPU time of this process
(time.process_time); the best repeat is reported (timeit's advice: the others measure the
machine's other load, not the code).
"""

from __future__ import annotations

import asyncio
import os
import time
import timeit

from dcr_sidecar.observability import Redactor, configure_logging, new_request_context, set_level
from dcr_sidecar.proxy import boundary

NUMBER = 20_000
_ids = boundary._RequestIds()
REPEAT = 5


def one_line() -> None:
    # A new request id per line, as in the boundary (an id never repeats).
    new_request_context(_ids.next())
    boundary.log.info("request_handled", method="POST", route="/{name}/token",
                      upstream="acme", status=200, duration_ms=1.23)


def best_us(fn: object) -> float:
    times = timeit.repeat(fn, timer=time.process_time, number=NUMBER,  # type: ignore[arg-type]
                          repeat=REPEAT)
    return min(times) / NUMBER * 1e6


async def in_loop() -> float:
    """On the event loop's thread, as in the sidecar: the line waits for the end of the loop
    iteration (or a full buffer; one iteration here runs all the lines), then is written."""
    return best_us(one_line)


def main() -> None:
    with open(os.devnull, "w") as sink:
        configure_logging(Redactor(), "json", "info", stream=sink)
        written = best_us(one_line)
        buffered = asyncio.run(in_loop())
        set_level("warning")
        filtered = best_us(one_line)
    print(f"canonical line written (json, info), no loop:     {written:.2f} µs")
    print(f"canonical line written (json, info), on the loop: {buffered:.2f} µs")
    print(f"canonical line below the level:                   {filtered:.2f} µs")


if __name__ == "__main__":
    main()
