"""The tasks kernel's peers against real servers: a domain action and a workflow run as
remedies (once per attempt, by idempotency key and request id), a failing target fails the
task's run, and the registry is read as a source."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from grace.domain.v1 import domain_pb2
from grace.orchestrator.v1 import orchestrator_pb2 as opb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from services.common.channels import channel
from services.kernels.tasks.model import Severity, Task, TaskState, WeakPoint
from services.kernels.tasks.peers import GrpcSources, RemedyTarget
from services.orchestrator.server import OrchestratorServer
from tests.orchestrator.conftest import (
    GrpcFailure,
    ListPublisher,
    World,
    orchestrator_config,
    world,
)
from tests.support import UNREACHABLE, serving

__all__ = ["world"]


@pytest.fixture
async def channels() -> AsyncIterator[
    Callable[[dict[str, str]], Callable[[str], grpc.aio.Channel]]
]:
    opened: dict[str, grpc.aio.Channel] = {}

    def factory(names: dict[str, str]) -> Callable[[str], grpc.aio.Channel]:
        def channel_for(name: str) -> grpc.aio.Channel:
            address = names.get(name, name)
            if address not in opened:
                opened[address] = channel(address)
            return opened[address]

        return channel_for

    yield factory
    for chan in opened.values():
        await chan.close()


def task(remedy: str, attempts: int = 1) -> Task:
    weak = WeakPoint("workflow_failed", "ai_domain", Severity.ERROR, "2 executions failed")
    return Task(
        task_id="t-1",
        cycle_id="c-1",
        weak_point=weak,
        remedy=remedy,
        target="ai_domain",
        risk="medium",
        reason="because",
        state=TaskState.RUNNING,
        created_at=0.0,
        updated_at=0.0,
        attempts=attempts,
    )


async def test_an_action_remedy_runs_once_per_attempt(world: World, channels: Any) -> None:
    domain = await world.add_domain("ai_domain")
    target = RemedyTarget(channels({"registry": world.registry_address}))
    first = await target.run(task("action:ai_domain.reset"))
    again = await target.run(task("action:ai_domain.reset"))
    assert first.success
    assert first.output["echo"]["task_id"] == "t-1"
    assert first.output["echo"]["weak_point"]["key"] == "workflow_failed:ai_domain"
    assert again.output == first.output
    assert domain.runs == {"task-t-1-1": 1}
    assert domain.replays == {"task-t-1-1": 1}
    await target.run(task("action:ai_domain.reset", attempts=2))
    assert domain.runs == {"task-t-1-1": 1, "task-t-1-2": 1}


async def test_a_failing_action_or_an_unknown_domain_fails_the_run(
    world: World, channels: Any
) -> None:
    domain = await world.add_domain("ai_domain")

    async def explode(request: domain_pb2.ExecuteRequest) -> dict[str, Any]:
        raise GrpcFailure(grpc.StatusCode.INTERNAL, "disk full")

    domain.actions["reset"] = explode
    target = RemedyTarget(channels({"registry": world.registry_address}))
    failed = await target.run(task("action:ai_domain.reset"))
    assert (failed.success, failed.message) == (False, "action: INTERNAL: disk full")
    missing = await target.run(task("action:ghost_domain.reset"))
    assert not missing.success
    assert missing.message.startswith("action: NOT_FOUND")


async def test_a_workflow_remedy_runs_once_per_attempt(
    world: World, channels: Any, tmp_path: Path
) -> None:
    domain = await world.add_domain("ai_domain")
    service = OrchestratorServer(
        orchestrator_config(tmp_path / "orch", world.registry_address),
        publisher=ListPublisher(world.events),
    )
    async with serving(service.config.server, service) as (server, chan):
        created = await orchestrator_pb2_grpc.OrchestratorServiceStub(chan).CreateWorkflow(
            json_format.ParseDict(
                {
                    "name": "reset_ai",
                    "steps": [{"domain_id": "ai_domain", "action": "reset", "data": {}}],
                },
                opb.CreateWorkflowRequest(),
            )
        )
        target = RemedyTarget(
            channels({"registry": world.registry_address, "orchestrator": server.address})
        )
        first = await target.run(task(f"workflow:{created.workflow_id}"))
        again = await target.run(task(f"workflow:{created.workflow_id}"))
    assert first.success, first.message
    assert first.output["state"] == "EXECUTION_STATE_SUCCEEDED"
    assert again.output["execution_id"] == first.output["execution_id"]
    assert sum(domain.runs.values()) == 1


async def test_sources_read_the_registry_and_raise_when_a_peer_is_down(
    world: World, channels: Any
) -> None:
    await world.add_domain("ai_domain")
    sources = GrpcSources(
        channels({"registry": world.registry_address, "immune": UNREACHABLE}), timeout_s=1.0
    )
    domains = await sources.domains()
    assert [(d.domain_id, d.status) for d in domains] == [("ai_domain", "healthy")]
    with pytest.raises(grpc.aio.AioRpcError):
        await sources.anomalies()
