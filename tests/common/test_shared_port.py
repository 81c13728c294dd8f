"""One port for gRPC and plain HTTP: HTTP/1.x request lines are answered by the handler,
every other byte stream is relayed untouched to the server behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx
import pytest

from services.common import shared_port
from services.common.shared_port import SharedPort


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(b"echo:" + data)
        await writer.drain()
    writer.close()


async def _handler(path: str, query: Mapping[str, list[str]]) -> tuple[int, Any]:
    if path == "/boom":
        raise RuntimeError("handler bug")
    return 200, {"path": path, "query": {k: v for k, v in query.items()}}


@contextlib.asynccontextmanager
async def in_front_of(serve: Callable[..., Awaitable[None]]) -> AsyncIterator[SharedPort]:
    """A shared port relaying to a plain TCP server that runs `serve` per connection."""
    behind = await asyncio.start_server(serve, "127.0.0.1", 0)
    address = f"127.0.0.1:{behind.sockets[0].getsockname()[1]}"
    shared = SharedPort("127.0.0.1", 0, address, _handler)
    await shared.start()
    try:
        yield shared
    finally:
        await shared.close()
        behind.close()
        await behind.wait_closed()


@pytest.fixture
async def port() -> AsyncIterator[SharedPort]:
    async with in_front_of(_echo) as shared:
        yield shared


async def test_http_gets_are_answered_by_the_handler_as_json(port: SharedPort) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port.port}") as client:
        answer = await client.get("/search", params={"query": "port timeout", "x": ["1", "2"]})
        assert answer.status_code == 200
        assert answer.json() == {
            "path": "/search",
            "query": {"query": ["port timeout"], "x": ["1", "2"]},
        }
        refused = await client.post("/search", json={})
        assert refused.status_code == 405
        assert refused.json()["error"]["status"] == "METHOD_NOT_ALLOWED"
        broken = await client.get("/boom")
        assert broken.status_code == 500
        assert "internal error" in broken.json()["error"]["message"]


async def test_any_other_protocol_is_relayed_byte_for_byte(port: SharedPort) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    await writer.drain()
    received = b""
    while len(received) < len(b"echo:PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"):
        chunk = await asyncio.wait_for(reader.read(1024), 5)
        assert chunk, "the relay closed early"
        received += chunk
    assert received.replace(b"echo:", b"") == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    writer.close()
    await writer.wait_closed()


async def test_a_malformed_or_oversized_request_head_is_refused(port: SharedPort) -> None:
    for head, status in [
        (b"GET /x\r\n\r\n", b"400"),
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", b"431"),
    ]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
        writer.write(head)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.split(b" ")[1] == status
        writer.close()
        await writer.wait_closed()


async def _mirror(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Sends back every byte as it comes; ends its side when the client ends its own."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()


@pytest.fixture
async def mirrored() -> AsyncIterator[SharedPort]:
    async with in_front_of(_mirror) as shared:
        yield shared


async def test_megabytes_each_way_arrive_intact_to_a_slow_reader(mirrored: SharedPort) -> None:
    # More than every buffer on the way holds: the relay must stop reading from the side
    # that sends while the other side does not take it, and lose or reorder nothing.
    sent = b"PRI " + os.urandom(6 * 1024 * 1024)
    reader, writer = await asyncio.open_connection("127.0.0.1", mirrored.port)

    async def send() -> None:
        for at in range(0, len(sent), 100_000):
            writer.write(sent[at : at + 100_000])
            await writer.drain()
        writer.write_eof()  # half-close: the replies still come back

    sending = asyncio.create_task(send())
    received = bytearray()
    while chunk := await asyncio.wait_for(reader.read(32768), 10):
        received += chunk
        if len(received) < 2 * 1024 * 1024:
            await asyncio.sleep(0.001)  # slow at first, so the buffers fill up
    await sending
    assert bytes(received) == sent
    writer.close()
    await writer.wait_closed()


async def test_a_connection_that_says_nothing_is_closed(
    port: SharedPort, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared_port, "FIRST_BYTES_TIMEOUT_S", 0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_closing_the_port_ends_relayed_connections(port: SharedPort) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port.port)
    writer.write(b"PRI hello")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(1024), 5) == b"echo:PRI hello"
    await port.close()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
