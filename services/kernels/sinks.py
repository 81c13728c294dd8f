"""Where the kernels' outboxes drain: the event bus and the immutable log.

Each kernel writes events (and governance its log entries) to a transactional outbox; an
`OutboxRelay` hands them to a `Publisher`: `services.common.bus_client.EventBusPublisher`
for the bus, `ImmutableLogPublisher` below for the log. Both raise on failure, so the
relay keeps the entries and retries with backoff while the peer is down.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import grpc
from google.protobuf import struct_pb2
from opentelemetry import trace

from grace.kernels.immutable_log.v1 import immutable_log_pb2, immutable_log_pb2_grpc
from services.common import telemetry
from services.common.channels import channel
from services.common.outbox import OutboxEvent
from services.common.timestamps import to_timestamp

MAX_BATCH = 1000
_tracer = trace.get_tracer("immutable_log_publisher")


def batch_request_id(events: Sequence[OutboxEvent]) -> str:
    """The AppendBatch request id of a batch: the same events give the same id, so a batch
    re-sent after a crash (appended, not yet removed from the outbox) is not appended twice."""
    digest = hashlib.sha256("\n".join(e.event_id for e in events).encode()).hexdigest()
    return f"outbox:{digest}"


class ImmutableLogPublisher:
    """Appends outbox entries to the immutable log (implements `outbox.Publisher`): one
    entry per event, kind = event type, actor = source, data = the event's data.

    Args:
        address: `host:port` of the immutable log.
        timeout_s: Deadline of one AppendBatch call.
    """

    def __init__(self, address: str, *, timeout_s: float = 10.0) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel: grpc.aio.Channel | None = None
        self._stub: immutable_log_pb2_grpc.ImmutableLogServiceAsyncStub | None = None

    def _connect(self) -> immutable_log_pb2_grpc.ImmutableLogServiceAsyncStub:
        # Opened on first use: channels bind to the running loop.
        if self._stub is None:
            self._channel = channel(self.address)
            self._stub = immutable_log_pb2_grpc.ImmutableLogServiceStub(self._channel)
        return self._stub

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        """Appends every entry durably, or raises."""
        stub = self._connect()
        for start in range(0, len(events), MAX_BATCH):
            chunk = events[start : start + MAX_BATCH]
            entries = []
            for e in chunk:
                data = struct_pb2.Struct()
                data.update({**e.data, "event_id": e.event_id, "subject": e.subject})
                entries.append(
                    immutable_log_pb2.NewEntry(
                        kind=e.event_type,
                        actor=e.source_domain,
                        time=to_timestamp(e.created_at),
                        data=data,
                    )
                )
            # The append joins the trace of the request that wrote the first entry (and
            # links to the others'), not a trace of its own.
            with telemetry.batch_span(
                _tracer,
                "log append",
                [telemetry.context_from_traceparent(e.traceparent) for e in chunk],
                {"grace.log.entries": len(chunk)},
                kind=trace.SpanKind.PRODUCER,
            ):
                await stub.AppendBatch(
                    immutable_log_pb2.AppendBatchRequest(
                        entries=entries, request_id=batch_request_id(chunk)
                    ),
                    timeout=self.timeout_s,
                )

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
