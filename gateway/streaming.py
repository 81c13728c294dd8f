"""Server-streaming routes as Server-Sent Events or newline-delimited JSON.

The format follows the client's `Accept`: `text/event-stream` gets SSE (`data: <json>` per
message, an error as `event: error`), anything else NDJSON (one JSON value per line, an error
as a last `{"error": ...}` line). The gateway waits briefly for the first message so that an
error raised at once (unknown resource, bad argument) still gets its HTTP status; after that
the response is committed to 200 and errors travel in-band. The upstream call is cancelled
as soon as the HTTP client disconnects or the gateway shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import grpc

from gateway.errors import HttpError, from_rpc_error
from gateway.routes import Route
from gateway.transcode import dumps, render_response

log = logging.getLogger(__name__)

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


def wants_sse(accept: str) -> bool:
    """True when the Accept header asks for Server-Sent Events."""
    return any(part.split(";")[0].strip() == SSE for part in accept.split(","))


def _frame(document: Any, sse: bool, *, event: str = "") -> bytes:
    data = dumps(document)
    if not sse:
        return data + b"\n"
    prefix = f"event: {event}\n".encode() if event else b""
    return prefix + b"data: " + data + b"\n\n"


class ActiveStreams:
    """The streaming calls in flight, so shutdown can end them."""

    def __init__(self) -> None:
        self._calls: set[Any] = set()
        self.closing = False

    def add(self, call: Any) -> None:
        self._calls.add(call)

    def discard(self, call: Any) -> None:
        self._calls.discard(call)

    def cancel_all(self) -> None:
        """Cancels every stream (called when shutdown begins)."""
        self.closing = True
        for call in list(self._calls):
            call.cancel()


def _ended_by_us(disconnected: asyncio.Event, active: ActiveStreams) -> bool:
    """True when the call was cancelled because the client left or the gateway is closing,
    and not because this task itself is being cancelled."""
    task = asyncio.current_task()
    cancelling = task.cancelling() if task is not None else 0
    return cancelling == 0 and (disconnected.is_set() or active.closing)


async def relay(
    route: Route,
    call: Any,
    *,
    sse: bool,
    first_wait_s: float,
    receive: Receive,
    send: Send,
    headers: list[tuple[bytes, bytes]],
    upstream_name: str,
    active: ActiveStreams,
) -> None:
    """Relays one server-streaming call to the HTTP client.

    Raises:
        HttpError: The call failed before the first message (nothing was sent yet).
    """
    iterator = call.__aiter__()
    first: asyncio.Future[Any] = asyncio.ensure_future(iterator.__anext__())
    active.add(call)
    disconnected = asyncio.Event()

    async def watch_disconnect() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                call.cancel()
                return

    watcher = asyncio.create_task(watch_disconnect())
    try:
        done, _ = await asyncio.wait({first, watcher}, timeout=first_wait_s or None)
        if first in done:
            try:
                first.result()
            except StopAsyncIteration:
                pass
            except grpc.aio.AioRpcError as exc:
                if disconnected.is_set():
                    return
                raise from_rpc_error(exc, upstream_name) from None
            except asyncio.CancelledError:
                if not _ended_by_us(disconnected, active):
                    raise
                if disconnected.is_set():
                    return
                raise HttpError(503, "the gateway is shutting down", status="UNAVAILABLE") from None
        elif disconnected.is_set():
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", (SSE if sse else NDJSON).encode()),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                    *headers,
                ],
            }
        )
        await _pump(route, iterator, first, sse, send, disconnected, upstream_name, active)
    finally:
        active.discard(call)
        call.cancel()
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
        if not first.done():
            first.cancel()
        with contextlib.suppress(BaseException):
            await first


async def _pump(
    route: Route,
    iterator: Any,
    first: asyncio.Future[Any],
    sse: bool,
    send: Send,
    disconnected: asyncio.Event,
    upstream_name: str,
    active: ActiveStreams,
) -> None:
    """Writes every message, then ends the body (with an in-band error when one occurs)."""
    trailer = b""
    try:
        message = await first
        while True:
            await send(
                {
                    "type": "http.response.body",
                    "body": _frame(render_response(route, message), sse),
                    "more_body": True,
                }
            )
            message = await iterator.__anext__()
    except StopAsyncIteration:
        pass
    except grpc.aio.AioRpcError as exc:
        if disconnected.is_set():
            return
        if exc.code() is grpc.StatusCode.CANCELLED and active.closing:
            error = HttpError(503, "the gateway is shutting down", status="UNAVAILABLE")
        else:
            error = from_rpc_error(exc, upstream_name)
        trailer = _frame(error.body(), sse, event="error")
    except asyncio.CancelledError:
        # grpc.aio ends a call we cancelled with CancelledError, not an AioRpcError. When
        # the client left or the gateway is closing, that is the stream's normal end; only
        # a cancellation of this task itself travels on.
        if not _ended_by_us(disconnected, active):
            raise
        if disconnected.is_set():
            return
        error = HttpError(503, "the gateway is shutting down", status="UNAVAILABLE")
        trailer = _frame(error.body(), sse, event="error")
    if not disconnected.is_set():
        await send({"type": "http.response.body", "body": trailer, "more_body": False})
