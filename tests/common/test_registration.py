"""The registrar shared by SDK domains and kernels, against a real registry."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from services.kernels.registration import DomainRegistration, keep_registered
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer
from tests.support import server_config, serving


async def _domain(stub: registry_pb2_grpc.RegistryServiceStub) -> registry_pb2.Domain | None:
    try:
        reply = await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id="kernel_x"))
    except grpc.aio.AioRpcError:
        return None
    return reply.domain


async def _until(condition_ok: Callable[[], Awaitable[object]], what: str) -> None:
    for _ in range(200):
        if await condition_ok():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"never: {what}")


async def test_a_kernel_registers_heartbeats_without_metrics_and_comes_back(
    tmp_path: Path,
) -> None:
    registry = RegistryServer(
        RegistryConfig(
            server=server_config("registry", tmp_path),
            settings=RegistrySettings(default_lease_ttl_s=30, deregister_after_s=60, history=100),
        )
    )
    async with serving(registry.config.server, registry) as (server, _):
        registration = DomainRegistration(
            registry_address=server.address,
            domain_id="kernel_x",
            host="127.0.0.1",
            capabilities=["audit"],
            lease_ttl_s=1.5,  # a heartbeat every 0.5 s
        )
        keeper = asyncio.create_task(keep_registered(registration, 9101))
        try:
            async with channel(server.address) as chan:
                stub = registry_pb2_grpc.RegistryServiceStub(chan)
                await _until(lambda: _domain(stub), "registered")
                first = await _domain(stub)
                assert first is not None
                assert (first.port, list(first.capabilities)) == (9101, ["audit"])

                async def renewed() -> bool:
                    now = await _domain(stub)
                    return now is not None and (
                        now.last_heartbeat_at.ToNanoseconds()
                        > first.last_heartbeat_at.ToNanoseconds()
                    )

                await _until(renewed, "a heartbeat renewed the lease")
                # Kernels measure nothing, so heartbeats carry no metrics and the registry
                # keeps its defaults (an empty metrics message would set success_rate to 0).
                beat = await _domain(stub)
                assert beat is not None
                assert (beat.metrics.load, beat.metrics.success_rate) == (0.0, 1.0)

                # The registry forgets the kernel; the next heartbeat registers it again.
                await stub.DeregisterDomain(
                    registry_pb2.DeregisterDomainRequest(domain_id="kernel_x")
                )
                await _until(lambda: _domain(stub), "registered again")
        finally:
            keeper.cancel()
            with pytest.raises(asyncio.CancelledError):
                await keeper
