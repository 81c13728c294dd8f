"""GuardianService over gRPC: a real Guardian server supervising test components."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import json_format

from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from services.common.errors import Unavailable
from services.common.outbox import OutboxEvent
from services.guardian.config import GuardianConfig
from services.guardian.model import SystemStatus
from services.guardian.server import SERVICE_NAME, GuardianServer
from tests.guardian.conftest import component, topology
from tests.support import eventually, free_ports, server_config, serving


class ListPublisher:
    """Collects what the outbox relay publishes."""

    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.events.extend(events)


@pytest.fixture
def publisher() -> ListPublisher:
    return ListPublisher()


@pytest.fixture
async def guardian(
    tmp_path: Path, publisher: ListPublisher
) -> AsyncIterator[guardian_pb2_grpc.GuardianServiceStub]:
    a, b = free_ports(2)
    topo = topology({"alpha": component("alpha", a), "beta": component("beta", b, chunk=1)})
    config = GuardianConfig(server=server_config("guardian", tmp_path))
    service = GuardianServer(config, topo, publisher=publisher)
    async with serving(config.server, service) as (_, chan):
        yield guardian_pb2_grpc.GuardianServiceStub(chan)


def test_seed_routes_are_annotated_for_the_gateway() -> None:
    methods = guardian_pb2.DESCRIPTOR.services_by_name["GuardianService"].methods_by_name
    heal = methods["Heal"].GetOptions().Extensions[annotations_pb2.http]
    check = methods["CheckComponents"].GetOptions().Extensions[annotations_pb2.http]
    assert (heal.post, heal.body) == ("/network-healer/heal", "*")
    assert check.get == "/kernel-ports/health-check"
    for method in methods.values():
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        assert rule.WhichOneof("pattern") is not None, method.name
    assert SERVICE_NAME == "grace.guardian.v1.GuardianService"


def test_the_seed_heal_body_parses_verbatim() -> None:
    request = json_format.Parse(
        '{"component_name": "librarian_kernel"}', guardian_pb2.HealRequest()
    )
    assert request.component_name == "librarian_kernel"
    assert request.playbook == ""


@pytest.mark.slow
async def test_components_are_listed_in_boot_order_page_by_page(
    guardian: guardian_pb2_grpc.GuardianServiceStub,
) -> None:
    first = await guardian.ListComponents(guardian_pb2.ListComponentsRequest(page_size=1))
    assert [c.name for c in first.components] == ["alpha"]
    assert first.total_size == 2
    second = await guardian.ListComponents(
        guardian_pb2.ListComponentsRequest(page_size=1, page_token=first.next_page_token)
    )
    assert [c.name for c in second.components] == ["beta"]
    assert second.next_page_token == ""
    beta = second.components[0]
    assert beta.state == guardian_pb2.COMPONENT_STATE_SERVING
    assert beta.pid > 0
    assert beta.chunk == 1
    assert beta.log_path.endswith("logs/beta.log")


@pytest.mark.slow
async def test_unknown_components_are_not_found_and_bad_playbooks_invalid(
    guardian: guardian_pb2_grpc.GuardianServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guardian.Heal(guardian_pb2.HealRequest(component_name="librarian_kernel"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guardian.GetComponent(guardian_pb2.GetComponentRequest(component_name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guardian.Heal(guardian_pb2.HealRequest(component_name="alpha", playbook="pray"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await guardian.StopComponent(guardian_pb2.StopComponentRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
async def test_check_components_probes_every_component_now(
    guardian: guardian_pb2_grpc.GuardianServiceStub,
) -> None:
    response = await guardian.CheckComponents(guardian_pb2.CheckComponentsRequest())
    assert response.all_healthy
    assert [(c.component_name, c.status) for c in response.checks] == [
        ("alpha", "SERVING"),
        ("beta", "SERVING"),
    ]
    assert all(c.latency_ms > 0 for c in response.checks)


@pytest.mark.slow
async def test_stop_and_start_change_state_and_system_health(
    guardian: guardian_pb2_grpc.GuardianServiceStub,
) -> None:
    health = await guardian.GetSystemHealth(guardian_pb2.GetSystemHealthRequest())
    assert health.status == guardian_pb2.SYSTEM_STATUS_SERVING
    assert (health.serving_components, health.total_components) == (2, 2)

    stopped = await guardian.StopComponent(guardian_pb2.StopComponentRequest(component_name="beta"))
    assert stopped.component.state == guardian_pb2.COMPONENT_STATE_STOPPED
    assert stopped.component.pid == 0
    health = await guardian.GetSystemHealth(guardian_pb2.GetSystemHealthRequest())
    assert health.status == guardian_pb2.SYSTEM_STATUS_FAILED
    assert list(health.unhealthy_required) == ["beta"]

    started = await guardian.StartComponent(
        guardian_pb2.StartComponentRequest(component_name="beta")
    )
    assert started.component.state == guardian_pb2.COMPONENT_STATE_SERVING


@pytest.mark.slow
async def test_watch_streams_a_snapshot_then_every_change_of_a_restart(
    guardian: guardian_pb2_grpc.GuardianServiceStub,
) -> None:
    call = guardian.WatchComponents(guardian_pb2.WatchComponentsRequest())
    snapshot = [await call.read() for _ in range(2)]
    assert [(m.component.name, m.snapshot) for m in snapshot] == [("alpha", True), ("beta", True)]
    restarted = await guardian.RestartComponent(
        guardian_pb2.RestartComponentRequest(component_name="alpha")
    )
    assert restarted.component.state == guardian_pb2.COMPONENT_STATE_SERVING
    states = []
    while len(states) < 4:
        message = await asyncio.wait_for(call.read(), 10)
        states.append(guardian_pb2.ComponentState.Name(message.component.state))
    call.cancel()
    assert states == [
        "COMPONENT_STATE_STOPPING",
        "COMPONENT_STATE_STOPPED",
        "COMPONENT_STATE_STARTING",
        "COMPONENT_STATE_SERVING",
    ]


@pytest.mark.slow
async def test_heal_events_reach_the_plugged_publisher(
    guardian: guardian_pb2_grpc.GuardianServiceStub, publisher: ListPublisher
) -> None:
    body = json_format.Parse('{"component_name": "alpha"}', guardian_pb2.HealRequest())
    result = await guardian.Heal(body)
    assert result.success
    assert result.playbook == "restart_component"
    await eventually(lambda: len(publisher.events) >= 2, what="two published events")
    assert [(e.event_type, e.subject, e.source_domain) for e in publisher.events] == [
        ("healing.started", "alpha", "guardian"),
        ("healing.completed", "alpha", "guardian"),
    ]
    assert publisher.events[0].data["playbook"] == "restart_component"


async def test_once_its_shutdown_begins_guardian_starts_nothing_again(tmp_path: Path) -> None:
    # Said as the shutdown begins, before Guardian waits for operations in flight.
    (port,) = free_ports(1)
    config = GuardianConfig(server=server_config("guardian", tmp_path))
    service = GuardianServer(config, topology({"alpha": component("alpha", port)}))
    await service.begin_shutdown()
    assert service.supervisor.system_health().status == SystemStatus.STOPPING
    with pytest.raises(Unavailable, match="shutting down"):
        await service.supervisor.start("alpha")
