"""Publishing to the event bus from any Grace service.

`EventBusPublisher` is the `Publisher` an `OutboxRelay` (and so every SDK domain) uses: it
sends a service's outbox events over one long-lived `PublishStream`, carrying each event's
stored id, so a batch re-sent after a crash (published, not yet deleted from the outbox)
is suppressed by the bus as duplicates. A call returns once the bus acknowledged every
event, which it does only after their group commit; it raises on any failure, so the relay
keeps the events and retries with backoff. The stream saves a call set-up per batch, and
the messages of a large call are in flight together (at most `window` events unanswered).
A failed stream fails every call waiting on it and the next call opens a new one; a bus
that does not know PublishStream (an older version) is sent `PublishBatch` calls instead.

With a `signer`, events are signed as they are sent (`services.common.event_signing`): a
PublishBatch of several events gets ONE batch signature over the Merkle root of its events
(each event carries it with its inclusion path, and verifies alone), so the bus verifies
one signature per call instead of one per event; a single event gets a per-event
signature. The envelope is rebuilt from the stored row with the same id and time every
time and Ed25519 is deterministic, so a re-sent batch of the same events carries the same
signatures (a re-send split differently is signed differently; the bus suppresses the
duplicates by id either way).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import struct_pb2

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from services.common.channels import channel
from services.common.config import peer_address
from services.common.event_signing import sign_event, sign_event_batch
from services.common.outbox import OutboxEvent
from services.common.signing import SigningKey
from services.common.timestamps import to_timestamp

# The bus's default PublishBatch limit (and per PublishStream message).
MAX_BATCH = 1000
# Events sent on the stream and not yet acknowledged, at most (the bus reads ahead 8192).
DEFAULT_WINDOW = 8192


class PublishError(RuntimeError):
    """The bus refused or could not take some events; the message says which and why."""


def to_event(item: OutboxEvent) -> event_pb2.Event:
    """The bus envelope of an outbox event."""
    data = struct_pb2.Struct()
    data.update(item.data)
    return event_pb2.Event(
        id=item.event_id,
        event_type=item.event_type,
        source_domain=item.source_domain,
        subject=item.subject,
        traceparent=item.traceparent,
        time=to_timestamp(item.created_at),
        data=data,
    )


class _Stream:
    """One open PublishStream: messages go out through a queue, and each ack resolves the
    oldest waiting future (the bus answers messages in the order they were sent)."""

    def __init__(self, stub: eventbus_pb2_grpc.EventBusServiceAsyncStub) -> None:
        self._outgoing: asyncio.Queue[eventbus_pb2.PublishStreamRequest | None] = asyncio.Queue()
        self._waiting: deque[asyncio.Future[eventbus_pb2.PublishStreamResponse]] = deque()
        self.failure: BaseException | None = None
        self._call = stub.PublishStream(self._requests())
        self._reader = asyncio.create_task(self._read_acks(), name="bus-publish-stream-acks")

    async def _requests(self) -> AsyncIterator[eventbus_pb2.PublishStreamRequest]:
        while (request := await self._outgoing.get()) is not None:
            yield request

    async def _read_acks(self) -> None:
        try:
            async for ack in self._call:
                if not self._waiting:
                    raise PublishError("event bus acknowledged a message that was not sent")
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(ack)
            raise PublishError("event bus ended the publish stream")
        except BaseException as exc:  # the stream is over: fail whoever waits
            self.failure = exc
            while self._waiting:
                future = self._waiting.popleft()
                if future.done():
                    continue
                if isinstance(exc, Exception):
                    future.set_exception(exc)
                else:
                    future.cancel()
            if not isinstance(exc, Exception):
                raise

    def send(
        self, request: eventbus_pb2.PublishStreamRequest
    ) -> asyncio.Future[eventbus_pb2.PublishStreamResponse]:
        """Queues one message; the future resolves with its ack (or the stream's error)."""
        future: asyncio.Future[eventbus_pb2.PublishStreamResponse] = (
            asyncio.get_running_loop().create_future()
        )
        if self.failure is not None:
            future.set_exception(self.failure)
            return future
        self._waiting.append(future)
        self._outgoing.put_nowait(request)
        return future

    async def close(self) -> None:
        self._outgoing.put_nowait(None)
        self._call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _unimplemented(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.UNIMPLEMENTED


class EventBusPublisher:
    """Publishes outbox events to the bus (implements `services.common.outbox.Publisher`).

    Args:
        address: `host:port` of the event bus.
        timeout_s: Longest wait for the acks of one call (and deadline of a PublishBatch).
        signer: Key that signs every batch sent (one signature per message, see the
            module docstring); None sends events unsigned. It may be set later (an SDK
            domain signs once the trust kernel holds its key).
        window: Most events sent and not yet acknowledged.
    """

    def __init__(
        self,
        address: str,
        *,
        timeout_s: float = 10.0,
        signer: SigningKey | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.signer = signer
        self.window = window
        self._channel: grpc.aio.Channel | None = None
        self._stub: eventbus_pb2_grpc.EventBusServiceAsyncStub | None = None
        self._stream: _Stream | None = None
        self._streaming = True  # False once the bus said it has no PublishStream

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EventBusPublisher:
        """A publisher to `GRACE_EVENTBUS_ADDR` (default 127.0.0.1:8100)."""
        return cls(peer_address(env, "eventbus"))

    def _connect(self) -> eventbus_pb2_grpc.EventBusServiceAsyncStub:
        # The channel binds to the running loop, so it is opened on first use, not in
        # __init__ (which may run before the loop).
        if self._stub is None:
            self._channel = channel(self.address)
            self._stub = eventbus_pb2_grpc.EventBusServiceStub(self._channel)
        return self._stub

    def _envelopes(self, chunk: Sequence[OutboxEvent]) -> list[event_pb2.Event]:
        envelopes = [to_event(e) for e in chunk]
        signer = self.signer
        if signer is not None:
            if len(envelopes) == 1:
                sign_event(envelopes[0], signer)
            else:
                sign_event_batch(envelopes, signer)
        return envelopes

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        """Publishes every event durably, or raises (grpc.aio.AioRpcError or PublishError)."""
        if self._streaming:
            try:
                await self._publish_streamed(events)
                return
            except grpc.aio.AioRpcError as exc:
                await self._drop_stream()
                if not _unimplemented(exc):
                    raise
                self._streaming = False
            except BaseException:
                await self._drop_stream()
                raise
        await self._publish_batches(events)

    async def _publish_streamed(self, events: Sequence[OutboxEvent]) -> None:
        stub = self._connect()
        if self._stream is None or self._stream.failure is not None:
            await self._drop_stream()
            self._stream = _Stream(stub)
        stream = self._stream
        sent: list[tuple[Sequence[OutboxEvent], asyncio.Future[Any]]] = []
        in_flight = 0
        async with asyncio.timeout(self.timeout_s):
            for start in range(0, len(events), MAX_BATCH):
                chunk = events[start : start + MAX_BATCH]
                while sent and in_flight + len(chunk) > self.window:
                    # The window is full: the oldest message's ack makes room.
                    done, future = sent[0]
                    await asyncio.shield(future)
                    in_flight -= len(done)
                    _check_ack(done, future.result())
                    sent.pop(0)
                request = eventbus_pb2.PublishStreamRequest(events=self._envelopes(chunk))
                sent.append((chunk, stream.send(request)))
                in_flight += len(chunk)
            for chunk, future in sent:
                _check_ack(chunk, await asyncio.shield(future))

    async def _publish_batches(self, events: Sequence[OutboxEvent]) -> None:
        stub = self._connect()
        for start in range(0, len(events), MAX_BATCH):
            chunk = events[start : start + MAX_BATCH]
            response = await stub.PublishBatch(
                eventbus_pb2.PublishBatchRequest(events=self._envelopes(chunk)),
                timeout=self.timeout_s,
            )
            _check_results(
                chunk,
                len(response.results),
                [(r.status, r.error) for r in response.results],
            )

    async def _drop_stream(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.close()

    async def close(self) -> None:
        """Closes the stream and the channel."""
        await self._drop_stream()
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


def _check_ack(chunk: Sequence[OutboxEvent], ack: eventbus_pb2.PublishStreamResponse) -> None:
    errors = {r.index: r.error for r in ack.rejections}
    _check_results(
        chunk,
        len(ack.statuses),
        [(status, errors.get(i, "")) for i, status in enumerate(ack.statuses)],
    )


def _check_results(
    chunk: Sequence[OutboxEvent], answered: int, results: list[tuple[int, str]]
) -> None:
    if answered != len(chunk):
        raise PublishError(f"event bus answered {answered} results for {len(chunk)} events")
    rejected = [
        f"{item.event_id} ({item.event_type}): {error}"
        for item, (status, error) in zip(chunk, results, strict=True)
        if status == eventbus_pb2.PUBLISH_STATUS_REJECTED
    ]
    if rejected:
        raise PublishError(f"event bus rejected {len(rejected)} events: {rejected[:3]}")
