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


SLOW = {"timeouts": {"client_header": 1, "client_body": 1}}
REQUEST = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow-loris\r\n"
           b"X-Padding: " + b"p" * 200 + b"\r\n\r\n")


def listeners(side: Sidecar) -> dict[str, int]:
    assert side.front is not None
    return {"listen": side.listen.port, "front": side.front.port,
            "management": side.management.port}


async def drip(port: int, data: bytes) -> tuple[float, int]:
    """Open a connection and drip `data` into it (see :func:`drip_more`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return await drip_more(reader, writer, data)


async def drip_more(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    data: bytes, every: float = 0.05) -> tuple[float, int]:
    """Send `data` one byte every `every` s; (seconds until the server closed, bytes sent by
    then). Bounded: stops at the end of `data` (the caller asserts it never got there)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    closed = asyncio.ensure_future(reader.read())
    sent = 0
    try:
        for byte in data:
            if closed.done():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            await asyncio.wait([closed], timeout=every)
        await asyncio.wait_for(closed, DEADLINE)
        return loop.time() - started, sent
    finally:
        closed.cancel()
        writer.close()


async def test_a_header_sent_byte_by_byte_is_cut_at_client_header_on_every_listener(
        sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """Slow loris: a request header dripped one byte every 50 ms (about 13 s in all) is cut
    after `timeouts.client_header` (1 s) on each listener, long before it completes."""
    side = await sidecar({**SLOW, "front": {"host": "127.0.0.1", "port": 0}})
    for name, port in listeners(side).items():
        elapsed, sent = await drip(port, REQUEST)
        assert sent < len(REQUEST) // 2, name
        assert 0.9 <= elapsed < 6, (name, elapsed)  # 1 s, plus a loaded loop's lag
    slow = [e for e in events(leak_guard) if e["event"] == "client_too_slow"]
    assert [e["phase"] for e in slow] == ["header"] * 3


async def test_a_body_sent_byte_by_byte_is_cut_at_client_body(
        sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """A complete header, then a body dripped byte by byte: cut after `client_body`, and the
    handler that was reading it sees a client gone, not a crash."""
    side = await sidecar({**SLOW, "upstreams": [{
        "name": "acme", "issuer": "http://127.0.0.1:9", "client_id": "static-client",
        "grant_types": ["client_credentials"]}]})
    reader, writer = await asyncio.open_connection("127.0.0.1", side.listen.port)
    writer.write(b"POST /acme/token HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\n"
                 b"Content-Length: 400\r\n\r\n")
    await writer.drain()
    elapsed, sent = await drip_more(reader, writer, b"g" * 400)
    assert sent < 200
    assert 0.9 <= elapsed < 6, elapsed
    await wait_for(lambda: side.in_flight.count == 0)
    seen = [(e["event"], e.get("phase")) for e in events(leak_guard)
            if e["event"] in ("client_too_slow", "client_disconnected", "request_crashed")]
    assert seen == [("client_too_slow", "body"), ("client_disconnected", None)]


async def test_prompt_requests_on_a_kept_alive_connection_are_unaffected(
        sidecar: SidecarFactory) -> None:
    """Three requests on one connection, each sent at once, spaced by more than
    client_header in all: every one is answered (the deadline counts per request)."""
    side = await sidecar(SLOW)
    reader, writer = await asyncio.open_connection("127.0.0.1", side.management.port)
    try:
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), DEADLINE)
            assert status.startswith(b"HTTP/1.1 200"), status
            await asyncio.wait_for(reader.readuntil(b'{"status": "ok"}'), DEADLINE)
            await asyncio.sleep(0.6)  # idle between requests, within aiohttp's keep-alive
    finally:
        writer.close()


async def test_a_header_dripped_after_a_prompt_request_is_cut_a_client_header_after_its_start(
        sidecar: SidecarFactory, leak_guard: LeakGuard) -> None:
    """A prompt request, then, half a `client_header` later on the same connection, a header
    dripped byte by byte: cut `client_header` after that header's first byte — not when the
    connection's first deadline would have run out, and not never."""
    side = await sidecar(SLOW)
    reader, writer = await asyncio.open_connection("127.0.0.1", side.management.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), DEADLINE)
    assert status.startswith(b"HTTP/1.1 200"), status
    await asyncio.wait_for(reader.readuntil(b'{"status": "ok"}'), DEADLINE)
    await asyncio.sleep(0.5)  # the next request starts half a client_header later
    elapsed, sent = await drip_more(reader, writer, REQUEST)
    assert sent < len(REQUEST) // 2
    assert 0.9 <= elapsed < 6, elapsed  # 1 s from its first byte, plus a loaded loop's lag
    slow = [e for e in events(leak_guard) if e["event"] == "client_too_slow"]
    assert [e["phase"] for e in slow] == ["header"]
