"""Real peers for domain tests: a registry, an event bus and a shared memory on free ports."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.eventbus.config import EventBusConfig
from services.eventbus.model import BusSettings
from services.eventbus.server import EventBusServer
from services.memory.config import MemoryConfig
from services.memory.memory import MemorySettings
from services.memory.server import MemoryServer
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer
from tests.support import free_port, server_config, serving


@dataclass
class Platform:
    """Addresses and channels of the running peers."""

    registry: str
    eventbus: str
    memory: str
    registry_channel: grpc.aio.Channel
    eventbus_channel: grpc.aio.Channel
    memory_channel: grpc.aio.Channel


@asynccontextmanager
async def running_platform(tmp_path: Path) -> AsyncIterator[Platform]:
    """Starts registry, event bus (pushing through the registry) and memory."""
    # The registry announces lifecycle events on the bus and the bus resolves domains
    # through the registry: the bus's port is chosen first so each can name the other.
    bus_port = free_port()
    async with AsyncExitStack() as stack:
        registry = RegistryServer(
            RegistryConfig(
                server=dataclasses.replace(
                    server_config("registry", tmp_path / "registry"),
                    env={"GRACE_EVENTBUS_ADDR": f"127.0.0.1:{bus_port}"},
                ),
                settings=RegistrySettings(30, 60, 100),
                sweep_interval_s=0.05,
            )
        )
        reg_server, reg_chan = await stack.enter_async_context(
            serving(registry.config.server, registry)
        )
        bus = EventBusServer(
            EventBusConfig(
                server=dataclasses.replace(
                    server_config("eventbus", tmp_path / "eventbus"), port=bus_port
                ),
                settings=BusSettings(
                    push_initial_backoff_s=0.05, push_max_backoff_s=0.5, flush_interval_s=0.05
                ),
                registry_address=reg_server.address,
            )
        )
        bus_server, bus_chan = await stack.enter_async_context(serving(bus.config.server, bus))
        memory = MemoryServer(
            MemoryConfig(
                server=server_config("memory", tmp_path / "memory"),
                settings=MemorySettings(),
                eventbus_address=bus_server.address,
                relay_interval_s=0.05,
            )
        )
        mem_server, mem_chan = await stack.enter_async_context(
            serving(memory.config.server, memory)
        )
        yield Platform(
            reg_server.address,
            bus_server.address,
            mem_server.address,
            reg_chan,
            bus_chan,
            mem_chan,
        )
