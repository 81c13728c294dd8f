"""Server-streaming routes as Server-Sent Events or newline-delimited JSON.

The format follows the client's `Accept`: `text/event-stream` gets SSE, anything else NDJSON
(one JSON value per line, an error as a last `{"error": ...}` line). An SSE message is

    id: <resume point>          (the bus sequence of the last event, or the watch revision)
    event: <rpc name>           (`subscribe`, `watch_domains`, ...; `error` for an error)
    data: <json>

and an idle stream carries a `: ping` comment every `GRACE_GATEWAY_SSE_PING_S` seconds, so
proxies do not cut it. A browser's EventSource sends the last `id:` it saw back as
`Last-Event-ID` when it reconnects; the gateway turns it into the request's resume field
(`start_sequence` after that sequence, or `after_revision`), so no message is lost or
repeated. The gateway waits briefly for the first message so that an error raised at once
(unknown resource, bad argument) still gets its HTTP status; after that the response is
committed to 200 and errors travel in-band. The upstream call is cancelled as soon as the
HTTP client disconnects or the gateway shuts down; a client that goes away is a normal end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from gateway.errors import HttpError, bad_request, from_rpc_error
from gateway.routes import Route
from gateway.transcode import dumps, render_response

log = logging.getLogger(__name__)

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
_INTEGER_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
}


def wants_sse(accept: str) -> bool:
    """True when the Accept header asks for Server-Sent Events."""
    return any(part.split(";")[0].strip() == SSE for part in accept.split(","))


PING = b": ping\n\n"
LAST_EVENT_ID = "last-event-id"
# Resume fields of streaming requests: after a sequence (the event bus) or a revision.
_START, _START_SEQUENCE = "start", "start_sequence"
_EVENTS = "events"
_AFTER_REVISION = "after_revision"


def _frame(document: Any, sse: bool, *, event: str = "", event_id: str = "") -> bytes:
    data = dumps(document)
    if not sse:
        return data + b"\n"
    prefix = f"id: {event_id}\n".encode() if event_id else b""
    if event:
        prefix += f"event: {event}\n".encode()
    return prefix + b"data: " + data + b"\n\n"


def event_name(route: Route) -> str:
    """The SSE `event:` of a route's messages: its RPC name in snake case."""
    method = route.grpc_path.rsplit("/", 1)[-1]
    return re.sub(r"(?<!^)(?=[A-Z])", "_", method).lower()


def resume_id(message: Message) -> str:
    """Where a client resumes after this message: the sequence of its last event (event
    bus), else its revision (watches); "" when the message has neither."""
    fields = message.DESCRIPTOR.fields_by_name
    if _EVENTS in fields and fields[_EVENTS].message_type is not None:
        events = getattr(message, _EVENTS)
        if events and "sequence" in events[-1].DESCRIPTOR.fields_by_name:
            return str(events[-1].sequence)
        return ""
    for name in ("sequence", "revision"):
        field = fields.get(name)
        if field is not None and field.type in _INTEGER_TYPES and getattr(message, name):
            return str(getattr(message, name))
    return ""


def apply_last_event_id(request: Message, value: str) -> None:
    """Resumes a streaming request after the `Last-Event-ID` a reconnecting client sent.

    Raises:
        HttpError: 400 when the value is not a resume point this stream understands.
    """
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        raise bad_request("Last-Event-ID", "must be the decimal id of a message of this stream")
    position = int(text)
    fields = request.DESCRIPTOR.fields_by_name
    start = fields[_START].enum_type if _START in fields else None
    by_sequence = start.values_by_name.get("START_POSITION_SEQUENCE") if start else None
    if by_sequence is not None and _START_SEQUENCE in fields:
        setattr(request, _START, by_sequence.number)
        setattr(request, _START_SEQUENCE, position + 1)
    elif _AFTER_REVISION in fields:
        setattr(request, _AFTER_REVISION, position)
    else:
        raise bad_request("Last-Event-ID", "this stream cannot be resumed")


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
    ping_s: float = 15.0,
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
        await _pump(route, iterator, first, sse, send, disconnected, upstream_name, active, ping_s)
    except (asyncio.CancelledError, OSError):
        # The client went away (or the connection broke) while a message was in flight:
        # a normal end of a stream, not an error of the gateway.
        if not disconnected.is_set():
            raise
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
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
    ping_s: float,
) -> None:
    """Writes every message (pinging an idle SSE stream), then ends the body (with an
    in-band error when one occurs)."""
    trailer = b""
    name = event_name(route) if sse else ""
    pending: asyncio.Future[Any] = first
    try:
        while True:
            if sse and ping_s > 0:
                done, _ = await asyncio.wait({pending}, timeout=ping_s)
                if not done:
                    if disconnected.is_set():
                        return
                    await send({"type": "http.response.body", "body": PING, "more_body": True})
                    continue
            message = await pending
            frame = _frame(
                render_response(route, message),
                sse,
                event=name,
                event_id=resume_id(message) if sse else "",
            )
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            pending = asyncio.ensure_future(iterator.__anext__())
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
    finally:
        if pending is not first and not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
    if not disconnected.is_set():
        await send({"type": "http.response.body", "body": trailer, "more_body": False})
