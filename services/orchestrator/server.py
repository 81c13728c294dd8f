"""Wires the orchestrator core, its store, router, key and servicer into the runtime."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import grpc

from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common.call_metrics import ImmuneReporter
from services.common.channels import channel
from services.common.config import SecurityConfig, peer_address
from services.common.domain_router import DomainRouter
from services.common.governance_client import GovernanceClient
from services.common.identity import ComponentIdentity
from services.common.outbox import OutboxRelay, Publisher, flush_and_close
from services.common.pki import PkiError, attest
from services.common.server import Service
from services.common.signing import load_or_create_key
from services.common.storage import Database
from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.engine import Orchestrator
from services.orchestrator.servicer import OrchestratorServicer
from services.orchestrator.store import OrchestratorStore

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["OrchestratorService"].full_name


class OrchestratorServer(Service):
    """The orchestrator as a Grace service.

    Args:
        config: Server and orchestrator settings.
        publisher: Where events from the outbox go; None leaves them in the outbox.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self,
        config: OrchestratorConfig,
        *,
        publisher: Publisher | None = None,
        schema: str | None = None,
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.store = OrchestratorStore(
            Database(config.server.database_url, schema=schema), lease_s=config.lease_s
        )
        self._registry_channel: grpc.aio.Channel | None = None
        self._relay: OutboxRelay | None = None
        self.core: Orchestrator | None = None
        self._governance: GovernanceClient | None = None
        self._identity: ComponentIdentity | None = None
        self._reporter: ImmuneReporter | None = None

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(
            OrchestratorServicer(self._core, proof_attestor(self.config.server.security)), server
        )
        return [SERVICE_NAME]

    def _core(self) -> Orchestrator:
        # The core needs the event loop and the key file, so it is built in `start`; the
        # runtime turns calls away (UNAVAILABLE) until `start` has returned.
        assert self.core is not None
        return self.core

    async def start(self) -> None:
        key = load_or_create_key(self.config.key_file)
        self._registry_channel = channel(self.config.registry_address)
        router = DomainRouter(self._registry_channel, cache_ttl_s=self.config.route_cache_s)
        if self.config.governance:
            self._governance = GovernanceClient(
                self.config.governance_address, fallback_mode=self.config.governance_fallback
            )
        self.core = Orchestrator(
            self.store, router, key, self.config.settings, gate=self._governance
        )
        await self.core.open()
        if self.config.immune_address:
            self._reporter = ImmuneReporter(
                self.config.immune_address,
                self.core.traffic,
                interval_s=self.config.metrics_interval_s,
            )
            self.spawn(self._reporter.run(), "orchestrator-telemetry")
        if self.publisher is not None:
            self._relay = OutboxRelay(self.store.outbox, self.publisher, poll_interval_s=1.0)
            self.store.on_events(self._relay.wake)
            self.spawn(self._relay.run(), "orchestrator-relay")
            # The proof key signs its events too, once the trust kernel holds it.
            self._identity = ComponentIdentity(
                "orchestrator",
                self.config.key_file,
                peer_address(self.config.server.env, "trust"),
                self.publisher,
                self._relay.wake,
            )
            self._identity.start()

    async def stop(self) -> None:
        if self._reporter is not None:
            await self._reporter.close()
        if self._identity is not None:
            await self._identity.stop()
        await flush_and_close(
            [] if self._relay is None else [self._relay],
            [] if self.publisher is None else [self.publisher],
        )
        if self.core is not None:
            await self.core.close()
            await self.core.router.close()
        if self._registry_channel is not None:
            await self._registry_channel.close()
        if self._governance is not None:
            await self._governance.close()


def proof_attestor(
    security: SecurityConfig | None,
) -> Callable[[bytes], tuple[str, bytes]] | None:
    """Signs proofs with this orchestrator's current Grace certificate (None: insecure)."""
    if security is None:
        return None

    def attest_now(message: bytes) -> tuple[str, bytes]:
        for attempt in range(3):
            cert = security.cert_file.read_bytes()
            key = security.key_file.read_bytes()
            try:
                return cert.decode(), attest(cert, key, message)
            except PkiError:
                if attempt == 2:
                    raise
                # A renewal landed between the two reads (key first, then certificate).
                time.sleep(0.05)
        raise AssertionError("unreachable")

    return attest_now
