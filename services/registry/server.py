"""Wires the registry core, its store and its servicer into the shared server runtime."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.bus_client import EventBusPublisher
from services.common.identity import ComponentIdentity
from services.common.outbox import OutboxRelay
from services.common.server import Service
from services.common.storage import Database
from services.registry.config import RegistryConfig
from services.registry.federation import Federation
from services.registry.model import Change
from services.registry.registry import Clock, Registry
from services.registry.servicer import RegistryServicer
from services.registry.store import RegistryStore

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name


class RegistryServer(Service):
    """The registry as a Grace service.

    Args:
        config: Server and registry settings.
        clock: Injectable clock for tests.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self, config: RegistryConfig, *, clock: Clock | None = None, schema: str | None = None
    ) -> None:
        self.config = config
        store = RegistryStore(Database(config.server.database_url, schema=schema))
        self.registry = Registry(store, config.settings, clock)
        # Lifecycle events reach the bus through the outbox, whether or not it is up now.
        self.publisher = EventBusPublisher.from_env(config.server.env)
        self.relay = OutboxRelay(store.outbox, self.publisher)
        # Its events are signed once the trust kernel holds the registry's key.
        self.identity = ComponentIdentity.of(
            "registry", config.server, self.publisher, self.relay.wake
        )
        self.registry.add_listener(self._wake_relay)
        self.federation = Federation(
            self.registry, store.outbox, config.federation, wake=self.relay.wake
        )

    async def _wake_relay(self, _change: Change) -> None:
        self.relay.wake()

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(self.registry, self.federation), server
        )
        return [SERVICE_NAME]

    async def start(self) -> None:
        await self.registry.open()
        self.spawn(self.registry.run_sweeper(self.config.sweep_interval_s), "registry-sweeper")
        self.spawn(self.relay.run(), "registry-outbox")
        self.identity.start()

    async def begin_shutdown(self) -> None:
        await self.registry.close()

    async def stop(self) -> None:
        await self.identity.stop()
        await self.publisher.close()
        await self.registry.store.close()
