"""Wires the shared memory core, its store, its outbox relay and its servicer together."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import grpc

from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.bus_client import EventBusPublisher
from services.common.identity import ComponentIdentity
from services.common.outbox import OutboxRelay, Publisher, flush_and_close
from services.common.server import Service
from services.common.storage import Database
from services.memory.config import MemoryConfig
from services.memory.memory import SOURCE, SharedMemory
from services.memory.servicer import MemoryServicer
from services.memory.store import MemoryStore

SERVICE_NAME = memory_pb2.DESCRIPTOR.services_by_name["SharedMemoryService"].full_name

log = logging.getLogger(__name__)


class MemoryServer(Service):
    """The shared memory as a Grace service.

    Args:
        config: Server and memory settings.
        publisher: Where announcements go; None means the event bus at
            `config.eventbus_address` (`EventBusPublisher`).
        clock: Injectable clock for tests.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self,
        config: MemoryConfig,
        *,
        publisher: Publisher | None = None,
        clock: Callable[[], float] = time.time,
        schema: str | None = None,
    ) -> None:
        self.config = config
        store = MemoryStore(Database(config.server.database_url, schema=schema))
        self.memory = SharedMemory(store, config.settings, clock)
        self.publisher: Publisher = (
            publisher if publisher is not None else EventBusPublisher(config.eventbus_address)
        )
        self.relay = OutboxRelay(
            self.memory.outbox, self.publisher, poll_interval_s=config.relay_interval_s
        )
        self.memory.on_commit(self.relay.wake)
        self.identity = ComponentIdentity.of(SOURCE, config.server, self.publisher, self.relay.wake)

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        memory_pb2_grpc.add_SharedMemoryServiceServicer_to_server(
            MemoryServicer(self.memory), server
        )
        return [SERVICE_NAME]

    async def start(self) -> None:
        await self.memory.open()
        self.spawn(self.relay.run(), "memory-outbox-relay")
        self.identity.start()

    async def begin_shutdown(self) -> None:
        self.memory.close()

    async def stop(self) -> None:
        await self.identity.stop()
        await flush_and_close([self.relay], [self.publisher])
        await self.memory.store.close()
