"""One TCP port for a gRPC server and a few plain HTTP/1.1 routes.

Seed 003 reaches a kernel both ways on its one port: gRPC clients (and Guardian's health
probes) and `curl http://localhost:8130/health`. A gRPC server cannot answer HTTP/1.1, so
a kernel that offers both binds its gRPC server on a loopback port of its own and puts
`SharedPort` on the public one: it reads the first four bytes of each connection; an
HTTP/1.x request line (`GET `, `HEAD`, ...) is answered here by the handler, anything else
(the HTTP/2 preface `PRI `, a TLS ClientHello) is relayed byte for byte to the gRPC
server. A gRPC connection is long-lived and multiplexed, so the relay costs a copy per
message, not a connection per call. HTTP answers are JSON, one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

HttpHandler = Callable[[str, Mapping[str, list[str]]], Awaitable[tuple[int, Any]]]
"""`(path, query parameters) -> (status, JSON-able body)` for a GET."""

_HTTP1_STARTS = (b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE", b"OPTI", b"PATC", b"TRAC")
MAX_REQUEST_HEAD_BYTES = 16 * 1024
FIRST_BYTES_TIMEOUT_S = 10.0
RELAY_LINGER_S = 5.0
_CHUNK = 64 * 1024


class SharedPort:
    """Listens on `host:port`; relays gRPC to `grpc_address`, answers HTTP/1.1 GETs.

    Args:
        host: Interface to bind.
        port: Port to bind (0 picks a free one; `port` holds the bound one after start).
        grpc_address: `host:port` of the gRPC server behind it.
        handler: Answers HTTP GET requests.
    """

    def __init__(self, host: str, port: int, grpc_address: str, handler: HttpHandler) -> None:
        self.host = host
        self.port = port
        self._grpc_host, _, grpc_port = grpc_address.rpartition(":")
        self._grpc_port = int(grpc_port)
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Binds and starts accepting; returns the bound port."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stops accepting and ends every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            first = await asyncio.wait_for(reader.readexactly(4), FIRST_BYTES_TIMEOUT_S)
            if first in _HTTP1_STARTS:
                await self._http(first, reader, writer)
            else:
                await self._relay(first, reader, writer)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _relay(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self._grpc_host, self._grpc_port)
        except OSError as exc:
            log.warning("shared port: gRPC server at %s unreachable: %s", self._grpc_port, exc)
            return
        up_writer.write(first)
        pumps = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        try:
            # When one side ends, the other gets its EOF; give it a moment to finish.
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                await asyncio.wait(pending, timeout=RELAY_LINGER_S)
        finally:
            for pump in pumps:
                pump.cancel()
            for pump in pumps:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump
            up_writer.close()

    async def _http(
        self, first: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            rest = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, http_error(431, "the request head is too large"))
            return
        head = first + rest
        if len(head) > MAX_REQUEST_HEAD_BYTES:
            await _respond(writer, 431, http_error(431, "the request head is too large"))
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _respond(writer, 400, http_error(400, "the request line is malformed"))
            return
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            await _respond(
                writer, 405, http_error(405, f"{method}: only GET is served on this port")
            )
            return
        url = urlsplit(target)
        try:
            status, body = await self._handler(url.path, parse_qs(url.query))
        except Exception:
            log.exception("shared port: handler failed for %s", url.path)
            status, body = 500, http_error(500, "internal error; see the server's log")
        await _respond(writer, status, body, include_body=method == "GET")


def http_error(status: int, message: str) -> dict[str, Any]:
    """An error body in the gateway's shape."""
    return {"error": {"code": status, "status": HTTPStatus(status).name, "message": message}}


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while True:
        data = await source.read(_CHUNK)
        if not data:
            with contextlib.suppress(OSError):
                sink.write_eof()
            return
        sink.write(data)
        await sink.drain()


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: Any, *, include_body: bool = True
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    reason = HTTPStatus(status).phrase
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
        + (payload if include_body else b"")
    )
    await writer.drain()
