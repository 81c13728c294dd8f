"""Wires the trust kernel core, its store, the registry behaviour source and its servicers
into the shared runtime."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from grace.domain.v1 import domain_pb2_grpc
from grace.kernels.trust.v1 import trust_pb2, trust_pb2_grpc
from services.common.channels import channel
from services.common.server import Service
from services.common.storage import Database
from services.kernels import domain
from services.kernels.registration import keep_registered, mounted, peer_health_of
from services.kernels.trust.actions import trust_actions
from services.kernels.trust.behaviour import RegistryBehaviour
from services.kernels.trust.config import CAPABILITIES, SERVICE, TrustConfig
from services.kernels.trust.servicer import ClaimantOf, TrustServicer, authenticated_claimant
from services.kernels.trust.store import TrustStore
from services.kernels.trust.trust import TrustKernel

SERVICE_NAME = trust_pb2.DESCRIPTOR.services_by_name["TrustService"].full_name


class TrustServer(Service):
    """The trust kernel as a Grace service.

    Args:
        config: Server and trust settings.
        schema: PostgreSQL schema (tests); None for the default.
        claimant_of: Who the caller of a call is, for the claims on keys
            (`services.kernels.trust.claims`); the authenticated caller by default.
    """

    def __init__(
        self,
        config: TrustConfig,
        *,
        schema: str | None = None,
        claimant_of: ClaimantOf = authenticated_claimant,
    ) -> None:
        self.config = config
        self.peer_health = peer_health_of(config.registration, config.server.env)
        self._claimant_of = claimant_of
        self._registry: grpc.aio.Channel | None = None
        self._behaviour = RegistryBehaviour(config.registry_timeout_s)
        self.kernel = TrustKernel(
            TrustStore(Database(config.server.database_url, schema=schema)),
            config.settings,
            self._behaviour,
        )

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        trust_pb2_grpc.add_TrustServiceServicer_to_server(
            TrustServicer(self.kernel, self._claimant_of), server
        )
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            domain.KernelDomainServicer(SERVICE, "0.1.0", CAPABILITIES, trust_actions(self.kernel)),
            server,
        )
        return [SERVICE_NAME, domain.SERVICE_NAME, *mounted(self.peer_health, server)]

    async def start(self) -> None:
        # grpc.aio channels bind to the running loop: open it here, not in __init__.
        self._registry = channel(self.config.registry_address)
        self._behaviour.connect(self._registry)
        await self.kernel.open()
        if self.config.registration is not None:
            self.spawn(
                keep_registered(self.config.registration, self.bound_port, self.peer_health),
                "trust-registration",
            )

    async def stop(self) -> None:
        if self._registry is not None:
            await self._registry.close()
        await self.kernel.store.close()
