"""Wires the governance core, its store, relays and servicers into the shared runtime."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import grpc

from grace.domain.v1 import domain_pb2_grpc
from grace.kernels.governance.v1 import governance_pb2, governance_pb2_grpc
from services.common.bus_client import EventBusPublisher
from services.common.identity import ComponentIdentity
from services.common.outbox import OutboxRelay, Publisher, flush_and_close
from services.common.server import Service
from services.common.storage import Database
from services.kernels import domain
from services.kernels.governance.actions import actions
from services.kernels.governance.config import CAPABILITIES, SERVICE, GovernanceConfig
from services.kernels.governance.governance import Governance
from services.kernels.governance.servicer import GovernanceServicer
from services.kernels.governance.store import GovernanceStore
from services.kernels.registration import keep_registered, mounted, peer_health_of
from services.kernels.sinks import ImmutableLogPublisher

SERVICE_NAME = governance_pb2.DESCRIPTOR.services_by_name["GovernanceService"].full_name
VERSION = "0.1.0"

log = logging.getLogger(__name__)


class GovernanceServer(Service):
    """The governance kernel as a Grace service.

    Args:
        config: Server and governance settings.
        bus: Publisher of events; None means the event bus at the configured address.
        immutable_log: Publisher of log entries; None means the configured immutable log.
        clock: Injectable clock for tests.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self,
        config: GovernanceConfig,
        *,
        bus: Publisher | None = None,
        immutable_log: Publisher | None = None,
        clock: Callable[[], float] = time.time,
        schema: str | None = None,
    ) -> None:
        self.config = config
        self.peer_health = peer_health_of(config.registration, config.server.env)
        store = GovernanceStore(Database(config.server.database_url, schema=schema))
        self.governance = Governance(store, config.settings, clock)
        self.publishers: list[Publisher] = [
            bus or EventBusPublisher(config.eventbus_address),
            immutable_log or ImmutableLogPublisher(config.immutable_log_address),
        ]
        self.relays = [
            OutboxRelay(outbox, publisher, poll_interval_s=config.relay_interval_s)
            for outbox, publisher in zip(
                (self.governance.events, self.governance.log_entries),
                self.publishers,
                strict=True,
            )
        ]
        for relay in self.relays:
            self.governance.on_commit(relay.wake)
        # Events to the bus are signed once the trust kernel holds governance's key.
        self.identity = ComponentIdentity.of(
            SERVICE, config.server, self.publishers[0], self.relays[0].wake
        )

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        governance_pb2_grpc.add_GovernanceServiceServicer_to_server(
            GovernanceServicer(self.governance), server
        )
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            domain.KernelDomainServicer(SERVICE, VERSION, CAPABILITIES, actions(self.governance)),
            server,
        )
        return [SERVICE_NAME, domain.SERVICE_NAME, *mounted(self.peer_health, server)]

    async def start(self) -> None:
        await self.governance.open()
        self.identity.start()
        for i, relay in enumerate(self.relays):
            self.spawn(relay.run(), f"governance-relay-{i}")
        self.spawn(
            self.governance.approvals.run_sweeper(self.config.sweep_interval_s),
            "governance-approval-sweeper",
        )
        if self.config.registration is not None:
            self.spawn(
                keep_registered(self.config.registration, self.bound_port, self.peer_health),
                "governance-registration",
            )

    async def begin_shutdown(self) -> None:
        await self.governance.close()

    async def stop(self) -> None:
        await self.governance.stop()
        await self.identity.stop()
        await flush_and_close(self.relays, self.publishers)
        await self.governance.store.close()
