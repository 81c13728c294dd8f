"""Registry lifecycle events travel through the outbox to the real event bus."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.storage import Database
from services.eventbus.server import EventBusServer
from services.registry.model import Registration
from services.registry.registry import Registry
from services.registry.server import RegistryServer
from services.registry.store import RegistryStore
from tests.conftest import DatabaseTarget
from tests.eventbus.conftest import bus_config
from tests.registry.conftest import registry_config
from tests.support import ManualClock, serving


async def test_each_change_is_enqueued_in_the_same_transaction(
    database: DatabaseTarget, clock: ManualClock
) -> None:
    registry = Registry(RegistryStore(Database(database.url, schema=database.schema)), clock=clock)
    await registry.open()
    try:
        await registry.register(Registration("ai_domain", "127.0.0.1", 8202, ("ml",)))
        await registry.register(Registration("ai_domain", "127.0.0.1", 8203, ("ml",)))
        await registry.deregister("ai_domain")
        pending = await registry.store.outbox.pending(10)
    finally:
        await registry.close()
        await registry.store.close()
    assert [e.event_type for e in pending] == [
        "domain.registered",
        "domain.updated",
        "domain.removed",
    ]
    assert pending[1].data == {
        "domain_id": "ai_domain",
        "address": "127.0.0.1:8203",
        "capabilities": ["ml"],
        "status": "HEALTHY",
        "revision": 2,
        "instances": [{"instance_id": "", "address": "127.0.0.1:8203", "status": "HEALTHY"}],
    }
    assert {e.source_domain for e in pending} == {"registry"}


async def test_a_registration_reaches_the_real_event_bus(tmp_path: Path) -> None:
    bus = EventBusServer(bus_config(tmp_path / "bus"))
    async with serving(bus.config.server, bus) as (bus_server, bus_chan):
        config = registry_config(tmp_path / "registry")
        env = {"GRACE_EVENTBUS_ADDR": bus_server.address}
        config = replace(config, server=replace(config.server, env=env))
        registry = RegistryServer(config)
        async with serving(config.server, registry) as (_, registry_chan):
            events = eventbus_pb2_grpc.EventBusServiceStub(bus_chan)
            call = events.Subscribe(
                eventbus_pb2.SubscribeRequest(
                    pattern="domain.*", start=eventbus_pb2.START_POSITION_ALL
                )
            )
            await registry_pb2_grpc.RegistryServiceStub(registry_chan).RegisterDomain(
                registry_pb2.RegisterDomainRequest(
                    domain_id="ai_domain", host="127.0.0.1", port=8202, capabilities=["ml"]
                )
            )
            message = await asyncio.wait_for(call.read(), 30)
            call.cancel()
            event = message.events[0]
            assert (event.event_type, event.source_domain, event.subject) == (
                "domain.registered",
                "registry",
                "ai_domain",
            )
            assert event.data["address"] == "127.0.0.1:8202"
            assert event.data["status"] == "HEALTHY"
            # Once the bus confirmed it, the event leaves the outbox.
            for _ in range(200):
                if await registry.registry.store.outbox.count() == 0:
                    break
                await asyncio.sleep(0.05)
            assert await registry.registry.store.outbox.count() == 0
