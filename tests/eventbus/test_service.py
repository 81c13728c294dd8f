"""The bus over real gRPC: the seed flow, streams, durability across restarts, bad input."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from services.eventbus.jetstream import JetStreamOptions
from services.eventbus.server import EventBusServer
from tests.eventbus.conftest import bus_config
from tests.support import eventually, serving, session_pki

Stub = eventbus_pb2_grpc.EventBusServiceStub
SEED_BODY = (
    '{"event_type": "ml.prediction", "source_domain": "ai_domain",'
    ' "data": {"prediction": "positive"}}'
)


def batch(*types: str, source: str = "ai_domain") -> eventbus_pb2.PublishBatchRequest:
    return eventbus_pb2.PublishBatchRequest(
        events=[event_pb2.Event(event_type=t, source_domain=source) for t in types]
    )


async def collect(
    stub: Stub, request: eventbus_pb2.SubscribeRequest, count: int
) -> list[event_pb2.Event]:
    got: list[event_pb2.Event] = []
    call = stub.Subscribe(request)
    async for message in call:
        got.extend(message.events)
        if len(got) >= count:
            break
    call.cancel()
    return got[:count]


async def test_the_seed_publish_body_works_as_json_and_reaches_an_ml_subscriber(stub: Stub) -> None:
    call = stub.Subscribe(eventbus_pb2.SubscribeRequest(pattern="ml.*"))
    await _wait_streams(stub, 1)
    request = json_format.Parse(SEED_BODY, eventbus_pb2.PublishRequest())
    response = await stub.Publish(request)
    message = await call.read()
    call.cancel()

    assert response.sequence == 1
    assert response.id
    assert not response.duplicate
    event = message.events[0]
    assert (event.event_type, event.source_domain, event.sequence) == (
        "ml.prediction",
        "ai_domain",
        1,
    )
    assert dict(event.data) == {"prediction": "positive"}
    assert event.time.seconds > 0


GRPCURL = shutil.which("grpcurl") or shutil.which("grpcurl", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(GRPCURL is None, reason="grpcurl is not installed")
async def test_the_seed_publish_body_works_verbatim_over_grpcurl(tmp_path: Path) -> None:
    service = EventBusServer(bus_config(tmp_path))
    async with serving(service.config.server, service) as (server, chan):
        await _grpcurl_publish(server.address, Stub(chan))


async def _grpcurl_publish(address: str, stub: Stub) -> None:
    proc = await asyncio.create_subprocess_exec(
        str(GRPCURL),
        *session_pki().grpcurl_args(),
        "-d",
        SEED_BODY,
        address,
        "grace.eventbus.v1.EventBusService/Publish",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["sequence"] == "1"
    history = await stub.GetHistory(eventbus_pb2.GetHistoryRequest(pattern="ml.*"))
    assert [e.event_type for e in history.events] == ["ml.prediction"]


async def _wait_streams(stub: Stub, count: int) -> None:
    async def ready() -> bool:
        stats = await stub.GetStats(eventbus_pb2.GetStatsRequest())
        return stats.active_streams >= count

    await eventually(ready)


async def test_streams_deliver_in_order_from_each_start_position(stub: Stub) -> None:
    await stub.PublishBatch(batch(*(f"ml.e{i}" for i in range(300)), "ops.x"))
    everything = await collect(
        stub,
        eventbus_pb2.SubscribeRequest(
            pattern="ml.*", start=eventbus_pb2.START_POSITION_ALL, max_batch=64
        ),
        300,
    )
    assert [e.sequence for e in everything] == list(range(1, 301))
    from_250 = await collect(
        stub,
        eventbus_pb2.SubscribeRequest(
            start=eventbus_pb2.START_POSITION_SEQUENCE, start_sequence=250
        ),
        52,
    )
    assert [e.sequence for e in from_250] == list(range(250, 302))
    first = everything[0].time
    by_time = await collect(
        stub,
        eventbus_pb2.SubscribeRequest(
            patterns=["ops.*"], start=eventbus_pb2.START_POSITION_TIME, start_time=first
        ),
        1,
    )
    assert by_time[0].event_type == "ops.x"


@pytest.mark.parametrize(
    "bound",
    # A live stream's queue is bounded by events and by their bytes (about 2 kB each here).
    [{"reader_queue_limit": 50}, {"reader_queue_bytes": 100_000}],
    ids=["events", "bytes"],
)
async def test_a_stalled_subscriber_never_blocks_others_and_catches_up_later(
    tmp_path: Path, log_backend: JetStreamOptions | None, bound: dict[str, int]
) -> None:
    service = EventBusServer(bus_config(tmp_path, jetstream=log_backend, **bound))
    async with serving(service.config.server, service) as (_, chan):
        stub = Stub(chan)
        stalled = stub.Subscribe(eventbus_pb2.SubscribeRequest(pattern="*", max_batch=10))
        first = await _publish_and_read_first(stub, stalled)
        live = stub.Subscribe(eventbus_pb2.SubscribeRequest(pattern="load.*"))
        await _wait_streams(stub, 2)
        total = 3000
        received: list[int] = []

        async def consume() -> None:
            async for message in live:
                received.extend(e.sequence for e in message.events)
                if len(received) >= total:
                    return

        consumer = asyncio.create_task(consume())
        for start in range(0, total, 500):
            # Big enough to fill the stalled stream's flow-control window quickly.
            payload = struct_pb2.Struct(fields={"blob": struct_pb2.Value(string_value="p" * 2000)})
            await stub.PublishBatch(
                eventbus_pb2.PublishBatchRequest(
                    events=[
                        event_pb2.Event(
                            event_type=f"load.{start + i}", source_domain="ai_domain", data=payload
                        )
                        for i in range(500)
                    ]
                )
            )
        await asyncio.wait_for(consumer, 60)
        assert received == list(range(2, total + 2))
        readers = [r for r in service.bus.log.readers if r.filter.patterns == ("*",)]
        assert readers
        assert all(r.queued <= r.queue_limit and r.queued_bytes <= r.queue_bytes for r in readers)
        assert readers[0].overflows >= 1  # it fell back to the log instead of buffering
        # Now the stalled subscriber reads: everything arrives, in order, nothing lost.
        sequences = [first]
        while len(sequences) < total + 1:
            message = await stalled.read()
            sequences.extend(e.sequence for e in message.events)
        stalled.cancel()
        live.cancel()
        assert sequences == list(range(1, total + 2))


async def _publish_and_read_first(stub: Stub, call: grpc.aio.UnaryStreamCall) -> int:  # type: ignore[type-arg]
    await _wait_streams(stub, 1)
    await stub.Publish(eventbus_pb2.PublishRequest(event_type="warm.up", source_domain="ai_domain"))
    message = await call.read()
    return int(message.events[0].sequence)


async def test_a_durable_consumer_resumes_after_reconnect_and_after_a_restart(
    tmp_path: Path,
    log_backend: JetStreamOptions | None,
) -> None:
    config = bus_config(tmp_path, jetstream=log_backend)
    service = EventBusServer(config)
    async with serving(config.server, service) as (_, chan):
        stub = Stub(chan)
        await stub.PublishBatch(batch(*(f"ml.{i}" for i in range(10))))
        request = eventbus_pb2.SubscribeRequest(
            pattern="ml.*", consumer="memory", start=eventbus_pb2.START_POSITION_ALL
        )
        got = await collect(stub, request, 4)
        await stub.Ack(eventbus_pb2.AckRequest(consumer="memory", sequence=got[3].sequence))
        again = await collect(
            stub, eventbus_pb2.SubscribeRequest(pattern="ml.*", consumer="memory"), 2
        )
        assert [e.sequence for e in again] == [5, 6]
        await stub.Ack(eventbus_pb2.AckRequest(consumer="memory", sequence=6))

    service = EventBusServer(config)
    async with serving(config.server, service) as (_, chan):
        stub = Stub(chan)
        await stub.PublishBatch(batch("ml.after", "ops.skip"))
        resumed = await collect(
            stub, eventbus_pb2.SubscribeRequest(pattern="ml.*", consumer="memory"), 5
        )
        assert [e.sequence for e in resumed] == [7, 8, 9, 10, 11]
        stats = await stub.GetStats(eventbus_pb2.GetStatsRequest())
        assert [(c.consumer, c.acked_sequence, c.lag) for c in stats.consumers] == [
            ("memory", 6, 6)
        ]
        # Acknowledged events are durable too: sequences continue after the restart.
        assert stats.head_sequence == 12
        assert stats.events_by_type["ml.after"] == 1


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("Publish", eventbus_pb2.PublishRequest(source_domain="a"), "event_type"),
        ("Publish", eventbus_pb2.PublishRequest(event_type="a b", source_domain="a"), "event_type"),
        (
            "Publish",
            eventbus_pb2.PublishRequest(event_type="a", source_domain="a", id="x" * 129),
            "id",
        ),
        ("CreateSubscription", eventbus_pb2.CreateSubscriptionRequest(domain_id="d"), "pattern"),
        (
            "CreateSubscription",
            eventbus_pb2.CreateSubscriptionRequest(domain_id="d", pattern="a b"),
            "pattern",
        ),
        ("CreateSubscription", eventbus_pb2.CreateSubscriptionRequest(pattern="a.*"), "domain_id"),
        ("GetHistory", eventbus_pb2.GetHistoryRequest(page_size=5000), "page_size"),
        ("Ack", eventbus_pb2.AckRequest(consumer="bad name", sequence=1), "consumer"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    stub: Stub, method: str, request_: object, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(stub, method)(request_)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith(field)


async def test_a_bad_stream_request_fails_with_invalid_argument(stub: Stub) -> None:
    call = stub.Subscribe(eventbus_pb2.SubscribeRequest(pattern="ml.[x]"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_things_are_not_found(stub: Stub) -> None:
    for call in (
        stub.Ack(eventbus_pb2.AckRequest(consumer="ghost", sequence=0)),
        stub.DeleteSubscription(eventbus_pb2.DeleteSubscriptionRequest(subscription_id="nope")),
        stub.RedeliverDeadLetter(eventbus_pb2.RedeliverDeadLetterRequest(dead_letter_id="nope")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_events_published_inside_a_trace_carry_its_traceparent() -> None:
    from opentelemetry import trace

    from services.eventbus.servicer import _trace_context

    assert _trace_context() == ("", "")
    context = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=trace.TraceFlags(1),
    )
    with trace.use_span(trace.NonRecordingSpan(context)):
        traceparent, _ = _trace_context()
    assert traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
