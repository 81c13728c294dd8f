"""Workflow events reach a real event bus through the outbox and EventBusPublisher."""

from __future__ import annotations

from pathlib import Path

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from grace.orchestrator.v1 import orchestrator_pb2 as pb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from services.common.bus_client import EventBusPublisher
from services.eventbus.server import EventBusServer
from services.orchestrator.server import OrchestratorServer
from tests.eventbus.conftest import bus_config
from tests.orchestrator.conftest import World, orchestrator_config
from tests.orchestrator.test_workflows import run
from tests.support import eventually, serving


async def test_a_run_announces_started_each_step_and_completed_on_the_bus(
    world: World, tmp_path: Path
) -> None:
    await world.add_domain("d")
    bus = EventBusServer(bus_config(tmp_path / "bus"))
    async with serving(bus.config.server, bus) as (bus_server, bus_chan):
        service = OrchestratorServer(
            orchestrator_config(tmp_path / "orch", world.registry_address),
            publisher=EventBusPublisher(bus_server.address),
        )
        async with serving(service.config.server, service) as (_, chan):
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
            body = {
                "name": "announced",
                "steps": [
                    {"domain_id": "d", "action": "a"},
                    {"domain_id": "d", "action": "b", "depends_on": ["step_1"]},
                ],
            }
            ex = await run(stub, body)
            assert ex.state == pb.EXECUTION_STATE_SUCCEEDED
            history = eventbus_pb2_grpc.EventBusServiceStub(bus_chan)
            seen: list[eventbus_pb2.GetHistoryResponse] = []

            async def arrived() -> bool:
                seen[:] = [
                    await history.GetHistory(eventbus_pb2.GetHistoryRequest(pattern="workflow.*"))
                ]
                return len(seen[0].events) >= 4

            await eventually(arrived, within_s=10)
    events = seen[0].events
    assert sorted(e.event_type for e in events) == sorted(
        [
            "workflow.started",
            "workflow.step.completed",
            "workflow.step.completed",
            "workflow.completed",
        ]
    )
    assert {e.source_domain for e in events} == {"orchestrator"}
    assert {e.subject for e in events} == {ex.execution_id}
    assert f"{ex.execution_id}:step_2:workflow.step.completed" in {e.id for e in events}
