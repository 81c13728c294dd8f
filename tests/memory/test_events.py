"""Shared memory announcements reach the real event bus, even after it was down."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.eventbus.server import EventBusServer
from services.memory.server import MemoryServer
from tests.eventbus.conftest import bus_config
from tests.memory.conftest import memory_config
from tests.support import eventually, free_port, serving


async def test_writes_succeed_with_the_bus_down_and_announcements_arrive_when_it_is_up(
    tmp_path: Path,
) -> None:
    bus_port = free_port()
    config = replace(memory_config(tmp_path / "memory"), eventbus_address=f"127.0.0.1:{bus_port}")
    memory = MemoryServer(config)  # the production publisher: EventBusPublisher
    async with serving(config.server, memory) as (_, memory_chan):
        stub = memory_pb2_grpc.SharedMemoryServiceStub(memory_chan)
        request = memory_pb2.ContributeRequest(
            domain_id="healing_domain", contribution_type="optimization"
        )
        request.content.update({"issue": "port_timeout", "solution": "restart_component"})
        created = await stub.Contribute(request)
        cid = created.contribution.contribution_id
        await stub.Verify(memory_pb2.VerifyRequest(contribution_id=cid, domain_id="ai_domain"))
        await stub.Apply(
            memory_pb2.ApplyRequest(
                contribution_id=cid, domain_id="ai_domain", outcome=memory_pb2.OUTCOME_SUCCESS
            )
        )
        await eventually(lambda: memory.relay.failures >= 1, within_s=10.0)
        assert await memory.memory.outbox.count() == 3

        bus_cfg = bus_config(tmp_path / "bus")
        bus_cfg = replace(bus_cfg, server=replace(bus_cfg.server, port=bus_port))
        async with serving(bus_cfg.server, EventBusServer(bus_cfg)) as (_, bus_chan):
            events = eventbus_pb2_grpc.EventBusServiceStub(bus_chan)
            # grpc shares one subchannel per address in a process, and the publisher's
            # failed attempts left it in reconnect backoff: wait for it to come up.
            call = events.Subscribe(
                eventbus_pb2.SubscribeRequest(
                    pattern="memory.*", start=eventbus_pb2.START_POSITION_ALL
                ),
                wait_for_ready=True,
            )
            received: list[eventbus_pb2.Event] = []
            while len(received) < 3:
                message = await asyncio.wait_for(call.read(), 60)
                received.extend(message.events)
            call.cancel()

            async def outbox_empty() -> bool:
                return await memory.memory.outbox.count() == 0

            for _ in range(1200):
                if await outbox_empty():
                    break
                await asyncio.sleep(0.05)

    assert [e.event_type for e in received] == [
        "memory.contributed",
        "memory.verified",
        "memory.applied",
    ]
    assert {(e.source_domain, e.subject) for e in received} == {("memory", cid)}
    assert received[2].data["outcome"] == "success"
    assert received[1].data["actor_domain"] == "ai_domain"
    assert await outbox_empty()
