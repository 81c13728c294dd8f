"""Six events of almost 1 MiB each (each allowed on its own) are more than one gRPC message
can carry: history pages and stream batches end early instead of failing, and a durable
consumer is not stuck on them."""

from __future__ import annotations

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from services.common.pagination import MAX_PAGE_BYTES

Stub = eventbus_pb2_grpc.EventBusServiceStub
COUNT = 6
MESSAGE_LIMIT = 4 * 1024 * 1024


async def publish_large(stub: Stub, source: str = "bulky") -> list[int]:
    sequences = []
    for n in range(COUNT):
        request = eventbus_pb2.PublishRequest(event_type="bulk.blob", source_domain=source)
        request.data.update({"n": n, "blob": "x" * (1024 * 1024 - 1024)})
        sequences.append((await stub.Publish(request)).sequence)
    return sequences


async def test_history_of_large_events_comes_in_pages_within_the_message_limit(
    stub: Stub,
) -> None:
    published = await publish_large(stub)
    seen: list[int] = []
    token = ""
    for _ in range(COUNT + 1):
        page = await stub.GetHistory(
            eventbus_pb2.GetHistoryRequest(source_domain="bulky", page_size=50, page_token=token)
        )
        assert page.ByteSize() < MESSAGE_LIMIT
        assert page.events, "a page came back empty"
        seen.extend(e.sequence for e in page.events)
        token = page.next_page_token
        if not token:
            break
    assert seen == published
    assert MAX_PAGE_BYTES < MESSAGE_LIMIT


async def test_a_subscription_from_the_start_delivers_every_large_event(stub: Stub) -> None:
    published = await publish_large(stub)
    call = stub.Subscribe(
        eventbus_pb2.SubscribeRequest(pattern="bulk.*", start=eventbus_pb2.START_POSITION_ALL)
    )
    seen: list[int] = []
    async for message in call:
        assert message.ByteSize() < MESSAGE_LIMIT
        seen.extend(e.sequence for e in message.events)
        if len(seen) >= COUNT:
            break
    call.cancel()
    assert seen == published


async def test_a_durable_consumer_gets_past_large_events_and_acks_them(stub: Stub) -> None:
    published = await publish_large(stub)
    request = eventbus_pb2.SubscribeRequest(
        pattern="bulk.*", consumer="archiver", start=eventbus_pb2.START_POSITION_ALL
    )
    call = stub.Subscribe(request)
    seen: list[int] = []
    async for message in call:
        seen.extend(e.sequence for e in message.events)
        await stub.Ack(eventbus_pb2.AckRequest(consumer="archiver", sequence=seen[-1]))
        if len(seen) >= COUNT:
            break
    call.cancel()
    assert seen == published
    stats = await stub.GetStats(eventbus_pb2.GetStatsRequest())
    assert [(c.consumer, c.acked_sequence) for c in stats.consumers] == [
        ("archiver", published[-1])
    ]
