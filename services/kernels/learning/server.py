"""Wires the learning core, shared memory, the outbox relay and registration into the
shared runtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from grace.domain.v1 import domain_pb2_grpc
from grace.kernels.learning.v1 import learning_pb2, learning_pb2_grpc
from services.common.bus_client import EventBusPublisher
from services.common.channels import channel
from services.common.identity import ComponentIdentity
from services.common.outbox import OutboxRelay, Publisher, flush_and_close
from services.common.server import Service
from services.common.storage import Database
from services.kernels import domain
from services.kernels.learning.config import CAPABILITIES, SERVICE, LearningConfig
from services.kernels.learning.learning import Contributor, Learning
from services.kernels.learning.servicer import LearningServicer
from services.kernels.learning.store import LearningStore
from services.kernels.registration import keep_registered
from services.kernels.sinks import ImmutableLogPublisher
from services.sdk.memory import MemoryClient

SERVICE_NAME = learning_pb2.DESCRIPTOR.services_by_name["LearningService"].full_name
VERSION = "0.1.0"


class MemoryContributor:
    """Contributes patterns to shared memory as domain `learning`."""

    def __init__(self, chan: grpc.aio.Channel) -> None:
        self._client = MemoryClient(SERVICE, chan)

    async def contribute(
        self,
        contribution_type: str,
        content: Mapping[str, Any],
        tags: Sequence[str],
        request_id: str,
    ) -> str:
        knowledge = await self._client.contribute(
            contribution_type, content, tags=tags, request_id=request_id
        )
        return knowledge.id


class LearningServer(Service):
    """The learning kernel as a Grace service.

    Args:
        config: Server and learning settings.
        bus: Publisher of events; None means the event bus at the configured address.
        immutable_log: Where log entries go; None means the immutable log at the
            configured address.
        memory: Shared memory; None means the memory at the configured address.
        clock: Injectable clock for tests.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self,
        config: LearningConfig,
        *,
        bus: Publisher | None = None,
        immutable_log: Publisher | None = None,
        memory: Contributor | None = None,
        clock: Callable[[], float] = time.time,
        schema: str | None = None,
    ) -> None:
        self.config = config
        self._memory = memory
        self._channels: list[grpc.aio.Channel] = []
        store = LearningStore(Database(config.server.database_url, schema=schema))
        self.learning = Learning(store, config.learning, memory, clock)
        self.publisher = bus or EventBusPublisher(config.eventbus_address)
        self.relay = OutboxRelay(
            self.learning.events, self.publisher, poll_interval_s=config.relay_interval_s
        )
        self.log_publisher = immutable_log or ImmutableLogPublisher(config.immutable_log_address)
        self.log_relay = OutboxRelay(
            self.learning.log_entries, self.log_publisher, poll_interval_s=config.relay_interval_s
        )
        self.learning.on_commit(self.relay.wake)
        self.learning.on_commit(self.log_relay.wake)
        self.identity = ComponentIdentity.of(
            SERVICE, config.server, self.publisher, self.relay.wake
        )

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        learning_pb2_grpc.add_LearningServiceServicer_to_server(
            LearningServicer(self.learning), server
        )
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            domain.KernelDomainServicer(
                SERVICE,
                VERSION,
                CAPABILITIES,
                {
                    "analyze": domain.KernelAction(
                        self._analyze, "Runs pattern detection now; returns the new patterns"
                    ),
                },
            ),
            server,
        )
        return [SERVICE_NAME, domain.SERVICE_NAME]

    async def _analyze(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        new, found = await self.learning.analyze()
        return {"found": found, "new_patterns": [row["record"] for row in new]}

    async def start(self) -> None:
        if self._memory is None and self.config.memory_address:
            chan = channel(self.config.memory_address)
            self._channels.append(chan)
            self.learning.memory = MemoryContributor(chan)
        await self.learning.open()
        self.identity.start()
        self.spawn(self.relay.run(), "learning-relay")
        self.spawn(self.log_relay.run(), "learning-log-relay")
        self.spawn(self.learning.run(), "learning-analysis")
        if self.config.registration is not None:
            self.spawn(
                keep_registered(self.config.registration, self.bound_port),
                "learning-registration",
            )

    async def stop(self) -> None:
        await self.identity.stop()
        await flush_and_close([self.relay, self.log_relay], [self.publisher, self.log_publisher])
        for chan in self._channels:
            await chan.close()
        await self.learning.store.close()
