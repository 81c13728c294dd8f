"""Orchestrator fixtures: a real registry, fake domains on real gRPC servers, and the
orchestrator itself on a real server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.config import ServerConfig
from services.common.domain_router import from_struct, to_struct
from services.common.outbox import OutboxEvent
from services.common.server import GraceServer, Service
from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.engine import OrchestratorSettings
from services.orchestrator.server import OrchestratorServer
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer
from tests.support import server_config, serving, session_pki

NO_BUS = {"GRACE_EVENTBUS_ADDR": "127.0.0.1:9"}

Behaviour = Callable[[domain_pb2.ExecuteRequest], Awaitable[dict[str, Any]]]


@dataclass
class Journal:
    """What every fake domain did, in order, shared by all of them."""

    calls: list[tuple[str, str, str, str]] = field(default_factory=list)
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)


class FakeDomain(domain_pb2_grpc.DomainServiceServicer):
    """A domain that honours idempotency keys like a real one must.

    Actions are coroutines given per name; by default an action echoes its input. Every
    real run is counted per idempotency key; repeats return the stored output.
    """

    def __init__(self, domain_id: str, journal: Journal) -> None:
        self.domain_id = domain_id
        self.journal = journal
        self.actions: dict[str, Behaviour] = {}
        self.compensations: dict[str, Behaviour] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, int] = {}
        self.replays: dict[str, int] = {}
        self.attempts: dict[str, list[int]] = {}

    async def Execute(
        self, request: domain_pb2.ExecuteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> domain_pb2.ExecuteResponse:
        key = request.idempotency_key
        self.attempts.setdefault(key, []).append(request.attempt)
        if key in self.results:
            self.replays[key] = self.replays.get(key, 0) + 1
            return domain_pb2.ExecuteResponse(output=to_struct(self.results[key]), replayed=True)
        started = time.monotonic()
        self.journal.calls.append(("execute", self.domain_id, request.action, request.step_id))
        behaviour = self.actions.get(request.action)
        try:
            output = (
                await behaviour(request)
                if behaviour
                else {"domain": self.domain_id, "echo": from_struct(request.input)}
            )
        except GrpcFailure as failure:
            await context.abort(failure.code, failure.message)
        self.journal.spans[request.step_id] = (started, time.monotonic())
        self.runs[key] = self.runs.get(key, 0) + 1
        self.results[key] = output
        return domain_pb2.ExecuteResponse(output=to_struct(output))

    async def Compensate(
        self, request: domain_pb2.CompensateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> domain_pb2.CompensateResponse:
        behaviour = self.compensations.get(request.action)
        try:
            output = await behaviour(request) if behaviour else {"undone": request.step_id}  # type: ignore[arg-type]
        except GrpcFailure as failure:
            await context.abort(failure.code, failure.message)
        self.journal.calls.append(("compensate", self.domain_id, request.action, request.step_id))
        return domain_pb2.CompensateResponse(output=to_struct(output))


class GrpcFailure(Exception):
    """Raised by a fake action to answer with a gRPC error."""

    def __init__(self, code: grpc.StatusCode, message: str = "boom") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DomainHost(Service):
    """Serves one fake domain with the shared runtime."""

    def __init__(self, domain: FakeDomain) -> None:
        self.domain = domain

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        domain_pb2_grpc.add_DomainServiceServicer_to_server(self.domain, server)
        return [domain_pb2.DESCRIPTOR.services_by_name["DomainService"].full_name]


class World:
    """A registry, fake domains registered in it, and helpers to start more."""

    def __init__(self, stack: AsyncExitStack, tmp_path: Path, registry_address: str) -> None:
        self.stack = stack
        self.tmp_path = tmp_path
        self.registry_address = registry_address
        self.journal = Journal()
        self.domains: dict[str, FakeDomain] = {}
        self.servers: dict[str, GraceServer] = {}
        self.events: list[OutboxEvent] = []

    async def add_domain(
        self,
        domain_id: str,
        capabilities: Sequence[str] = (),
        *,
        register_as: str = "",
        port: int = 0,
    ) -> FakeDomain:
        domain = FakeDomain(domain_id, self.journal)
        config = ServerConfig(
            service=f"domain-{domain_id}",
            port=port,
            shutdown_grace_s=0.1,
            security=session_pki().security(),
        )
        server = await self.stack.enter_async_context(GraceServer(config, DomainHost(domain)))
        self.domains[domain_id] = domain
        self.servers[domain_id] = server
        await self.register(register_as or domain_id, server.port, capabilities)
        return domain

    async def register(self, domain_id: str, port: int, capabilities: Sequence[str]) -> None:
        from services.common.channels import channel

        async with channel(self.registry_address) as chan:
            await registry_pb2_grpc.RegistryServiceStub(chan).RegisterDomain(
                registry_pb2.RegisterDomainRequest(
                    domain_id=domain_id, host="127.0.0.1", port=port, capabilities=capabilities
                )
            )


class ListPublisher:
    """Collects published events."""

    def __init__(self, sink: list[OutboxEvent]) -> None:
        self.sink = sink

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.sink.extend(events)


def orchestrator_config(data_dir: Path, registry_address: str) -> OrchestratorConfig:
    return OrchestratorConfig(
        server=server_config("orchestrator", data_dir),
        settings=OrchestratorSettings(max_parallel_steps=16),
        registry_address=registry_address,
        key_file=data_dir / "orchestrator.key",
        route_cache_s=0.5,
    )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    """A registry on a real server, ready for fake domains."""
    registry = RegistryServer(
        RegistryConfig(
            # Nothing listens on the registry's event bus address: its events stay queued.
            server=replace(server_config("registry", tmp_path), env=NO_BUS),
            settings=RegistrySettings(default_lease_ttl_s=300, deregister_after_s=600, history=100),
        )
    )
    async with AsyncExitStack() as stack:
        server, _ = await stack.enter_async_context(serving(registry.config.server, registry))
        yield World(stack, tmp_path, server.address)


@pytest.fixture
async def orchestrator(
    world: World,
) -> AsyncIterator[orchestrator_pb2_grpc.OrchestratorServiceStub]:
    """The orchestrator on a real server, its events collected in `world.events`."""
    service = OrchestratorServer(
        orchestrator_config(world.tmp_path / "orch", world.registry_address),
        publisher=ListPublisher(world.events),
    )
    async with serving(service.config.server, service) as (_, chan):
        yield orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
