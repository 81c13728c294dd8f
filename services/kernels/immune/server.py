"""Wires the immune core, its peers, relay and servicers into the shared runtime."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from grace.domain.v1 import domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.guardian.v1 import guardian_pb2_grpc
from grace.kernels.immune.v1 import immune_pb2, immune_pb2_grpc
from services.common.bus_client import EventBusPublisher
from services.common.channels import channel
from services.common.governance_client import GovernanceClient, GovernanceGate
from services.common.identity import ComponentIdentity
from services.common.outbox import OutboxRelay, Publisher, flush_and_close
from services.common.server import Service
from services.common.storage import Database
from services.common.timestamps import from_timestamp
from services.kernels import domain
from services.kernels.immune.config import CAPABILITIES, SERVICE, ImmuneConfig
from services.kernels.immune.immune import Immune
from services.kernels.immune.model import MetricPoint
from services.kernels.immune.peers import GuardianHealer, MemoryExperience, keep_subscribed
from services.kernels.immune.playbooks import Experience, LocalExperience, SharedExperience
from services.kernels.immune.remediation import Healer, Remediator
from services.kernels.immune.servicer import ImmuneServicer
from services.kernels.immune.store import ImmuneStore
from services.kernels.immune.system_heal import SystemHeal
from services.kernels.registration import keep_registered, mounted, peer_health_of

SERVICE_NAME = immune_pb2.DESCRIPTOR.services_by_name["ImmuneService"].full_name
VERSION = "0.1.0"
EVENT_PATTERNS = ("metrics.*", "domain.call.*")

log = logging.getLogger(__name__)


class ImmuneServer(Service):
    """The immune kernel as a Grace service.

    Args:
        config: Server and immune settings.
        bus: Publisher of events; None means the event bus at the configured address.
        healer: Runs playbooks; None means Guardian at the configured address.
        gate: Governance; None means governance at the configured address.
        experience: Shared playbook records; None means shared memory at the configured
            address (with the local record as fallback).
        clock: Injectable clock for tests.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self,
        config: ImmuneConfig,
        *,
        bus: Publisher | None = None,
        healer: Healer | None = None,
        gate: GovernanceGate | None = None,
        experience: Experience | None = None,
        clock: Callable[[], float] = time.time,
        schema: str | None = None,
    ) -> None:
        self.config = config
        self.peer_health = peer_health_of(config.registration, config.server.env)
        self._healer = healer
        self._gate = gate
        self._experience = experience
        self._clock = clock
        self._channels: list[grpc.aio.Channel] = []
        self._client: GovernanceClient | None = None
        store = ImmuneStore(Database(config.server.database_url, schema=schema))
        # The remediator needs client channels, which bind to the running loop: it is
        # built in `start`.
        self.immune = Immune(store, config.detector, None, clock, config.telemetry)
        self.publisher = bus or EventBusPublisher(config.eventbus_address)
        self.relay = OutboxRelay(
            self.immune.events, self.publisher, poll_interval_s=config.relay_interval_s
        )
        self.immune.on_commit(self.relay.wake)
        self.system_heal = SystemHeal(self._guardian_stub, self.immune, clock)
        self._guardian: guardian_pb2_grpc.GuardianServiceAsyncStub | None = None
        self.identity = ComponentIdentity.of(
            SERVICE, config.server, self.publisher, self.relay.wake
        )

    def _guardian_stub(self) -> guardian_pb2_grpc.GuardianServiceAsyncStub:
        if self._guardian is None:
            chan = self._channel(self.config.guardian_address)
            self._guardian = guardian_pb2_grpc.GuardianServiceStub(chan)
        return self._guardian

    def _channel(self, address: str) -> grpc.aio.Channel:
        chan = channel(address)
        self._channels.append(chan)
        return chan

    def _remediator(self) -> Remediator:
        config = self.config
        healer = self._healer or GuardianHealer(self._channel(config.guardian_address))
        gate = self._gate
        if gate is None:
            self._client = GovernanceClient(
                config.governance_address,
                fallback_mode=config.governance_fallback,
                deadline_s=config.governance_deadline_s,
            )
            gate = self._client
        shared = self._experience or MemoryExperience(self._channel(config.memory_address))
        return Remediator(
            config.remediation,
            healer,
            gate,
            SharedExperience(shared, LocalExperience(self.immune.store)),
            self._clock,
            self._client.wait_for_approval if self._client is not None else None,
        )

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        immune_pb2_grpc.add_ImmuneServiceServicer_to_server(ImmuneServicer(self.immune), server)
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            domain.KernelDomainServicer(
                SERVICE,
                VERSION,
                CAPABILITIES,
                {
                    "report_metrics": domain.KernelAction(
                        self._report, "Takes metric points: {points: [{component, metric, value}]}"
                    ),
                    **self.system_heal.actions(),
                },
                on_event=self._on_event,
                event_patterns=EVENT_PATTERNS,
            ),
            server,
        )
        return [SERVICE_NAME, domain.SERVICE_NAME, *mounted(self.peer_health, server)]

    async def _report(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        now = time.time()
        raw = data.get("points") or []
        points = [
            MetricPoint(
                str(p.get("component", "")),
                str(p.get("metric", "")),
                float(p.get("value", float("nan"))),
                now,
            )
            for p in raw
            if isinstance(p, dict)
        ]
        anomalies = await self.immune.report(points)
        return {"accepted": len(points), "anomalies": [a.to_json() for a in anomalies]}

    async def _on_event(self, event: event_pb2.Event) -> bool:
        when = from_timestamp(event.time) or time.time()
        points = self.immune.metrics_from_event(
            event.event_type, domain.struct_to_dict(event.data), when
        )
        if points:
            await self.immune.report(points)
        return True  # processed (an event without metrics has nothing to retry)

    async def start(self) -> None:
        if self.config.remediate:
            self.immune.remediator = self._remediator()
        await self.immune.open()
        self.identity.start()
        self.spawn(self.relay.run(), "immune-relay")
        self.spawn(self.immune.run(), "immune-remediation")
        if self.config.subscribe:
            self.spawn(
                keep_subscribed(self.config.eventbus_address, SERVICE, EVENT_PATTERNS),
                "immune-subscription",
            )
        if self.config.registration is not None:
            self.spawn(
                keep_registered(self.config.registration, self.bound_port, self.peer_health),
                "immune-registration",
            )

    async def stop(self) -> None:
        await self.immune.close()
        await self.identity.stop()
        await flush_and_close([self.relay], [self.publisher])
        if self._client is not None:
            await self._client.close()
        for chan in self._channels:
            await chan.close()
        await self.immune.store.close()
