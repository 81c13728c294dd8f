"""Wires a `Domain` into the shared server runtime: storage, dispatcher, servicer,
registration and heartbeats, event publishing and push subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import grpc

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.registry.v1 import registry_pb2
from services.common import signing
from services.common.bus_client import EventBusPublisher
from services.common.call_metrics import ImmuneReporter
from services.common.channels import channel
from services.common.identity import IdentityRegistrar
from services.common.outbox import OutboxRelay, flush_and_close
from services.common.peer_health import MEMBER_METADATA, PeerHealth
from services.common.registration import Registrar
from services.common.server import GraceServer, Service
from services.common.storage import Database
from services.common.timestamps import to_duration
from services.sdk.config import DomainConfig
from services.sdk.dispatcher import Dispatcher
from services.sdk.domain import Domain
from services.sdk.events import OutboxSink, Subscriptions, relay
from services.sdk.memory import MemoryClient
from services.sdk.outcomes import OutcomeRecorder, OutcomeRelay
from services.sdk.servicer import DomainServicer
from services.sdk.store import DomainTables, KeyValueStore, ResultStore, create_domain_tables

SERVICE_NAME = domain_pb2.DESCRIPTOR.services_by_name["DomainService"].full_name
PRUNE_INTERVAL_S = 3600.0
STOP_FLUSH_S = 2.0

log = logging.getLogger(__name__)


class DomainServer(Service):
    """A domain as a Grace service.

    Args:
        domain: The declarations.
        config: Where to listen, store and find peers.
        schema: PostgreSQL schema (tests); None for the default.
        clock: Epoch seconds, for stored results (injectable for tests).
    """

    def __init__(
        self,
        domain: Domain,
        config: DomainConfig,
        *,
        schema: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.domain = domain
        self.config = config
        self.db = Database(config.server.database_url, schema=schema)
        self.tables = DomainTables.of(domain.domain_id)
        self.results = ResultStore(self.db, self.tables, clock)
        self.store = KeyValueStore(self.db, self.tables, clock)
        self.registrar: Registrar | None = None
        self._dispatcher: Dispatcher | None = None
        self._server: GraceServer | None = None
        self._channels: list[grpc.aio.Channel] = []
        self.relay: OutboxRelay | None = None
        self._publisher: EventBusPublisher | None = None
        self.subscriptions: Subscriptions | None = None
        self.identity: IdentityRegistrar | None = None
        self.key: signing.SigningKey | None = None
        self.immune: ImmuneReporter | None = None
        # Peers watch this domain and it watches a few of them (health federation), as
        # long as there is a registry to meet in.
        self.peer_health = (
            PeerHealth(domain.domain_id, config.peer_health)
            if config.peer_health.enabled and config.registry_addr
            else None
        )
        self.outcomes: OutcomeRecorder | None = None
        self.outcome_relay: OutcomeRelay | None = None

    def attach(self, server: GraceServer) -> None:
        """Tells the service which server runs it (to register the port it bound)."""
        self._server = server

    @property
    def dispatcher(self) -> Dispatcher:
        """The running dispatcher."""
        if self._dispatcher is None:
            raise RuntimeError("the domain has not started")
        return self._dispatcher

    @property
    def port(self) -> int:
        """The bound port (the configured one until the server binds)."""
        return self._server.port if self._server and self._server.port else self.config.server.port

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            DomainServicer(
                self.domain.domain_id,
                lambda: self.dispatcher,
                self.describe,
                self._subscription_pattern,
            ),
            server,
        )
        if self.peer_health is None:
            return [SERVICE_NAME]
        return [SERVICE_NAME, *self.peer_health.add_to_server(server)]

    async def start(self) -> None:
        self.key = signing.load_or_create_key(self.config.key_path)
        await create_domain_tables(self.db, self.domain.domain_id, self.tables)
        pruned = await self.results.prune(self.config.idempotency_ttl_s)
        if pruned:
            log.info("forgot %d stored results older than the idempotency TTL", pruned)
        memory_channel = self._open(self.config.memory_addr)
        bus_channel = self._open(self.config.eventbus_addr)
        sink: OutboxSink | None = None
        if bus_channel is not None:
            self._publisher = EventBusPublisher(self.config.eventbus_addr)
            self.relay = relay(self.db, self.domain.domain_id, self.tables.outbox, self._publisher)
            sink = OutboxSink(self.db, self.domain.domain_id, self.tables.outbox, self.relay.wake)
            self._spawn(self.relay.run(), "relay")
            if self.domain.event_patterns:
                self.subscriptions = Subscriptions(
                    bus_channel,
                    self.domain.domain_id,
                    self.domain.event_patterns,
                    backoff_initial_s=self.config.backoff_initial_s,
                    backoff_max_s=self.config.backoff_max_s,
                )
                self._spawn(self.subscriptions.run(), "subscriptions")
        learning_channel = self._open(self.config.learning_addr)
        if learning_channel is not None:
            self.outcomes = OutcomeRecorder(self.db, self.tables, capacity=self.config.outcome_ring)
            self.outcome_relay = OutcomeRelay(
                self.outcomes,
                learning_channel,
                self.domain.domain_id,
                self.domain.capabilities,
                interval_s=self.config.outcome_interval_s,
                backoff_max_s=self.config.backoff_max_s,
            )
            self._spawn(self.outcomes.run(self.config.outcome_interval_s / 2), "outcome-ring")
            self._spawn(self.outcome_relay.run(), "outcome-relay")
        self._dispatcher = Dispatcher(
            self.domain,
            self.results,
            self.store,
            MemoryClient(self.domain.domain_id, memory_channel),
            sink,
            self.config.max_concurrency,
            outcomes=self.outcomes,
        )
        registry_channel = self._open(self.config.registry_addr)
        if registry_channel is not None:
            self.registrar = Registrar(
                registry_channel,
                self.registration,
                lambda: self.dispatcher.metrics.snapshot().to_proto(),
                heartbeat_interval_s=self.config.heartbeat_interval_s,
                backoff_initial_s=self.config.backoff_initial_s,
                backoff_max_s=self.config.backoff_max_s,
            )
            self._spawn(self.registrar.run(), "registrar")
            if self.peer_health is not None:
                self.peer_health.start(registry_channel)
        trust_channel = self._open(self.config.trust_addr)
        if trust_channel is not None:
            self.identity = IdentityRegistrar(
                trust_channel,
                self.domain.domain_id,
                self.key,
                self._sign_events,
                backoff_initial_s=self.config.backoff_initial_s,
                backoff_max_s=self.config.backoff_max_s,
            )
            self._spawn(self.identity.run(), "identity")
        if self.config.immune_addr:
            # Call latency and errors go to the immune kernel once per heartbeat interval.
            self.immune = ImmuneReporter(
                self.config.immune_addr,
                self.dispatcher.metrics.tallies,
                interval_s=self.config.heartbeat_interval_s,
            )
            self._spawn(self.immune.run(), "immune-metrics")
        self._spawn(self._prune_forever(), "prune")

    def _sign_events(self) -> None:
        """From now on, events leave signed (the trust kernel holds the domain's key)."""
        if self._publisher is not None:
            self._publisher.signer = self.key
            if self.relay is not None:
                self.relay.wake()

    async def begin_shutdown(self) -> None:
        if self.registrar is not None:
            # Leave the registry first, so no new work is routed here during the drain.
            await self.registrar.deregister()

    async def stop(self) -> None:
        if self.peer_health is not None:
            await self.peer_health.stop()
        if self._dispatcher is not None:
            # Runs whose callers left during the drain still end and store their results.
            await self._dispatcher.drain(self.config.server.shutdown_grace_s)
        if self.outcomes is not None:
            # The outcomes still buffered go to the ring; they are sent at the next start.
            with contextlib.suppress(Exception):
                await self.outcomes.flush()
        # One last send of the events published during the drain and by the runs that
        # ended after it; whatever is left stays in the outbox and goes at the next start.
        await flush_and_close(
            [] if self.relay is None else [self.relay],
            [] if self._publisher is None else [self._publisher],
            timeout_s=STOP_FLUSH_S,
        )
        if self.immune is not None:
            await self.immune.close()
        for chan in self._channels:
            await chan.close()
        self._channels.clear()
        await self.db.close()

    @property
    def instance_id(self) -> str:
        """Which instance of the domain this process is: `GRACE_INSTANCE_ID`, or the
        host and port it is reached at, which stay the same when it restarts (the host
        name when the registry is left to see the caller's address)."""
        if self.config.instance_id:
            return self.config.instance_id
        host = self.config.advertise_host or socket.gethostname()
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def registration(self) -> registry_pb2.RegisterDomainRequest:
        """The RegisterDomain request of this domain, with the port it bound."""
        metadata = dict(self.domain.metadata)
        if self.peer_health is not None:
            metadata.update(MEMBER_METADATA)
        if self.domain.description:
            metadata.setdefault("description", self.domain.description)
        if self.domain.actions:
            metadata.setdefault("actions", ",".join(self.domain.actions))
        return registry_pb2.RegisterDomainRequest(
            domain_id=self.domain.domain_id,
            instance_id=self.instance_id,
            host=self.config.advertise_host,
            port=self.port,
            capabilities=list(self.domain.capabilities),
            version=self.domain.version,
            metadata=metadata,
            lease_ttl=to_duration(self.config.lease_ttl_s),
            public_key=self.key.public_key if self.key else b"",
        )

    def describe(self) -> domain_pb2.DescribeDomainResponse:
        """What DescribeDomain answers."""
        return domain_pb2.DescribeDomainResponse(
            domain_id=self.domain.domain_id,
            version=self.domain.version,
            capabilities=list(self.domain.capabilities),
            actions=[
                domain_pb2.ActionInfo(
                    name=spec.name,
                    description=spec.description,
                    compensable=spec.compensation is not None,
                )
                for spec in self.domain.actions.values()
            ],
            event_patterns=self.domain.event_patterns,
        )

    def _subscription_pattern(self, sub_id: str) -> str | None:
        return self.subscriptions.pattern_of(sub_id) if self.subscriptions else None

    def _open(self, address: str) -> grpc.aio.Channel | None:
        if not address:
            return None
        chan = channel(address, max_message_bytes=self.config.server.max_message_bytes)
        self._channels.append(chan)
        return chan

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self.spawn(work, f"{self.domain.domain_id}-{name}")

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL_S)
            try:
                await self.results.prune(self.config.idempotency_ttl_s)
            except Exception:
                log.exception("pruning stored results failed; will try again")
