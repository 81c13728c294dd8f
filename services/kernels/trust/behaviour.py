"""Behaviour of domains read from the registry (RegistryService.GetDomain)."""

from __future__ import annotations

import grpc

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.kernels.trust.scoring import Behaviour, BehaviourUnavailable


class RegistryBehaviour:
    """A `BehaviourSource` over a channel to the registry.

    Args:
        timeout_s: Deadline of each lookup; a slow registry counts as down.
    """

    def __init__(self, timeout_s: float = 1.0) -> None:
        self._stub: registry_pb2_grpc.RegistryServiceAsyncStub | None = None
        self._timeout = timeout_s

    def connect(self, channel: grpc.aio.Channel) -> None:
        """Uses `channel` (to the registry) from now on."""
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)

    async def observe(self, domain_id: str) -> Behaviour | None:
        if self._stub is None:
            raise BehaviourUnavailable("not connected to the registry yet")
        try:
            response = await self._stub.GetDomain(
                registry_pb2.GetDomainRequest(domain_id=domain_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise BehaviourUnavailable(f"registry unreachable ({exc.code().name})") from exc
        domain = response.domain
        status = registry_pb2.DomainStatus.Name(domain.status).removeprefix("DOMAIN_STATUS_")
        return Behaviour(status=status, success_rate=domain.metrics.success_rate)
