"""Wires the scheduler core, its peers, outboxes and servicers into the shared runtime.

Besides SchedulerService, the kernel serves `grace.domain.v1.DomainService`, so a workflow
step can target domain `scheduler` (or capability `scheduling`): its actions take the JSON
of the matching SchedulerService request and answer the JSON of its response.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from grace.domain.v1 import domain_pb2_grpc
from grace.kernels.scheduler.v1 import scheduler_pb2 as pb
from grace.kernels.scheduler.v1 import scheduler_pb2_grpc
from services.common.action_peers import PeerClients, Peers
from services.common.bus_client import EventBusPublisher
from services.common.errors import InvalidArgument
from services.common.governance_client import GovernanceClient, GovernanceGate
from services.common.outbox import OutboxRelay, Publisher, flush_and_close
from services.common.server import Service
from services.common.storage import Database
from services.kernels import domain
from services.kernels.registration import keep_registered, mounted, peer_health_of
from services.kernels.scheduler.config import CAPABILITIES, SERVICE, SchedulerConfig
from services.kernels.scheduler.scheduler import Scheduler
from services.kernels.scheduler.servicer import SchedulerServicer
from services.kernels.scheduler.store import SchedulerStore
from services.kernels.sinks import ImmutableLogPublisher

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SchedulerService"].full_name
VERSION = "0.1.0"


def _request_id(idempotency_key: str) -> str:
    return f"step-{hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]}"


class SchedulerServer(Service):
    """The scheduler kernel as a Grace service.

    Args:
        config: Server and scheduler settings.
        peers: What firings call; None means the orchestrator and registry configured.
        gate: Governance; None means governance at the configured address.
        bus: Publisher of events; None means the event bus at the configured address.
        immutable_log: Publisher of log entries; None means the configured immutable log.
        clock: Injectable wall clock for tests.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self,
        config: SchedulerConfig,
        *,
        peers: Peers | None = None,
        gate: GovernanceGate | None = None,
        bus: Publisher | None = None,
        immutable_log: Publisher | None = None,
        clock: Callable[[], float] = time.time,
        schema: str | None = None,
    ) -> None:
        self.config = config
        self.peer_health = peer_health_of(config.registration, config.server.env)
        self._clients: PeerClients | None = None
        if peers is None:
            # A firing is not tried again after a failure: one due while the orchestrator
            # starts (at boot, it starts beside the scheduler) waits for it instead.
            self._clients = PeerClients(
                config.orchestrator_address,
                config.registry_address,
                timeout_s=config.action_timeout_s,
                wait_for_orchestrator=True,
            )
            peers = self._clients
        self._governance: GovernanceClient | None = None
        if gate is None:
            self._governance = GovernanceClient(
                config.governance_address,
                fallback_mode=config.governance_fallback,
                deadline_s=config.governance_deadline_s,
            )
            gate = self._governance
        store = SchedulerStore(Database(config.server.database_url, schema=schema))
        self.scheduler = Scheduler(store, peers, gate, config.settings, clock)
        self.publishers: list[Publisher] = [
            bus or EventBusPublisher(config.eventbus_address),
            immutable_log or ImmutableLogPublisher(config.immutable_log_address),
        ]
        self.relays = [
            OutboxRelay(outbox, publisher, poll_interval_s=config.relay_interval_s)
            for outbox, publisher in zip(
                (self.scheduler.events, self.scheduler.log_entries), self.publishers, strict=True
            )
        ]
        for relay in self.relays:
            self.scheduler.on_commit(relay.wake)
        self.servicer = SchedulerServicer(self.scheduler)

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(self.servicer, server)
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            domain.KernelDomainServicer(SERVICE, VERSION, CAPABILITIES, self._actions()), server
        )
        return [SERVICE_NAME, domain.SERVICE_NAME, *mounted(self.peer_health, server)]

    def _actions(self) -> dict[str, domain.KernelAction]:
        s = self.servicer

        def via(
            method: Callable[[Any, Any], Awaitable[Message]],
            request_type: type[Message],
            *,
            request_id_field: str = "",
        ) -> domain.Handler:
            async def handle(data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
                request = request_type()
                try:
                    json_format.ParseDict(data, request)
                except json_format.ParseError as exc:
                    raise InvalidArgument("input", str(exc)) from None
                if request_id_field and idempotency_key and not getattr(request, request_id_field):
                    setattr(request, request_id_field, _request_id(idempotency_key))
                response = await method(request, None)
                return json_format.MessageToDict(response, preserving_proto_field_name=True)

            return handle

        async def undo_create(
            data: dict[str, Any], output: dict[str, Any], idempotency_key: str
        ) -> dict[str, Any]:
            schedule_id = output.get("schedule", {}).get("schedule_id", "")
            if schedule_id:
                with contextlib.suppress(Exception):
                    await self.scheduler.delete(schedule_id)
            return {"deleted": schedule_id}

        return {
            "create_schedule": domain.KernelAction(
                via(s.CreateSchedule, pb.CreateScheduleRequest, request_id_field="request_id"),
                "Creates a schedule: CreateScheduleRequest as JSON "
                "({schedule_id, spec: {cron|interval|once, workflow|domain|event|task, owner}})",
                undo_create,
            ),
            "get_schedule": domain.KernelAction(
                via(s.GetSchedule, pb.GetScheduleRequest), "Returns a schedule: {schedule_id}"
            ),
            "pause_schedule": domain.KernelAction(
                via(s.PauseSchedule, pb.PauseScheduleRequest), "Pauses: {schedule_id, reason}"
            ),
            "resume_schedule": domain.KernelAction(
                via(s.ResumeSchedule, pb.ResumeScheduleRequest), "Resumes: {schedule_id}"
            ),
            "trigger_schedule": domain.KernelAction(
                via(s.TriggerSchedule, pb.TriggerScheduleRequest, request_id_field="request_id"),
                "Fires a schedule now, once per step: {schedule_id}",
            ),
            "delete_schedule": domain.KernelAction(
                via(s.DeleteSchedule, pb.DeleteScheduleRequest), "Deletes: {schedule_id}"
            ),
        }

    async def start(self) -> None:
        await self.scheduler.open()
        for i, relay in enumerate(self.relays):
            self.spawn(relay.run(), f"scheduler-relay-{i}")
        self.spawn(self.scheduler.run(), "scheduler-loop")
        if self.config.registration is not None:
            self.spawn(
                keep_registered(self.config.registration, self.bound_port, self.peer_health),
                "scheduler-registration",
            )

    async def stop(self) -> None:
        await self.scheduler.close()
        await flush_and_close(self.relays, self.publishers)
        if self._governance is not None:
            await self._governance.close()
        if self._clients is not None:
            await self._clients.close()
        await self.scheduler.store.close()
