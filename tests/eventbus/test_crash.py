"""No event acknowledged to a publisher is lost when the bus process is killed with -9."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from services.common.channels import channel
from services.eventbus.jetstream import JetStreamOptions
from tests.eventbus.conftest import bus_process
from tests.support import free_port

pytestmark = pytest.mark.slow


def events(ids: list[str]) -> list[event_pb2.Event]:
    return [event_pb2.Event(id=i, event_type="crash.test", source_domain="ai_domain") for i in ids]


@pytest.mark.parametrize("via", ["PublishBatch", "PublishStream"])
async def test_acknowledged_events_survive_kill_minus_nine(
    tmp_path: Path, log_backend: JetStreamOptions | None, via: str
) -> None:
    port = free_port()
    acknowledged: dict[str, int] = {}
    enough = asyncio.Event()
    async with (
        bus_process(tmp_path, port, log_backend) as proc,
        channel(f"127.0.0.1:{port}") as chan,
    ):
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)

        async def publisher(worker: int) -> None:
            n = 0
            while True:
                ids = [f"w{worker}-{n + i}" for i in range(50)]
                n += 50
                request = eventbus_pb2.PublishBatchRequest(events=events(ids))
                try:
                    response = await stub.PublishBatch(request, timeout=5)
                except grpc.aio.AioRpcError:
                    return  # the bus died mid-call: this batch was never acknowledged
                for result in response.results:
                    acknowledged[result.id] = result.sequence
                if len(acknowledged) >= 3000:
                    enough.set()

        async def stream_publisher(worker: int) -> None:
            async def messages() -> AsyncIterator[eventbus_pb2.PublishStreamRequest]:
                # Never waits for acks: the bus's window is all that holds it back.
                for n in itertools.count(0, 50):
                    ids = [f"w{worker}-{n + i}" for i in range(50)]
                    yield eventbus_pb2.PublishStreamRequest(events=events(ids))

            try:
                async for ack in stub.PublishStream(messages()):
                    acknowledged.update(zip(ack.ids, ack.sequences, strict=True))
                    if len(acknowledged) >= 3000:
                        enough.set()
            except grpc.aio.AioRpcError:
                return  # the bus died: what was not acknowledged may or may not be stored

        publish = publisher if via == "PublishBatch" else stream_publisher
        tasks = [asyncio.create_task(publish(w)) for w in range(4)]
        await asyncio.wait_for(enough.wait(), 60)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*tasks), 30)

    async with bus_process(tmp_path, port, log_backend), channel(f"127.0.0.1:{port}") as chan:
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
        stats = await stub.GetStats(eventbus_pb2.GetStatsRequest())
        stored: dict[str, int] = {}
        call = stub.Subscribe(eventbus_pb2.SubscribeRequest(start=eventbus_pb2.START_POSITION_ALL))
        while len(stored) < stats.head_sequence:
            message = await asyncio.wait_for(call.read(), 30)
            stored.update((e.id, e.sequence) for e in message.events)
        call.cancel()
        missing = {i: s for i, s in acknowledged.items() if stored.get(i) != s}
        assert not missing, f"{len(missing)} acknowledged events lost or moved"
        assert sorted(stored.values()) == list(range(1, stats.head_sequence + 1))
        # Publishing again after the crash continues the sequence and suppresses repeats.
        again = await stub.Publish(
            eventbus_pb2.PublishRequest(
                id="w0-0", event_type="crash.test", source_domain="ai_domain"
            )
        )
        assert again.duplicate
        assert again.sequence == acknowledged["w0-0"]
