"""A firing's calls to the orchestrator wait for it to come up, within their deadline."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common.action_peers import ActionFailed, PeerClients
from services.common.server import Service
from tests.support import free_ports, server_config, serving


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
    peers = PeerClients(f"127.0.0.1:{port}", "127.0.0.1:1", timeout_s=20.0)
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
    peers = PeerClients(f"127.0.0.1:{port}", "127.0.0.1:1", timeout_s=0.5)
    try:
        with pytest.raises(ActionFailed, match="orchestrator: DEADLINE_EXCEEDED"):
            await peers.start_workflow("wf-1", {}, "firing-1")
    finally:
        await peers.close()
