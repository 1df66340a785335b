"""The log line writer (observability.LineWriter): info lines logged on the event loop wait for
the end of the loop iteration and share one write; warnings, other threads, reconfiguration and
shutdown write at once; nothing is lost or reordered. And the timestamp's format."""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import io
import json
import logging
import re
import subprocess
import sys
import threading
import time
from typing import Any

import structlog
from structlog.testing import capture_logs

from dcr_sidecar import observability
from dcr_sidecar.oauth.secret import MASK
from tests.conftest import LeakGuard

log = structlog.get_logger("tests.writer")


class CountingStream(io.StringIO):
    """A StringIO that counts its writes: how many system calls a file would have cost."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def events(stream: io.StringIO) -> list[str]:
    return [json.loads(line)["event"] for line in stream.getvalue().splitlines()]


def own_output(leak_guard: LeakGuard) -> CountingStream:
    stream = CountingStream()
    observability.configure_logging(leak_guard.redactor, "json", "info", stream)
    return stream


async def test_info_lines_on_the_loop_share_one_write_at_the_end_of_the_iteration(
        leak_guard: LeakGuard) -> None:
    stream = own_output(leak_guard)
    for n in range(5):
        log.info("queued", n=n)
    assert stream.getvalue() == ""  # still this iteration
    await asyncio.sleep(0)  # the flush was scheduled before this task's resumption
    assert events(stream) == ["queued"] * 5
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == list(range(5))
    assert stream.writes == 1


async def test_a_warning_writes_at_once_after_the_lines_before_it(
        leak_guard: LeakGuard) -> None:
    stream = own_output(leak_guard)
    log.info("first")
    log.warning("second")
    assert events(stream) == ["first", "second"]
    log.error("third")
    assert events(stream) == ["first", "second", "third"]


async def test_the_standard_library_bridge_keeps_the_order(leak_guard: LeakGuard) -> None:
    stream = own_output(leak_guard)
    log.info("structlog_first")
    logging_line = "stdlib_second"
    logging.getLogger("aiohttp.server").info(logging_line)
    log.info("structlog_third")
    await asyncio.sleep(0)
    assert events(stream) == ["structlog_first", logging_line, "structlog_third"]


async def test_a_full_buffer_is_written_without_waiting(leak_guard: LeakGuard) -> None:
    stream = own_output(leak_guard)
    padding = "x" * 1000
    count = observability._PENDING_LIMIT // 1000 + 1
    for n in range(count):
        log.info("big", n=n, padding=padding)
    assert stream.getvalue() != ""  # written before the iteration ended
    await asyncio.sleep(0)
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == list(
        range(count))


async def test_a_thread_without_a_loop_writes_at_once_whole_lines(
        leak_guard: LeakGuard) -> None:
    stream = own_output(leak_guard)
    log.info("loop_line")

    def worker(k: int) -> None:
        for n in range(200):
            log.info("thread_line", k=k, n=n)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    # Written by the threads themselves, the loop's pending line first.
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0]["event"] == "loop_line"
    assert len(lines) == 1 + 4 * 200
    for k in range(4):
        assert [line["n"] for line in lines if line.get("k") == k] == list(range(200))


async def test_reconfiguring_and_flush_logs_write_what_waits(leak_guard: LeakGuard) -> None:
    first = own_output(leak_guard)
    log.info("before_reconfigure")
    second = own_output(leak_guard)
    assert events(first) == ["before_reconfigure"]
    log.info("before_shutdown")
    observability.flush_logs()
    assert events(second) == ["before_shutdown"]


async def test_capture_logs_sees_every_line(leak_guard: LeakGuard) -> None:
    stream = own_output(leak_guard)
    with capture_logs() as logs:
        log.info("captured_info")
        log.warning("captured_warning")
    await asyncio.sleep(0)
    assert [entry["event"] for entry in logs] == ["captured_info", "captured_warning"]
    assert stream.getvalue() == ""


def test_lines_of_the_last_iteration_reach_the_output_at_exit() -> None:
    """A process that logs at info on its loop and returns: nothing is lost (asyncio.run's
    close, then flush_logs at exit)."""
    program = (
        "import asyncio, structlog, sys\n"
        "from dcr_sidecar.observability import Redactor, configure_logging\n"
        "configure_logging(Redactor(), 'json', 'info', sys.stdout)\n"
        "async def main():\n"
        "    for n in range(3):\n"
        "        structlog.get_logger('x').info('last', n=n)\n"
        "asyncio.run(main())\n"
        "structlog.get_logger('x').info('after_loop')\n"
        "async def again():\n"
        "    structlog.get_logger('x').info('pending_at_exit')\n"
        "loop = asyncio.new_event_loop()\n"
        "loop.run_until_complete(again())\n"  # a flush callback still scheduled, never run
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, check=True)
    assert [json.loads(line)["event"] for line in done.stdout.splitlines()] == [
        "last", "last", "last", "after_loop", "pending_at_exit"]


_ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")


def test_the_timestamp_is_structlogs_iso_utc_format(leak_guard: LeakGuard) -> None:
    ours = observability._UtcTimestamp()(None, "info", {})
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)(None, "info", {})
    for stamp in (ours["timestamp"], theirs["timestamp"]):
        assert _ISO_UTC.match(stamp), stamp
    parsed = [datetime.datetime.fromisoformat(d["timestamp"]) for d in (ours, theirs)]
    assert abs(parsed[1] - parsed[0]) < datetime.timedelta(seconds=5)
    assert parsed[0].utcoffset() == datetime.timedelta(0)


def test_the_timestamp_drops_a_zero_fraction_as_isoformat_does(monkeypatch: Any) -> None:
    stamper = observability._UtcTimestamp()
    second = 1_800_000_000
    for ns, expected_dt in ((second * 10**9, datetime.datetime.fromtimestamp(
            second, datetime.UTC)), (second * 10**9 + 7_000, datetime.datetime.fromtimestamp(
            second, datetime.UTC).replace(microsecond=7))):
        monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)
        stamp = stamper(None, "info", {})["timestamp"]
        assert stamp == expected_dt.isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------- request context

async def test_a_new_request_context_clears_the_last_and_binds_the_id(
        leak_guard: LeakGuard) -> None:
    """What the boundary does per request: the previous request's bound values are gone, the
    new id is on every line of the request (the canonical one and the others)."""
    stream = own_output(leak_guard)
    structlog.contextvars.bind_contextvars(request_id="previous-id", upstream="acme")
    observability.new_request_context("next-request-id")
    assert structlog.contextvars.get_contextvars() == {"request_id": "next-request-id"}
    structlog.contextvars.bind_contextvars(failed_step="discovery")
    log.info("inner_line")
    log.info("canonical_line", request_id="explicit-wins")  # an event's own value is kept
    await asyncio.sleep(0)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["request_id"], line.get("upstream")) for line in lines] == [
        ("next-request-id", None), ("explicit-wins", None)]
    assert lines[0]["failed_step"] == "discovery"


def test_a_new_request_context_binds_the_id_in_a_fresh_context(
        leak_guard: LeakGuard) -> None:
    """A context where no request id was ever bound (a new connection's task)."""

    def fresh() -> dict[str, Any]:
        observability.new_request_context("first-id")
        return structlog.contextvars.get_contextvars()

    assert contextvars.Context().run(fresh)["request_id"] == "first-id"


def test_a_forked_child_does_not_write_the_parents_waiting_lines() -> None:
    """A line waiting in the parent when it forks is written once, by the parent."""
    program = (
        "import asyncio, os, structlog, sys\n"
        "from dcr_sidecar.observability import Redactor, configure_logging, flush_logs\n"
        "configure_logging(Redactor(), 'json', 'info', sys.stdout)\n"
        "async def main():\n"
        "    structlog.get_logger('x').info('before_fork')\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        structlog.get_logger('x').warning('in_child')\n"
        "        flush_logs()\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", program], capture_output=True,
                          text=True, timeout=60, check=True)
    assert sorted(json.loads(line)["event"] for line in done.stdout.splitlines()) == [
        "before_fork", "in_child"]


# ---------------------------------------------------------------------------- redaction fast path

async def test_a_plain_key_seen_before_still_masks_secrets_and_scrubs_text(
        leak_guard: LeakGuard) -> None:
    """Once a key held a clean value (a long request id makes it plain), later values under it
    skip the key checks but not the scans: a known secret, a URL's query, a credential."""
    leak_guard.add("plain-key-secret-0123456789")
    leak_guard.redactor.remember("plain-key-secret-0123456789")
    stream = own_output(leak_guard)
    log.info("first", request_id="a" * 40)
    log.info("second", request_id="x-plain-key-secret-0123456789-y")
    log.info("third", request_id="see https://127.0.0.2/cb?code=abcdef123 now")
    log.info("fourth", request_id="Bearer abc.def.ghi")
    await asyncio.sleep(0)
    ids = [json.loads(line)["request_id"] for line in stream.getvalue().splitlines()]
    assert ids == ["a" * 40, f"x-{MASK}-y", "see https://127.0.0.2/cb now", f"Bearer {MASK}"]
