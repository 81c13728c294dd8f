"""Wires the event bus core, its store and its servicer into the shared server runtime."""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc

from grace.eventbus.v1 import eventbus_pb2
from services.common.auth import vouches_for
from services.common.call_metrics import ImmuneReporter
from services.common.event_verification import EventVerifier, TrustKeySource
from services.common.server import Service
from services.common.storage import Database
from services.eventbus.bus import EventBus
from services.eventbus.config import EventBusConfig
from services.eventbus.delivery import PushDelivery
from services.eventbus.eventlog import Clock
from services.eventbus.jetstream import JetStreamLog
from services.eventbus.jetstream_push import jetstream_push
from services.eventbus.servicer import EventBusServicer, add_to_server
from services.eventbus.store import BusState, EventStore

SERVICE_NAME = eventbus_pb2.DESCRIPTOR.services_by_name["EventBusService"].full_name


class EventBusServer(Service):
    """The event bus as a Grace service.

    Args:
        config: Server and bus settings.
        clock: Injectable clock for tests.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self, config: EventBusConfig, *, clock: Clock | None = None, schema: str | None = None
    ) -> None:
        self.config = config
        self.keys = TrustKeySource(config.trust_address)
        verifier = EventVerifier(
            self.keys,
            config.verify_signatures,
            ttl_s=config.key_cache_ttl_s,
            vouched=lambda event: vouches_for(event.source_domain),
        )
        clock = clock or time.time
        store: BusState
        event_log: JetStreamLog | None = None
        push: PushDelivery | None = None
        if config.jetstream is None:
            store = EventStore(Database(config.server.database_url, schema=schema))
        else:  # everything in JetStream: the bus keeps nothing of its own
            event_log = JetStreamLog(config.jetstream, config.settings, clock)
            store, push = jetstream_push(event_log, config.settings, config.registry_address, clock)
        self.bus = EventBus(
            store, config.settings, config.registry_address, clock, verifier, event_log, push
        )
        # Publishes and deliveries go to the immune kernel's telemetry once per interval.
        self.reporter = (
            ImmuneReporter(
                config.immune_address,
                self.bus.traffic.tallies,
                interval_s=config.metrics_interval_s,
            )
            if config.immune_address
            else None
        )

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        add_to_server(EventBusServicer(self.bus), server)
        return [SERVICE_NAME]

    async def start(self) -> None:
        await self.bus.open()
        if self.reporter is not None:
            self.spawn(self.reporter.run(), "eventbus-telemetry")

    async def begin_shutdown(self) -> None:
        await self.bus.begin_close()

    async def stop(self) -> None:
        if self.reporter is not None:
            await self.reporter.close()
        await self.bus.close()
        await self.keys.close()
