"""What every listener does with its clients' connections (design.md §2.2, §2.4): a client that
goes away is a normal event, and a slow client cannot hold a connection open."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from dcr_sidecar.app import Sidecar
from tests.conftest import LeakGuard, SidecarFactory
from tests.support.recording_as import RecordingAS

DEADLINE = 10.0


def events(guard: LeakGuard) -> list[dict[str, Any]]:
    return [json.loads(line) for line in guard.log_text().splitlines() if line.startswith("{")]


async def wait_for(condition: Callable[[], bool], deadline: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline
    while not condition():
        assert loop.time() < until, "condition not met in time"
        await asyncio.sleep(0.02)


async def metrics_text(side: Sidecar) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", side.management.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    text = (await asyncio.wait_for(reader.read(), DEADLINE)).decode()
    writer.close()
    return text


async def test_a_client_that_disconnects_mid_body_is_one_info_line_without_traceback(
        sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """A client gone while its body is read: `client_disconnected` at info, no traceback, no
    `request_crashed`, and no 500 in the request metrics (nobody was answered)."""
    async with RecordingAS() as rec:
        side = await sidecar({"upstreams": [{"name": "rec", "issuer": rec.issuer,
                                             "grant_types": ["client_credentials"]}]})
        _, writer = await asyncio.open_connection("127.0.0.1", side.listen.port)
        writer.write(b"POST /rec/token HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/x-www-form-urlencoded\r\n"
                     b"Content-Length: 1000\r\n\r\ngrant_type")
        await writer.drain()
        await wait_for(lambda: side.in_flight.count == 1)
        writer.close()
        await wait_for(lambda: side.in_flight.count == 0)
        logged = [e for e in events(leak_guard) if e.get("path", e.get("route", "")).
                  startswith(("/rec", "/{name}")) or e["event"] == "client_disconnected"]
        assert [(e["event"], e["level"]) for e in logged] == [("client_disconnected", "info")]
        assert logged[0]["route"] == "/{name}/token"
        assert not [e for e in events(leak_guard)
                    if "exception" in e or e["level"] in ("error", "critical")]
        assert 'code="500"' not in await metrics_text(side)
