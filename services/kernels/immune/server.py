"""Wires the immune core, its peers, relay and servicers into the shared runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.kernels.immune.v1 import immune_pb2, immune_pb2_grpc
from services.common.channels import channel
from services.common.governance_client import GovernanceClient, GovernanceGate
from services.common.outbox import OutboxRelay, Publisher
from services.common.server import Service
from services.common.storage import Database
from services.common.timestamps import from_timestamp
from services.kernels import sinks
from services.kernels.domain import Action, KernelDomainServicer, RegistryLease, struct_to_dict
from services.kernels.immune.config import ImmuneConfig
from services.kernels.immune.immune import Immune
from services.kernels.immune.model import MetricPoint
from services.kernels.immune.peers import GuardianHealer, MemoryExperience
from services.kernels.immune.playbooks import Experience, LocalExperience, SharedExperience
from services.kernels.immune.remediation import Healer, Remediator
from services.kernels.immune.servicer import ImmuneServicer
from services.kernels.immune.store import ImmuneStore

SERVICE_NAME = immune_pb2.DESCRIPTOR.services_by_name["ImmuneService"].full_name
DOMAIN_SERVICE_NAME = domain_pb2.DESCRIPTOR.services_by_name["DomainService"].full_name
VERSION = "0.1.0"
CAPABILITIES = ("immune", "anomaly_detection", "self_healing")
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
        store = ImmuneStore(Database(config.server.database_url, schema=schema))
        self._channels: list[grpc.aio.Channel] = []
        self._client: GovernanceClient | None = None
        remediator = None
        if config.remediate:
            if healer is None:
                healer = GuardianHealer(self._channel(config.guardian_address))
            if gate is None:
                self._client = GovernanceClient(
                    config.governance_address,
                    fallback_mode=config.governance_fallback,
                    deadline_s=config.governance_deadline_s,
                )
                gate = self._client
            if experience is None:
                experience = MemoryExperience(self._channel(config.memory_address))
            remediator = Remediator(
                config.remediation,
                healer,
                gate,
                SharedExperience(experience, LocalExperience(store)),
                clock,
                self._client.wait_for_approval if self._client is not None else None,
            )
        self.immune = Immune(store, config.detector, remediator, clock)
        self.relay = OutboxRelay(
            self.immune.events,
            bus or sinks.eventbus_publisher(config.eventbus_address),
            poll_interval_s=config.relay_interval_s,
        )
        self.immune.on_commit(self.relay.wake)
        self.port = config.server.port
        self.lease = RegistryLease(
            config.registry_address if config.register else "",
            config.domain_id,
            lambda: self.port,
            CAPABILITIES,
            VERSION,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _channel(self, address: str) -> grpc.aio.Channel:
        chan = channel(address)
        self._channels.append(chan)
        return chan

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        immune_pb2_grpc.add_ImmuneServiceServicer_to_server(ImmuneServicer(self.immune), server)
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            KernelDomainServicer(
                self.config.domain_id,
                VERSION,
                CAPABILITIES,
                [Action("report_metrics", "Takes metric points: {points: [...]}", self._report)],
                on_event=self._on_event,
                event_patterns=EVENT_PATTERNS,
            ),
            server,
        )
        return [SERVICE_NAME, DOMAIN_SERVICE_NAME]

    async def _report(
        self, data: dict[str, Any], call: domain_pb2.ExecuteRequest
    ) -> dict[str, Any]:
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

    async def _on_event(self, event: event_pb2.Event) -> domain_pb2.DeliveryOutcome.ValueType:
        when = from_timestamp(event.time) or time.time()
        points = self.immune.metrics_from_event(event.event_type, struct_to_dict(event.data), when)
        if not points:
            return domain_pb2.DELIVERY_OUTCOME_DROP
        await self.immune.report(points)
        return domain_pb2.DELIVERY_OUTCOME_ACK

    async def start(self) -> None:
        await self.immune.open()
        self._tasks = [
            asyncio.create_task(self.relay.run(), name="immune-relay"),
            asyncio.create_task(self.immune.run(), name="immune-remediation"),
        ]
        if self.port:
            self._tasks.append(asyncio.create_task(self.lease.run(), name="immune-lease"))

    def serving_on(self, port: int) -> None:
        """Registers in the registry under `port` (for servers bound to port 0)."""
        self.port = port
        self._tasks.append(asyncio.create_task(self.lease.run(), name="immune-lease"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.immune.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.relay.drain_once(), timeout=2.0)
        if self._client is not None:
            await self._client.close()
        for chan in self._channels:
            await chan.close()
        await self.immune.store.close()
