"""Wires Guardian's supervisor, healer, registrar, store and servicer into the shared runtime."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import grpc

from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from services.common.components import component_key_path
from services.common.config import peer_address
from services.common.governance_client import GovernanceClient
from services.common.identity import ComponentIdentity
from services.common.outbox import OutboxRelay, Publisher
from services.common.server import Service
from services.common.storage import Database
from services.guardian.config import GuardianConfig
from services.guardian.consent import HealConsent
from services.guardian.credentials import Credentials
from services.guardian.healing_workflow import HealingWorkflows
from services.guardian.journal import Journal
from services.guardian.playbooks import Healer
from services.guardian.process import Zygote
from services.guardian.registration import Registrar
from services.guardian.servicer import GuardianServicer
from services.guardian.store import SOURCE, GuardianStore
from services.guardian.supervisor import Supervisor
from services.guardian.topology import Topology
from services.guardian.volunteer import RecoveryVolunteer

SERVICE_NAME = guardian_pb2.DESCRIPTOR.services_by_name["GuardianService"].full_name


class GuardianServer(Service):
    """Guardian as a Grace service: `start` opens the store and boots the topology; `stop`
    stops every component in reverse boot order.

    Args:
        config: Server settings.
        topology: The validated topology to run.
        publisher: Where `healing.*` events go (the event bus client); None keeps them in
            the outbox until a publisher is plugged in.
        address: Returns Guardian's own `host:port` once bound (given to children).
        zygote: A fork server launched early, for the supervisor to adopt.
    """

    # Domains Guardian boots join (get their certificate) during the boot.
    serves_while_starting = frozenset({f"/{SERVICE_NAME}/JoinDomain"})

    def __init__(
        self,
        config: GuardianConfig,
        topology: Topology,
        *,
        publisher: Publisher | None = None,
        address: Callable[[], str] | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        self.config = config
        self.topology = topology
        self.store = GuardianStore(Database(config.server.database_url))
        self.relay = OutboxRelay(self.store.outbox, publisher) if publisher is not None else None
        self.journal = Journal(self.store, self.relay.wake if self.relay is not None else None)
        self._address = address or (lambda: config.server.bind_address)
        self.registrar = (
            Registrar(topology.registration, self._registry_address)
            if topology.registration.enabled
            else None
        )
        security = config.server.security
        self.credentials: Credentials | None = (
            Credentials(config.server.data_dir, security, config.cert_lifetime)
            if security is not None
            else None
        )
        if self.credentials is not None:
            self.credentials.prepare()
        self.supervisor = Supervisor(
            topology,
            data_dir=config.server.data_dir,
            host=config.server.host,
            base_env=config.server.env,
            guardian_address=config.server.bind_address,
            journal=self.journal,
            registrar=self.registrar,
            credentials=self.credentials,
            zygote=zygote,
        )
        self.governance = (
            GovernanceClient(
                self._governance_address(),
                fallback_mode=config.governance_fallback,
                deadline_s=config.governance_deadline_s,
            )
            if config.governance
            else None
        )
        self.healer = Healer(
            self.supervisor,
            self.store,
            self.journal,
            lambda: {config.server.port},
            consent=HealConsent(self.governance, self.journal) if self.governance else None,
        )
        self.workflows = HealingWorkflows(self._orchestrator_address, self.journal)
        # Guardian is the volunteer that restarts what the health federation confirms down.
        self.volunteer = (
            RecoveryVolunteer(
                self.healer, self.journal, self.supervisor.names, self._eventbus_address
            )
            if config.volunteer
            else None
        )
        self.identity = (
            ComponentIdentity(
                SOURCE,
                component_key_path(config.server.data_dir, SOURCE),
                self._trust_address(),
                publisher,
                self.relay.wake,
            )
            if self.relay is not None
            else None
        )
        self.shutting_down = asyncio.Event()

    def _registry_address(self) -> str | None:
        if self.topology.component("registry") is not None:
            return self.supervisor.status("registry").address
        return peer_address(self.config.server.env, "registry")

    def _orchestrator_address(self) -> str:
        if self.topology.component("orchestrator") is not None:
            return self.supervisor.status("orchestrator").address
        return peer_address(self.config.server.env, "orchestrator")

    def _eventbus_address(self) -> str:
        if self.topology.component("eventbus") is not None:
            return self.supervisor.status("eventbus").address
        return peer_address(self.config.server.env, "eventbus")

    def _trust_address(self) -> str:
        if self.topology.component("trust") is not None:
            return self.supervisor.status("trust").address
        return peer_address(self.config.server.env, "trust")

    def _governance_address(self) -> str:
        if self.topology.component("governance") is not None:
            return self.supervisor.status("governance").address
        return peer_address(self.config.server.env, "governance")

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        guardian_pb2_grpc.add_GuardianServiceServicer_to_server(
            GuardianServicer(
                self.supervisor,
                self.healer,
                self.shutting_down,
                workflows=self.workflows,
                credentials=self.credentials,
            ),
            server,
        )
        return [SERVICE_NAME]

    async def start(self) -> None:
        self.supervisor.guardian_address = self._address()
        await self.store.open()
        if self.credentials is not None:
            self.spawn(self.credentials.renew_forever(), "cert-renewal")
        if self.registrar is not None:
            self.spawn(self.registrar.run(), "registrar")
        if self.relay is not None:
            self.spawn(self.relay.run(), "outbox-relay")
        if self.identity is not None:
            self.identity.start()
        await self.supervisor.boot()
        if self.volunteer is not None:
            self.spawn(self.volunteer.run(), "volunteer")

    async def begin_shutdown(self) -> None:
        self.shutting_down.set()
        self.supervisor.begin_shutdown()

    async def stop(self) -> None:
        # The spawned tasks (lease renewal among them) have ended before this runs: the
        # registry goes down with everything else.
        self.shutting_down.set()
        await self.supervisor.shutdown()
        if self.identity is not None:
            await self.identity.stop()
        await self.journal.flush()
        if self.relay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.relay.drain_once(), timeout=2)
        if self.governance is not None:
            await self.governance.close()
        await self.store.close()
