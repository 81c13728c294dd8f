"""Registry fixtures: a core on a manual clock, and a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest

from grace.registry.v1 import registry_pb2_grpc
from services.common.storage import Database
from services.registry.config import RegistryConfig
from services.registry.registry import Registry, RegistrySettings
from services.registry.server import RegistryServer
from services.registry.store import RegistryStore
from tests.conftest import DatabaseTarget
from tests.support import ManualClock, server_config, serving


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings() -> RegistrySettings:
    return RegistrySettings(default_lease_ttl_s=30, deregister_after_s=60, history=100)


@pytest.fixture
async def registry(
    database: DatabaseTarget, clock: ManualClock, settings: RegistrySettings
) -> AsyncIterator[Registry]:
    """A registry core on each database backend."""
    core = Registry(RegistryStore(Database(database.url, schema=database.schema)), settings, clock)
    await core.open()
    yield core
    await core.close()
    await core.store.close()


def registry_config(tmp_path: Path, database_url: str = "") -> RegistryConfig:
    return RegistryConfig(
        server=server_config("registry", tmp_path, database_url),
        settings=RegistrySettings(default_lease_ttl_s=30, deregister_after_s=60, history=100),
        sweep_interval_s=0.05,
    )


class RunningRegistry(NamedTuple):
    """A registry served on a free port."""

    service: RegistryServer
    channel: grpc.aio.Channel
    address: str


@pytest.fixture
async def registry_server(tmp_path: Path, clock: ManualClock) -> AsyncIterator[RunningRegistry]:
    """A registry on a real gRPC server (SQLite), driven by the manual clock."""
    service = RegistryServer(registry_config(tmp_path), clock=clock)
    async with serving(service.config.server, service) as (server, chan):
        yield RunningRegistry(service, chan, server.address)


@pytest.fixture
def stub(registry_server: RunningRegistry) -> registry_pb2_grpc.RegistryServiceStub:
    return registry_pb2_grpc.RegistryServiceStub(registry_server.channel)
