"""Wires the tasks cores, their peers, relays and servicers into the shared runtime."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from grace.domain.v1 import domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.kernels.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from services.common.backoff import Backoff, Retries
from services.common.bus_client import EventBusPublisher
from services.common.channels import channel
from services.common.governance_client import GovernanceClient, GovernanceGate
from services.common.outbox import Outbox, OutboxRelay, Publisher, flush_and_close
from services.common.server import Service
from services.common.storage import Database
from services.common.subscriptions import Subscriptions
from services.common.timestamps import from_timestamp
from services.kernels import domain
from services.kernels.immune.peers import MemoryExperience
from services.kernels.immune.playbooks import Experience, SharedExperience
from services.kernels.registration import keep_registered, mounted, peer_health_of
from services.kernels.sinks import ImmutableLogPublisher
from services.kernels.tasks import store as tables
from services.kernels.tasks.config import CAPABILITIES, SERVICE, TasksConfig
from services.kernels.tasks.halo import Halo, Sources
from services.kernels.tasks.peers import GovernanceApprovals, GrpcSources, RemedyTarget
from services.kernels.tasks.servicer import TasksServicer
from services.kernels.tasks.squad import Approvals, Squad, Target
from services.kernels.tasks.store import TasksStore

SERVICE_NAME = tasks_pb2.DESCRIPTOR.services_by_name["TasksService"].full_name
VERSION = "0.1.0"
CONTRIBUTION_TYPE = "task_outcome"
APPROVAL_POLICY = "tasks-approval"

log = logging.getLogger(__name__)


class LocalExperience:
    """Remedy outcomes in the kernel's own database (the copy kept beside shared memory).

    Args:
        store: The tasks store.
    """

    def __init__(self, store: TasksStore) -> None:
        self.store = store

    async def outcomes(self, kind: str, playbooks: Sequence[str]) -> dict[str, Any]:
        records = await self.store.outcomes(kind)
        return {p: records[(kind, p)] for p in playbooks if (kind, p) in records}

    async def record(self, kind: str, playbook: str, success: bool, detail: str) -> None:
        await self.store.record_outcome(kind, playbook, success)


class TasksServer(Service):
    """The tasks kernel as a Grace service.

    Args:
        config: Server and loop settings.
        bus: Publisher of events; None means the event bus at the configured address.
        immutable_log: Publisher of log entries; None means the configured immutable log.
        gate: Governance's decisions; None means governance at the configured address.
        approvals: Governance's approval queue; None means the same governance.
        target: Runs remedies; None means Guardian, the orchestrator and the domains.
        sources: What cycles read; None means the platform's services.
        experience: Shared remedy records; None means shared memory (with the local copy
            as fallback).
        clock: Injectable clock for tests.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self,
        config: TasksConfig,
        *,
        bus: Publisher | None = None,
        immutable_log: Publisher | None = None,
        gate: GovernanceGate | None = None,
        approvals: Approvals | None = None,
        target: Target | None = None,
        sources: Sources | None = None,
        experience: Experience | None = None,
        clock: Callable[[], float] = time.time,
        schema: str | None = None,
    ) -> None:
        self.config = config
        self.peer_health = peer_health_of(config.registration, config.server.env)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._client: GovernanceClient | None = None
        self._approvals: GovernanceApprovals | None = None
        if gate is None or approvals is None:
            self._client = GovernanceClient(
                config.addresses["governance"],
                fallback_mode=config.governance_fallback,
                deadline_s=config.governance_deadline_s,
                # While governance cannot answer, what would need a person is refused.
                fail_closed_at="high" if config.approval_risk == "off" else config.approval_risk,
            )
            self._approvals = GovernanceApprovals(self._client)
        self.store = TasksStore(Database(config.server.database_url, schema=schema))
        events = Outbox(self.store.db, tables.events_outbox, SERVICE)
        log_entries = Outbox(self.store.db, tables.log_outbox, SERVICE)
        self.publishers: list[Publisher] = [
            bus or EventBusPublisher(config.addresses["eventbus"]),
            immutable_log or ImmutableLogPublisher(config.addresses["immutable_log"]),
        ]
        self.relays = [
            OutboxRelay(outbox, publisher, poll_interval_s=config.relay_interval_s)
            for outbox, publisher in zip((events, log_entries), self.publishers, strict=True)
        ]
        self._shared = experience
        self._local = LocalExperience(self.store)
        self.squad = Squad(
            self.store,
            gate or self._gate(),
            approvals or self._approvals_or_fail(),
            target or RemedyTarget(self._channel_for),
            config.squad,
            events,
            log_entries,
            self._wake_relays,
            clock,
        )
        self.halo = Halo(
            self.store,
            self.squad,
            sources
            or GrpcSources(
                self._channel_for,
                memory_domains=config.memory_domains,
                window_s=config.halo.analysis.window_s,
                clock=clock,
                timeout_s=config.halo.source_timeout_s,
            ),
            SharedExperience(experience, self._local) if experience else self._local,
            config.halo,
            events,
            log_entries,
            self._wake_relays,
            clock,
            SERVICE,
        )
        self.subscriptions: Subscriptions | None = None

    def _gate(self) -> GovernanceGate:
        assert self._client is not None
        return self._client

    def _approvals_or_fail(self) -> Approvals:
        assert self._approvals is not None
        return self._approvals

    def _wake_relays(self) -> None:
        for relay in self.relays:
            relay.wake()

    def _channel_for(self, name: str) -> grpc.aio.Channel:
        """A channel to a peer by component name (or a `host:port`), opened on first use:
        channels bind to the running loop."""
        address = self.config.addresses.get(name, name)
        chan = self._channels.get(address)
        if chan is None:
            chan = channel(address)
            self._channels[address] = chan
        return chan

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        tasks_pb2_grpc.add_TasksServiceServicer_to_server(
            TasksServicer(self.halo, self.squad), server
        )
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            domain.KernelDomainServicer(
                SERVICE,
                VERSION,
                CAPABILITIES,
                {
                    "run_cycle": domain.KernelAction(
                        self._run_cycle,
                        "Runs an analysis cycle now ({reason}); returns the cycle's weak "
                        "points and the tasks it proposed (what a schedule calls)",
                    ),
                    "stats": domain.KernelAction(
                        self._stats, "Counts of cycles and tasks, and the remedies' records"
                    ),
                },
                on_event=self._on_event,
                event_patterns=self.config.halo.triggers,
            ),
            server,
        )
        return [SERVICE_NAME, domain.SERVICE_NAME, *mounted(self.peer_health, server)]

    async def _run_cycle(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        reason = data.get("reason", "")
        cycle, tasks = await self.halo.run_cycle(
            "schedule", str(reason) if isinstance(reason, str) else ""
        )
        return {
            "cycle_id": cycle.cycle_id,
            "degraded": cycle.degraded,
            "weak_points": [w.to_json() for w in cycle.weak_points],
            "tasks": [{"task_id": t.task_id, "state": t.state.value} for t in tasks],
        }

    async def _stats(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        stats = await self.halo.stats()
        return {
            "cycles": stats.cycles,
            "tasks_by_state": stats.tasks_by_state,
            "outcomes": [
                {
                    "kind": kind,
                    "remedy": s.playbook,
                    "successes": s.successes,
                    "failures": s.failures,
                    "score": s.score,
                }
                for kind, s in stats.outcomes
            ],
            "trigger_events": stats.trigger_events,
        }

    async def _on_event(self, event: event_pb2.Event) -> bool:
        self.halo.observe(
            event.event_type,
            domain.struct_to_dict(event.data),
            event.subject,
            event.source_domain,
            from_timestamp(event.time) or time.time(),
            event.id,
        )
        return True  # kept or not a trigger: nothing to retry either way

    async def start(self) -> None:
        if self._shared is None:
            # Client channels bind to the running loop: shared memory is dialled here.
            memory = MemoryExperience(
                self._channel_for("memory"),
                domain_id=SERVICE,
                contribution_type=CONTRIBUTION_TYPE,
                subject="weak point kind",
            )
            self.halo.experience = SharedExperience(memory, self._local)
        await self.store.open()
        await self.squad.resume()
        for i, relay in enumerate(self.relays):
            self.spawn(relay.run(), f"tasks-relay-{i}")
        self.spawn(self._triggers(), "tasks-triggers")
        if self.config.registration is not None:
            self.spawn(
                keep_registered(self.config.registration, self.bound_port, self.peer_health),
                "tasks-registration",
            )
            if self.config.subscribe:
                # The bus pushes to the kernel through the registry, so subscribing only
                # makes sense once it registers.
                self.subscriptions = Subscriptions(
                    self._channel_for("eventbus"), SERVICE, self.config.halo.triggers
                )
                self.spawn(self.subscriptions.run(), "tasks-subscriptions")

    async def _triggers(self) -> None:
        """Event-started cycles, once governance holds risky tasks for a person (so no task
        created by an event slips through before the policy exists)."""
        if self._approvals is not None and self.config.approval_risk != "off":
            await self._ensure_policy(self._approvals, self.config.approval_risk)
        await self.halo.run_triggers()

    async def _ensure_policy(self, approvals: GovernanceApprovals, risk: str) -> None:
        """Makes sure governance holds risky tasks for a person, retrying while it is down."""
        retries = Retries(Backoff(0.5, max_s=30.0))
        while True:
            try:
                created = await approvals.ensure_policy(APPROVAL_POLICY, risk)
            except grpc.aio.AioRpcError as exc:
                wait = retries.failed()
                log.warning(
                    "tasks: governance did not take policy %s (%s); retrying in %.1fs",
                    APPROVAL_POLICY,
                    exc.code().name,
                    wait,
                )
                await asyncio.sleep(wait)
                continue
            if created:
                log.info("tasks: policy %s holds %s-risk tasks for approval", APPROVAL_POLICY, risk)
            return

    async def stop(self) -> None:
        await self.squad.close()
        await flush_and_close(self.relays, self.publishers)
        if self._approvals is not None:
            await self._approvals.close()
        if self._client is not None:
            await self._client.close()
        for chan in self._channels.values():
            await chan.close()
        await self.store.close()
