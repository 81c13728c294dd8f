"""Publishing to the event bus from any Grace service.

`EventBusPublisher` is the `Publisher` an `OutboxRelay` uses: it sends a service's outbox
events with `PublishBatch`, carrying each event's stored id, so a batch re-sent after a
crash (published, not yet deleted from the outbox) is suppressed by the bus as duplicates.
It raises on any failure, so the relay keeps the events and retries with backoff.

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

from collections.abc import Mapping, Sequence

import grpc
from google.protobuf import struct_pb2

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from services.common.channels import channel
from services.common.config import peer_address
from services.common.event_signing import sign_event, sign_event_batch
from services.common.outbox import OutboxEvent
from services.common.signing import SigningKey
from services.common.timestamps import to_timestamp

# The bus's default PublishBatch limit.
MAX_BATCH = 1000


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


class EventBusPublisher:
    """Publishes outbox events to the bus (implements `services.common.outbox.Publisher`).

    Args:
        address: `host:port` of the event bus.
        timeout_s: Deadline of one PublishBatch call.
        signer: Key that signs every batch sent (one signature per PublishBatch, see the
            module docstring); None sends events unsigned. It may be set later (an SDK
            domain signs once the trust kernel holds its key).
    """

    def __init__(
        self, address: str, *, timeout_s: float = 10.0, signer: SigningKey | None = None
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.signer = signer
        self._channel: grpc.aio.Channel | None = None
        self._stub: eventbus_pb2_grpc.EventBusServiceAsyncStub | None = None

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

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        """Publishes every event durably, or raises (grpc.aio.AioRpcError or PublishError)."""
        stub = self._connect()
        for start in range(0, len(events), MAX_BATCH):
            chunk = events[start : start + MAX_BATCH]
            envelopes = [to_event(e) for e in chunk]
            signer = self.signer
            if signer is not None:
                if len(envelopes) == 1:
                    sign_event(envelopes[0], signer)
                else:
                    sign_event_batch(envelopes, signer)
            response = await stub.PublishBatch(
                eventbus_pb2.PublishBatchRequest(events=envelopes),
                timeout=self.timeout_s,
            )
            if len(response.results) != len(chunk):
                raise PublishError(
                    f"event bus answered {len(response.results)} results for {len(chunk)} events"
                )
            rejected = [
                f"{item.event_id} ({item.event_type}): {result.error}"
                for item, result in zip(chunk, response.results, strict=True)
                if result.status == eventbus_pb2.PUBLISH_STATUS_REJECTED
            ]
            if rejected:
                raise PublishError(f"event bus rejected {len(rejected)} events: {rejected[:3]}")

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
