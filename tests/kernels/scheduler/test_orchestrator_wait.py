"""A firing's calls to the orchestrator: waiting for it to come up, within their deadline,
when asked to (the scheduler's), failing at once otherwise (the trigger mesh retries); and a
scheduler whose workflow fires before the orchestrator is up starts it once it is."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from grace.kernels.scheduler.v1 import scheduler_pb2 as pb
from grace.kernels.scheduler.v1 import scheduler_pb2_grpc
from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common.action_peers import ActionFailed, PeerClients
from services.common.server import Service
from services.kernels.scheduler.config import SchedulerConfig
from services.kernels.scheduler.firer import SchedulerSettings
from services.kernels.scheduler.server import SchedulerServer
from tests.kernels.scheduler.doubles import ListPublisher, ScriptedGate
from tests.support import eventually, free_ports, server_config, serving


class Orchestrator(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Answers ExecuteWorkflow with an execution named after the request id."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    async def ExecuteWorkflow(
        self, request: orchestrator_pb2.ExecuteWorkflowRequest, context: object
    ) -> orchestrator_pb2.ExecuteWorkflowResponse:
        self.requests.append(request.request_id)
        return orchestrator_pb2.ExecuteWorkflowResponse(execution_id=f"x-{request.request_id}")


class LateOrchestrator(Service):
    def __init__(self) -> None:
        self.servicer = Orchestrator()

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        orchestrator_pb2_grpc.add_OrchestratorServiceServicer_to_server(self.servicer, server)
        return ["grace.orchestrator.v1.OrchestratorService"]


async def test_a_workflow_started_before_the_orchestrator_is_up_starts_once_it_is(
    tmp_path: Path,
) -> None:
    (port,) = free_ports(1)
    peers = PeerClients(
        f"127.0.0.1:{port}", "127.0.0.1:1", timeout_s=20.0, wait_for_orchestrator=True
    )
    try:
        firing = asyncio.create_task(peers.start_workflow("wf-1", {"n": 1}, "firing-1"))
        await asyncio.sleep(1.0)
        assert not firing.done()  # waiting for the orchestrator, not failed UNAVAILABLE
        orchestrator = LateOrchestrator()
        config = dataclasses.replace(server_config("orchestrator", tmp_path), port=port)
        async with serving(config, orchestrator):
            started = await asyncio.wait_for(firing, 20.0)
        assert started == {"execution_id": "x-firing-1", "workflow_id": "wf-1"}
        assert orchestrator.servicer.requests == ["firing-1"]
    finally:
        await peers.close()


async def test_an_orchestrator_that_stays_down_fails_the_call_at_its_deadline() -> None:
    (port,) = free_ports(1)
    peers = PeerClients(
        f"127.0.0.1:{port}", "127.0.0.1:1", timeout_s=0.5, wait_for_orchestrator=True
    )
    try:
        with pytest.raises(ActionFailed, match="orchestrator: DEADLINE_EXCEEDED"):
            await peers.start_workflow("wf-1", {}, "firing-1")
    finally:
        await peers.close()


async def test_without_waiting_a_call_fails_at_once_while_the_orchestrator_is_down() -> None:
    (port,) = free_ports(1)
    peers = PeerClients(f"127.0.0.1:{port}", "127.0.0.1:1", timeout_s=20.0)
    try:
        with pytest.raises(ActionFailed, match="orchestrator: UNAVAILABLE"):
            await peers.start_workflow("wf-1", {}, "firing-1")
    finally:
        await peers.close()


async def test_a_workflow_schedule_fired_before_the_orchestrator_is_up_starts_it_once_it_is(
    tmp_path: Path,
) -> None:
    # At boot the scheduler starts beside the orchestrator: a firing due meanwhile waits.
    (port,) = free_ports(1)
    config = SchedulerConfig(
        server=server_config("scheduler", tmp_path / "scheduler"),
        settings=SchedulerSettings(poll_interval_s=0.05),
        relay_interval_s=0.05,
        orchestrator_address=f"127.0.0.1:{port}",
    )
    service = SchedulerServer(
        config, gate=ScriptedGate(), bus=ListPublisher(), immutable_log=ListPublisher()
    )
    async with serving(config.server, service) as (_, chan):
        stub = scheduler_pb2_grpc.SchedulerServiceStub(chan)
        spec = pb.ScheduleSpec(
            cron=pb.CronSpec(expression="0 13 * * TUE"),
            workflow=pb.WorkflowAction(workflow_id="nightly"),
            owner="operator:alice",
        )
        await stub.CreateSchedule(pb.CreateScheduleRequest(schedule_id="s", spec=spec))
        await stub.TriggerSchedule(pb.TriggerScheduleRequest(schedule_id="s"))
        await asyncio.sleep(1.0)
        orchestrator = LateOrchestrator()
        late = dataclasses.replace(server_config("orchestrator", tmp_path / "orch"), port=port)
        async with serving(late, orchestrator):

            async def outcome() -> int:
                got = await stub.GetSchedule(pb.GetScheduleRequest(schedule_id="s"))
                done = [
                    f.outcome
                    for f in got.schedule.recent_firings
                    if f.outcome not in (pb.FIRING_OUTCOME_PENDING, pb.FIRING_OUTCOME_RUNNING)
                ]
                return done[0] if done else 0

            assert await eventually(outcome, within_s=20, what="the firing's outcome") == (
                pb.FIRING_OUTCOME_SUCCEEDED
            )
        assert len(orchestrator.servicer.requests) == 1  # started once, when it could be
