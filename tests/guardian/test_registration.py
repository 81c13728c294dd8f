"""The registrar keeps trying while the registry is down, and registers once it is up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import pytest

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.guardian.registration import Registrar
from services.guardian.settings import RegistrationSettings
from services.registry.server import RegistryServer
from tests.registry.conftest import registry_config
from tests.support import eventually, free_ports, serving


@pytest.mark.slow
async def test_registrations_wait_for_a_registry_that_comes_up_late(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    settings = RegistrationSettings(enabled=True, lease_ttl_s=3, retry_max_s=0.2)
    registrar = Registrar(settings, lambda: f"127.0.0.1:{port}")
    registrar.register("late", "127.0.0.1", 9999, ["x"], {"managed_by": "guardian"})
    runner = asyncio.create_task(registrar.run())
    try:
        await eventually(lambda: registrar.failures >= 2, what="failed attempts")
        assert not registrar.is_registered("late")
        config = registry_config(tmp_path)
        config = dataclasses.replace(config, server=dataclasses.replace(config.server, port=port))
        async with serving(config.server, RegistryServer(config)) as (_, chan):
            await eventually(lambda: registrar.is_registered("late"), what="registration")
            stub = registry_pb2_grpc.RegistryServiceStub(chan)
            domain = (await stub.GetDomain(registry_pb2.GetDomainRequest(domain_id="late"))).domain
            assert (domain.port, list(domain.capabilities)) == (9999, ["x"])
            assert domain.metadata["managed_by"] == "guardian"
            registrar.deregister("late")
            for _ in range(200):
                listed = await stub.ListDomains(registry_pb2.ListDomainsRequest())
                if not listed.domains:
                    break
                await asyncio.sleep(0.05)
            assert [d.domain_id for d in listed.domains] == []
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
