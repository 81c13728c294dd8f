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
# A relayed read: one HTTP/2 frame at its default maximum size. Each open relayed
# connection holds two such buffers, one per direction.
_CHUNK = 16 * 1024
_SNIFF_BUFFER = 4096  # the first read of a connection, enough for the 4 bytes that decide


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
        self._sniffing: set[asyncio.Transport] = set()
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Binds and starts accepting; returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Sniffer(self._sniffing, self._sniffed), self.host, self.port
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stops accepting and ends every open connection."""
        if self._server is not None:
            self._server.close()
        for transport in list(self._sniffing):
            transport.abort()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def _sniffed(self, transport: asyncio.Transport, received: bytes) -> None:
        task = asyncio.create_task(self._serve(transport, received))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve(self, transport: asyncio.Transport, received: bytes) -> None:
        """Serves a connection whose first bytes are `received` (reading paused)."""
        try:
            if received[:4] in _HTTP1_STARTS:
                reader, writer = _streams(transport, received[4:])
                await self._http(received[:4], reader, writer)
                with contextlib.suppress(Exception):
                    writer.close()
                    await writer.wait_closed()
            else:
                await self._relay(transport, received)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            transport.close()

    async def _relay(self, transport: asyncio.Transport, received: bytes) -> None:
        client = _RelayEnd()
        transport.set_protocol(client)
        client.connection_made(transport)
        loop = asyncio.get_running_loop()
        try:
            upstream, server = await loop.create_connection(
                _RelayEnd, self._grpc_host, self._grpc_port
            )
        except OSError as exc:
            log.warning("shared port: gRPC server at %s unreachable: %s", self._grpc_port, exc)
            return
        if client.ended.done():  # the client left while the gRPC server was dialled
            upstream.close()
            return
        client.pair(server)
        upstream.write(received)
        transport.resume_reading()
        try:
            # When one side ends, the other has been told (EOF); give it a moment to finish.
            _, pending = await asyncio.wait(
                [client.ended, server.ended], return_when=asyncio.FIRST_COMPLETED
            )
            if pending:
                await asyncio.wait(pending, timeout=RELAY_LINGER_S)
        finally:
            upstream.close()
            client.unpair()  # the pair is a cycle: freed now, not by the next collection

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


class _Sniffer(asyncio.BufferedProtocol):
    """A new connection until its first bytes say what it speaks: then reading pauses and
    `on_sniffed(transport, bytes so far)` takes it over. Closed when they do not come
    within FIRST_BYTES_TIMEOUT_S."""

    def __init__(
        self,
        open_transports: set[asyncio.Transport],
        on_sniffed: Callable[[asyncio.Transport, bytes], None],
    ) -> None:
        self._open = open_transports
        self._on_sniffed = on_sniffed
        self._buffer = bytearray(_SNIFF_BUFFER)
        self._received = 0
        self._transport: asyncio.Transport | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._open.add(transport)
        self._deadline = asyncio.get_running_loop().call_later(
            FIRST_BYTES_TIMEOUT_S, transport.close
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)[self._received :]

    def buffer_updated(self, nbytes: int) -> None:
        self._received += nbytes
        if self._received < 4 or self._transport is None:
            return
        transport, self._transport = self._transport, None
        transport.pause_reading()
        self._forget(transport)
        self._on_sniffed(transport, bytes(self._buffer[: self._received]))

    def eof_received(self) -> bool:
        return False  # it ended before saying anything: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._forget(self._transport)

    def _forget(self, transport: asyncio.Transport) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._open.discard(transport)


def _streams(
    transport: asyncio.Transport, received: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Streams over a connection taken over from a `_Sniffer`, `received` read already."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    reader.feed_data(received)
    transport.resume_reading()
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class _RelayEnd(asyncio.BufferedProtocol):
    """One end of a relayed connection: what it reads goes to the other end's transport.

    Each end reads into one buffer of its own, reused read after read. A stream reader
    would receive each read in a fresh 256 KiB block shrunk to what arrived, a pattern that
    fragments the C allocator's heap under steady traffic. Flow control both ways: while an
    end's transport holds more than it can send, the other end stops reading."""

    def __init__(self) -> None:
        self._view = memoryview(bytearray(_CHUNK))
        self.transport: asyncio.Transport | None = None
        self.peer: _RelayEnd | None = None
        self.eof = False
        # Done when this end will send nothing more (its EOF, or the connection lost).
        self.ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pair(self, other: _RelayEnd) -> None:
        self.peer, other.peer = other, self

    def unpair(self) -> None:
        if self.peer is not None:
            self.peer.peer = None
        self.peer = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        if self.peer is not None and self.peer.transport is not None:
            # A copy of what was read: a transport may keep what it cannot send at once,
            # and this buffer is read into again.
            self.peer.transport.write(bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        self.eof = True
        self._end()
        peer = self.peer
        if peer is None or peer.transport is None:
            return False
        if peer.transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                peer.transport.write_eof()
        if peer.eof:  # both directions are done
            peer.transport.close()
            return False
        return True  # half-closed: the other direction may still carry the replies

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def _end(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)


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
