"""The suite's own start-up waits (tests/support): a process that is slow to start because the
machine is loaded is waited for; a process that exits fails the wait at once, with its output.
The stall is played by SIGSTOP/SIGCONT, which is what a starved process looks like from outside."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.support import oidc, serve_process
from tests.support.oidc import OidcProvider, OidcProviderError
from tests.support.redis_server import RedisServer
from tests.support.serve_process import ServeProcess
from tests.support.startup import STARTUP_DEADLINE

OLD_OIDC_DEADLINE = 20.0  # the deadline test_callback_mediation once failed on


async def stalled_start(start: asyncio.Task[None], pid: int, stall: float) -> None:
    """Stop `pid` for `stall` seconds while `start` waits for it, then let it go on."""
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.wait([start], timeout=stall)
        assert not start.done(), start  # it was stopped before it could be ready
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_an_oidc_provider_stalled_beyond_the_old_deadline_still_starts() -> None:
    """The node process stopped for longer than the former 20 s start-up deadline (a loaded
    machine): start() waits for its readiness line and succeeds once it runs again."""
    provider = OidcProvider()
    start = asyncio.ensure_future(provider.start())
    try:
        loop = asyncio.get_running_loop()
        until = loop.time() + 10
        while provider._process is None:  # spawned: stop it before node prints its line
            assert loop.time() < until
            assert not start.done()
            await asyncio.sleep(0.001)
        await stalled_start(start, provider._process.pid, OLD_OIDC_DEADLINE + 1.5)
        await asyncio.wait_for(start, STARTUP_DEADLINE)
        assert (await provider.stats())["registrations"] == 0
    finally:
        start.cancel()
        await provider.stop()


def test_every_start_up_wait_is_generous() -> None:
    """One deadline for every helper (redis_server uses until_ready's default), far beyond a
    normal start (about 1 s), and inside pytest-timeout's 120 s so a truly stuck start is
    reported by the helper itself."""
    assert 60 <= STARTUP_DEADLINE < 120
    assert oidc.STARTUP_TIMEOUT == STARTUP_DEADLINE
    assert serve_process.START_DEADLINE == STARTUP_DEADLINE


async def test_an_oidc_provider_that_exits_fails_at_once_with_its_stderr() -> None:
    provider = OidcProvider(port=-1)  # server.mjs refuses it and exits
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(OidcProviderError, match="exited with 2 before it was ready") as caught:
        await provider.start()
    assert loop.time() - started < STARTUP_DEADLINE / 4
    assert "port must be an integer" in str(caught.value)


async def test_a_redis_server_that_exits_fails_at_once_with_its_log(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server._args = lambda: ["--port", "not-a-port"]  # type: ignore[method-assign]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RuntimeError, match="exited with 1 before it was ready") as caught:
        await server.start()
    assert loop.time() - started < STARTUP_DEADLINE / 4
    assert "not-a-port" in str(caught.value)


async def test_a_serve_process_that_exits_fails_at_once_with_its_output(tmp_path: Path) -> None:
    process = ServeProcess(tmp_path, "broken", {"version": 2})
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RuntimeError, match="exited with 2 before it was ready") as caught:
        await process.start()
    assert loop.time() - started < STARTUP_DEADLINE / 4
    assert "version" in str(caught.value)
