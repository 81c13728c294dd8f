"""The outbox publisher against the real bus: ids carried, repeats suppressed, failures raised."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.common.bus_client import EventBusPublisher, PublishError
from services.common.outbox import OutboxEvent
from services.eventbus.server import EventBusServer
from services.eventbus.servicer import EventBusServicer
from tests.eventbus.conftest import bus_config
from tests.support import serving


def outbox_event(row: int, event_type: str = "domain.registered") -> OutboxEvent:
    return OutboxEvent(
        row_id=row,
        event_id=f"evt-{row}",
        event_type=event_type,
        source_domain="registry",
        subject="ai_domain",
        data={"domain_id": "ai_domain", "revision": row},
        traceparent="",
        created_at=1_800_000_000.0 + row,
    )


async def test_republishing_the_same_outbox_events_is_deduplicated(tmp_path: Path) -> None:
    service = EventBusServer(bus_config(tmp_path))
    async with serving(service.config.server, service) as (server, _):
        publisher = EventBusPublisher(server.address)
        try:
            await publisher.publish([outbox_event(1), outbox_event(2)])
            await publisher.publish([outbox_event(1), outbox_event(2), outbox_event(3)])
        finally:
            await publisher.close()
        assert service.bus.log.head == 3
        events, _ = await service.bus.history()
        assert [e.id for e in events] == ["evt-1", "evt-2", "evt-3"]
        assert events[0].time.seconds == 1_800_000_001
        assert events[1].data["revision"] == 2


async def test_a_rejected_event_raises(tmp_path: Path) -> None:
    service = EventBusServer(bus_config(tmp_path))
    async with serving(service.config.server, service) as (server, _):
        publisher = EventBusPublisher(server.address)
        try:
            with pytest.raises(PublishError, match="evt-2"):
                await publisher.publish([outbox_event(1), outbox_event(2, "bad type")])
        finally:
            await publisher.close()


async def test_an_unreachable_bus_raises() -> None:
    publisher = EventBusPublisher("127.0.0.1:9", timeout_s=2)
    try:
        with pytest.raises(grpc.aio.AioRpcError):
            await publisher.publish([outbox_event(1)])
    finally:
        await publisher.close()


async def test_one_stream_carries_many_calls_and_large_calls_in_several_messages(
    tmp_path: Path,
) -> None:
    service = EventBusServer(bus_config(tmp_path))
    async with serving(service.config.server, service) as (server, _):
        publisher = EventBusPublisher(server.address, window=1500)
        try:
            await publisher.publish([outbox_event(row) for row in range(1, 2501)])
            stream = publisher._stream
            await publisher.publish([outbox_event(2501)])
            assert publisher._stream is stream
        finally:
            await publisher.close()
        assert service.bus.log.head == 2501
        stats = await service.bus.stats()
        assert stats.published_total == 2501


async def test_a_bus_without_publish_stream_is_sent_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def older_bus(
        self: EventBusServicer, requests: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[object]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        yield None  # pragma: no cover (a generator, as grpc expects)

    monkeypatch.setattr(EventBusServicer, "PublishStream", older_bus)
    service = EventBusServer(bus_config(tmp_path))
    async with serving(service.config.server, service) as (server, _):
        publisher = EventBusPublisher(server.address)
        try:
            await publisher.publish([outbox_event(1), outbox_event(2)])
            await publisher.publish([outbox_event(2), outbox_event(3)])
        finally:
            await publisher.close()
        assert service.bus.log.head == 3
        assert publisher._stream is None
