"""Chaos on the JetStream backend: two bus instances on one stream of a private NATS
server, publishers and a durable consumer moving between them under load, one instance
killed with -9 and the NATS server restarted. Nothing acknowledged to a publisher is
lost, and the durable consumer never gets an event again after acknowledging it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from services.common.channels import channel
from services.eventbus.jetstream import JetStreamOptions
from tests.eventbus.conftest import bus_process, start_nats, wait_for_nats
from tests.support import free_port

pytestmark = pytest.mark.slow

Stub = eventbus_pb2_grpc.EventBusServiceStub


@dataclass
class Ledger:
    """What the clients saw."""

    acknowledged: dict[str, int] = field(default_factory=dict)  # event id -> sequence
    received: dict[str, int] = field(default_factory=dict)
    acked_through = 0  # the consumer's position, as its last successful Ack answered
    after_ack: list[int] = field(default_factory=list)  # sequences seen again after an Ack
    publish_failures = 0
    consumer_reconnects = 0


async def publisher(worker: int, stubs: list[Stub], ledger: Ledger, stop: asyncio.Event) -> None:
    """Publishes batches; a batch that fails is sent again, with the same ids, to the
    next instance until one acknowledges it."""
    turn = itertools.cycle(range(len(stubs)))
    for n in itertools.count(step=20):
        if stop.is_set():
            return
        request = eventbus_pb2.PublishBatchRequest(
            events=[
                event_pb2.Event(
                    id=f"w{worker}-{n + i}", event_type="chaos.tick", source_domain="ai"
                )
                for i in range(20)
            ]
        )
        while True:
            try:
                response = await stubs[next(turn)].PublishBatch(request, timeout=5)
                break
            except grpc.aio.AioRpcError:
                ledger.publish_failures += 1
                await asyncio.sleep(0.2)
        for result in response.results:
            assert result.status != eventbus_pb2.PUBLISH_STATUS_REJECTED, result.error
            ledger.acknowledged[result.id] = result.sequence


async def consumer(stubs: list[Stub], ledger: Ledger, done: asyncio.Event) -> None:
    """A durable consumer that acknowledges every message it gets, reconnecting to the
    other instance whenever its stream or an Ack fails."""
    start = eventbus_pb2.START_POSITION_ALL
    for index in itertools.cycle(range(len(stubs))):
        if done.is_set():
            return
        stub = stubs[index]
        call = stub.Subscribe(
            eventbus_pb2.SubscribeRequest(pattern="chaos.*", consumer="chaos", start=start)
        )
        try:
            async for message in call:
                for event in message.events:
                    if event.sequence <= ledger.acked_through:
                        ledger.after_ack.append(event.sequence)
                    ledger.received[event.id] = event.sequence
                last = message.events[-1].sequence
                answer = await stub.Ack(
                    eventbus_pb2.AckRequest(consumer="chaos", sequence=last), timeout=5
                )
                start = eventbus_pb2.START_POSITION_UNSPECIFIED  # resume after the Ack
                ledger.acked_through = max(ledger.acked_through, answer.acked_sequence)
                if done.is_set():
                    return
        except grpc.aio.AioRpcError:
            pass
        finally:
            call.cancel()
        ledger.consumer_reconnects += 1
        await asyncio.sleep(0.2)


async def test_a_killed_bus_and_a_restarted_nats_lose_nothing_acknowledged_and_repeat_no_ack(
    private_nats: tuple[int, Path], tmp_path: Path
) -> None:
    nats_port, store = private_nats
    nats = start_nats(nats_port, store)
    options = JetStreamOptions(
        servers=(f"nats://127.0.0.1:{nats_port}",), stream="CHAOS", subject_prefix="chaos"
    )
    ports = [free_port(), free_port()]
    ledger = Ledger()
    stop, done = asyncio.Event(), asyncio.Event()
    try:
        await wait_for_nats(nats_port)
        async with contextlib.AsyncExitStack() as stack:
            victim = await stack.enter_async_context(bus_process(tmp_path / "a", ports[0], options))
            await stack.enter_async_context(bus_process(tmp_path / "b", ports[1], options))
            chans = [
                await stack.enter_async_context(channel(f"127.0.0.1:{port}")) for port in ports
            ]
            stubs = [Stub(chan) for chan in chans]
            publishers = [asyncio.create_task(publisher(w, stubs, ledger, stop)) for w in range(3)]
            reader = asyncio.create_task(consumer(stubs, ledger, done))

            async def acknowledged(count: int) -> None:
                while len(ledger.acknowledged) < count:  # noqa: ASYNC110 (counted by tasks)
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(acknowledged(1500), 60)
            victim.send_signal(signal.SIGKILL)  # instance a dies mid-load
            await asyncio.wait_for(acknowledged(3000), 60)
            nats.send_signal(signal.SIGTERM)  # and the NATS server restarts
            await asyncio.to_thread(nats.wait)
            nats = start_nats(nats_port, store)
            await wait_for_nats(nats_port)
            await stack.enter_async_context(bus_process(tmp_path / "a", ports[0], options))
            await asyncio.wait_for(acknowledged(len(ledger.acknowledged) + 1500), 90)
            stop.set()
            await asyncio.wait_for(asyncio.gather(*publishers), 60)

            async def consumer_has_everything() -> None:
                while not ledger.acknowledged.keys() <= ledger.received.keys():  # noqa: ASYNC110
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(consumer_has_everything(), 90)
            done.set()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

            stored: dict[str, int] = {}
            token = ""
            while True:
                page = await stubs[1].GetHistory(
                    eventbus_pb2.GetHistoryRequest(page_size=1000, page_token=token)
                )
                stored.update((e.id, e.sequence) for e in page.events)
                token = page.next_page_token
                if not token:
                    break
        lost = {i: s for i, s in ledger.acknowledged.items() if stored.get(i) != s}
        print(
            f"\n{len(ledger.acknowledged)} events acknowledged, {len(lost)} lost; "
            f"{len(ledger.after_ack)} delivered again after their Ack; "
            f"{ledger.publish_failures} failed publish calls retried, "
            f"{ledger.consumer_reconnects} consumer reconnects"
        )
        assert not lost, f"{len(lost)} acknowledged events lost or moved"
        assert ledger.after_ack == []
        assert ledger.received.items() >= ledger.acknowledged.items()
        assert ledger.publish_failures > 0  # the chaos did reach the clients
    finally:
        nats.kill()
        nats.wait()
