"""Wires the trigger mesh, its peers, relays, subscriptions and servicers into the shared
runtime."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from grace.domain.v1 import domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.kernels.triggers.v1 import triggers_pb2 as pb
from grace.kernels.triggers.v1 import triggers_pb2_grpc
from services.common.action_peers import PeerClients, Peers
from services.common.bus_client import EventBusPublisher
from services.common.channels import channel
from services.common.governance_client import GovernanceClient, GovernanceGate
from services.common.outbox import Outbox, OutboxRelay, Publisher, flush_and_close
from services.common.server import Service
from services.common.storage import Database
from services.common.subscriptions import Subscriptions
from services.common.timestamps import from_timestamp
from services.kernels import domain
from services.kernels.registration import keep_registered
from services.kernels.sinks import ImmutableLogPublisher
from services.kernels.triggers.config import CAPABILITIES, SERVICE, TriggersConfig
from services.kernels.triggers.mesh import TriggerMesh, TrustScorer
from services.kernels.triggers.model import event_document
from services.kernels.triggers.peers import TrustClient
from services.kernels.triggers.rules_file import load_rules
from services.kernels.triggers.servicer import TriggersServicer
from services.kernels.triggers.store import TriggersStore, events_outbox, log_outbox

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["TriggersService"].full_name
VERSION = "0.1.0"

log = logging.getLogger(__name__)


class TriggersServer(Service):
    """The trigger mesh as a Grace service.

    Args:
        config: Server and loop settings.
        peers: Runs actions; None means the orchestrator and the domains.
        gate: Governance's decisions; None means governance at the configured address.
        trust: Trust scores; None means the trust kernel at the configured address.
        bus: Publisher of events; None means the event bus at the configured address.
        immutable_log: Publisher of log entries; None means the configured immutable log.
        clock: Injectable clock for tests.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self,
        config: TriggersConfig,
        *,
        peers: Peers | None = None,
        gate: GovernanceGate | None = None,
        trust: TrustScorer | None = None,
        bus: Publisher | None = None,
        immutable_log: Publisher | None = None,
        clock: Callable[[], float] = time.time,
        schema: str | None = None,
    ) -> None:
        self.config = config
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._clients: PeerClients | None = None
        if peers is None:
            self._clients = PeerClients(
                config.addresses["orchestrator"],
                config.addresses["registry"],
                timeout_s=config.action_timeout_s,
            )
            peers = self._clients
        self._governance: GovernanceClient | None = None
        if gate is None:
            self._governance = GovernanceClient(
                config.addresses["governance"],
                fallback_mode=config.governance_fallback,
                deadline_s=config.governance_deadline_s,
            )
            gate = self._governance
        self._trust = trust
        self.store = TriggersStore(Database(config.server.database_url, schema=schema))
        events = Outbox(self.store.db, events_outbox, SERVICE)
        log_entries = Outbox(self.store.db, log_outbox, SERVICE)
        self.publishers: list[Publisher] = [
            bus or EventBusPublisher(config.addresses["eventbus"]),
            immutable_log or ImmutableLogPublisher(config.addresses["immutable_log"]),
        ]
        self.relays = [
            OutboxRelay(outbox, publisher, poll_interval_s=config.relay_interval_s)
            for outbox, publisher in zip((events, log_entries), self.publishers, strict=True)
        ]
        self.mesh = TriggerMesh(
            self.store,
            gate,
            _LazyTrust(self),
            peers,
            events,
            log_entries,
            self._wake_relays,
            config.mesh,
            clock,
        )
        self.subscriptions: list[Subscriptions] = []
        self._subscribed: set[str] = set()

    def _wake_relays(self) -> None:
        for relay in self.relays:
            relay.wake()

    def _channel_for(self, name: str) -> grpc.aio.Channel:
        """A channel to a peer by component name, opened on first use (channels bind to the
        running loop)."""
        address = self.config.addresses.get(name, name)
        chan = self._channels.get(address)
        if chan is None:
            chan = channel(address)
            self._channels[address] = chan
        return chan

    def trust(self) -> TrustScorer:
        """The trust scorer (the trust kernel's, dialled on first use)."""
        if self._trust is None:
            self._trust = TrustClient(self._channel_for("trust"), cache_s=self.config.trust_cache_s)
        return self._trust

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        triggers_pb2_grpc.add_TriggersServiceServicer_to_server(TriggersServicer(self.mesh), server)
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            domain.KernelDomainServicer(
                SERVICE,
                VERSION,
                CAPABILITIES,
                {
                    "stats": domain.KernelAction(
                        self._stats, "Rules, firings by state and the event-to-action latency"
                    ),
                },
                on_event=self._on_event,
                event_patterns=(),
            ),
            server,
        )
        return [SERVICE_NAME, domain.SERVICE_NAME]

    async def _stats(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        latencies = sorted(self.mesh.latencies_s)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] if latencies else 0.0
        return {
            "rules": len(self.mesh.rules),
            "patterns": self.mesh.patterns(),
            "recent_firings": len(latencies),
            "event_to_action_p99_ms": round(p99 * 1000, 3),
        }

    async def _on_event(self, event: event_pb2.Event) -> bool:
        if event.source_domain == SERVICE and event.event_type.startswith("trigger."):
            return True  # the mesh's own bookkeeping never triggers rules
        await self.mesh.observe(
            event_document(
                event.id,
                event.event_type,
                event.source_domain,
                event.subject,
                from_timestamp(event.time) or time.time(),
                domain.struct_to_dict(event.data),
            )
        )
        return True

    def _subscribe(self, patterns: Sequence[str]) -> None:
        """Adds push subscriptions for patterns not subscribed yet (a deleted rule's stay:
        its events are matched against no rule and acknowledged)."""
        if self.config.registration is None or not self.config.subscribe:
            return
        fresh = [p for p in patterns if p not in self._subscribed]
        if not fresh:
            return
        self._subscribed.update(fresh)
        subscriptions = Subscriptions(self._channel_for("eventbus"), SERVICE, fresh)
        self.subscriptions.append(subscriptions)
        self.spawn(subscriptions.run(), f"triggers-subscriptions-{len(fresh)}")

    async def start(self) -> None:
        await self.store.open()
        file_rules = load_rules(self.config.rules_file) if self.config.rules_file else []
        await self.mesh.load(file_rules)
        log.info(
            "triggers: %d rules (%d from %s)",
            len(self.mesh.rules),
            len(file_rules),
            self.config.rules_file or "no rules file",
        )
        for i, relay in enumerate(self.relays):
            self.spawn(relay.run(), f"triggers-relay-{i}")
        self.spawn(self.mesh.run(), "triggers-mesh")
        if self.config.registration is not None:
            self.spawn(
                keep_registered(self.config.registration, self.bound_port),
                "triggers-registration",
            )
            self.mesh.on_rules_changed = self._subscribe
            self._subscribe(self.mesh.patterns())

    async def stop(self) -> None:
        await flush_and_close(self.relays, self.publishers)
        if self._governance is not None:
            await self._governance.close()
        if self._clients is not None:
            await self._clients.close()
        for chan in self._channels.values():
            await chan.close()
        await self.store.close()


class _LazyTrust:
    """The server's trust scorer, resolved at first use (after the loop runs)."""

    def __init__(self, server: TriggersServer) -> None:
        self._server = server

    async def score(self, domain_id: str) -> float:
        return await self._server.trust().score(domain_id)
