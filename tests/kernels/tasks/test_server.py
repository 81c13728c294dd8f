"""The tasks kernel over gRPC with a real governance server: a cycle proposes a task that a
policy holds for approval, a person approves it through ApproveTask, it runs once; errors
are typed; the DomainService actions and pushed events reach the same loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.kernels.governance.v1 import governance_pb2 as gov
from grace.kernels.governance.v1 import governance_pb2_grpc
from grace.kernels.tasks.v1 import tasks_pb2 as pb
from grace.kernels.tasks.v1 import tasks_pb2_grpc
from services.cli import main
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from services.kernels.tasks.config import TasksConfig
from services.kernels.tasks.halo import HaloSettings
from services.kernels.tasks.model import DomainHealth, ExecutionSeen
from services.kernels.tasks.server import TasksServer
from tests.kernels.tasks.doubles import Sources, Target
from tests.support import UNREACHABLE, server_config, serving, session_pki


class Discard:
    async def publish(self, events: object) -> None:
        return None


@dataclass
class System:
    tasks: tasks_pb2_grpc.TasksServiceStub
    domain: domain_pb2_grpc.DomainServiceStub
    governance: governance_pb2_grpc.GovernanceServiceStub
    sources: Sources
    target: Target
    address: str
    governance_address: str


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[System]:
    governance = GovernanceServer(
        GovernanceConfig(
            server=server_config("governance", tmp_path),
            settings=GovernanceSettings(mode=Mode.ENFORCE),
        ),
        bus=Discard(),
        immutable_log=Discard(),
    )
    async with contextlib.AsyncExitStack() as stack:
        gov_server, gov_chan = await stack.enter_async_context(
            serving(server_config("governance", tmp_path), governance)
        )
        governance_stub = governance_pb2_grpc.GovernanceServiceStub(gov_chan)
        await governance_stub.CreatePolicy(
            gov.CreatePolicyRequest(
                policy=gov.Policy(
                    policy_id="tasks-ask-first",
                    description="a person approves what the tasks kernel does",
                    principal="tasks",
                    effect=gov.EFFECT_REQUIRE_APPROVAL,
                )
            )
        )
        config = TasksConfig(
            server=server_config("tasks", tmp_path),
            halo=HaloSettings(min_interval_s=0.0),
            addresses={"governance": gov_server.address, "memory": UNREACHABLE},
            relay_interval_s=0.05,
        )
        sources, target = Sources(), Target()
        tasks_server, chan = await stack.enter_async_context(
            serving(
                config.server,
                TasksServer(
                    config,
                    bus=Discard(),
                    immutable_log=Discard(),
                    sources=sources,
                    target=target,
                ),
            )
        )
        yield System(
            tasks_pb2_grpc.TasksServiceStub(chan),
            domain_pb2_grpc.DomainServiceStub(chan),
            governance_stub,
            sources,
            target,
            tasks_server.address,
            gov_server.address,
        )


def tasks_as(system: System, person: str) -> tasks_pb2_grpc.TasksServiceAsyncStub:
    """The tasks kernel as `person`, an operator authenticated by a token of their own."""
    return tasks_pb2_grpc.TasksServiceStub(
        session_pki().channel_as(system.address, person, "operator")
    )


async def task_in(system: System, task_id: str, state: int) -> pb.Task:
    for _ in range(400):
        task = (await system.tasks.GetTask(pb.GetTaskRequest(task_id=task_id))).task
        if task.state == state:
            return task
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} never reached {pb.TaskState.Name(state)}")


async def test_a_held_task_runs_once_after_a_person_approves_it(system: System) -> None:
    system.sources.domains_ = [DomainHealth("ai_domain", "unhealthy")]
    ran = await system.tasks.RunCycle(pb.RunCycleRequest(reason="look now"))
    assert ran.cycle.trigger == "operator"
    assert [w.key for w in ran.cycle.weak_points] == ["domain_unhealthy:ai_domain"]
    [task] = ran.tasks
    assert task.state == pb.TASK_STATE_PENDING_APPROVAL
    queue = await system.governance.ListApprovals(gov.ListApprovalsRequest())
    assert [a.approval_id for a in queue.approvals] == [task.approval_id]

    with pytest.raises(grpc.aio.AioRpcError) as own:
        await tasks_as(system, "tasks").ApproveTask(pb.ApproveTaskRequest(task_id=task.task_id))
    assert own.value.code() in (
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert system.target.runs == []

    approved = await tasks_as(system, "alice").ApproveTask(
        pb.ApproveTaskRequest(task_id=task.task_id, reason="go")
    )
    assert approved.task.state in (
        pb.TASK_STATE_APPROVED,
        pb.TASK_STATE_DISPATCHED,
        pb.TASK_STATE_RUNNING,
        pb.TASK_STATE_COMPLETED,
    )
    done = await task_in(system, task.task_id, pb.TASK_STATE_COMPLETED)
    assert [t.actor for t in done.history][:2] == ["governance", "alice"]
    assert len(system.target.runs) == 1
    settled = await system.governance.GetApproval(
        gov.GetApprovalRequest(approval_id=task.approval_id)
    )
    assert settled.approval.status == gov.APPROVAL_STATUS_APPROVED

    with pytest.raises(grpc.aio.AioRpcError) as again:
        await tasks_as(system, "bob").ApproveTask(pb.ApproveTaskRequest(task_id=task.task_id))
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(system.target.runs) == 1

    stats = await system.tasks.GetTasksStats(pb.GetTasksStatsRequest())
    assert stats.cycles == 1
    assert dict(stats.tasks_by_state) == {"TASK_STATE_COMPLETED": 1}
    listed = await system.tasks.ListTasks(pb.ListTasksRequest(state=pb.TASK_STATE_COMPLETED))
    assert [t.task_id for t in listed.tasks] == [task.task_id]
    cycles = await system.tasks.ListCycles(pb.ListCyclesRequest())
    assert [c.cycle_id for c in cycles.cycles] == [ran.cycle.cycle_id]


async def test_a_rejection_reaches_governance_and_the_task_never_runs(system: System) -> None:
    system.sources.domains_ = [DomainHealth("ai_domain", "degraded")]
    [task] = (await system.tasks.RunCycle(pb.RunCycleRequest())).tasks
    rejected = await tasks_as(system, "bob").RejectTask(
        pb.RejectTaskRequest(task_id=task.task_id, reason="not now")
    )
    assert rejected.task.state == pb.TASK_STATE_REJECTED
    settled = await system.governance.GetApproval(
        gov.GetApprovalRequest(approval_id=task.approval_id)
    )
    assert settled.approval.status == gov.APPROVAL_STATUS_REJECTED
    assert system.target.runs == []


async def test_an_approval_in_governance_itself_dispatches_the_task(system: System) -> None:
    system.sources.domains_ = [DomainHealth("ai_domain", "degraded")]
    [task] = (await system.tasks.RunCycle(pb.RunCycleRequest())).tasks
    carol = governance_pb2_grpc.GovernanceServiceStub(
        session_pki().channel_as(system.governance_address, "carol", "operator")
    )
    await carol.Approve(gov.ApproveRequest(approval_id=task.approval_id, reason="ok"))
    await task_in(system, task.task_id, pb.TASK_STATE_COMPLETED)
    assert len(system.target.runs) == 1


async def test_bad_requests_are_typed_errors(system: System) -> None:
    cases = [
        (system.tasks.GetTask(pb.GetTaskRequest(task_id="nope")), grpc.StatusCode.NOT_FOUND),
        (system.tasks.GetTask(pb.GetTaskRequest()), grpc.StatusCode.INVALID_ARGUMENT),
        (
            system.tasks.GetCycle(pb.GetCycleRequest(cycle_id="x y")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            system.tasks.ListTasks(pb.ListTasksRequest(page_token="garbage!")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            system.tasks.ListCycles(pb.ListCyclesRequest(page_size=5000)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            system.tasks.RunCycle(pb.RunCycleRequest(reason="x" * 600)),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (system.tasks.RetryTask(pb.RetryTaskRequest(task_id="nope")), grpc.StatusCode.NOT_FOUND),
    ]
    for call, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await call
        assert error.value.code() == code


async def test_a_schedule_and_pushed_events_run_cycles_through_the_domain_service(
    system: System,
) -> None:
    described = await system.domain.DescribeDomain(domain_pb2.DescribeDomainRequest())
    assert {a.name for a in described.actions} == {"run_cycle", "stats"}
    assert set(described.capabilities) == {"tasks", "analysis"}
    assert "api.endpoint.failed" in described.event_patterns

    data = struct_pb2.Struct()
    data.update({"domain_id": "ai_domain", "endpoint": "/analyze", "status": 500})
    delivered = await system.domain.DeliverEvent(
        domain_pb2.DeliverEventRequest(
            event=event_pb2.Event(
                event_type="api.endpoint.failed", source_domain="gateway", data=data
            )
        )
    )
    assert delivered.outcome == domain_pb2.DELIVERY_OUTCOME_ACK
    for _ in range(200):
        cycles = (await system.tasks.ListCycles(pb.ListCyclesRequest())).cycles
        if cycles:
            break
        await asyncio.sleep(0.02)
    assert [c.trigger for c in cycles] == ["event"]
    assert [w.key for w in cycles[0].weak_points] == ["endpoint_failures:ai_domain"]

    reason = struct_pb2.Struct()
    reason.update({"reason": "nightly"})
    scheduled = await system.domain.Execute(
        domain_pb2.ExecuteRequest(action="run_cycle", input=reason)
    )
    assert scheduled.output["cycle_id"]
    cycle = await system.tasks.GetCycle(pb.GetCycleRequest(cycle_id=scheduled.output["cycle_id"]))
    assert (cycle.cycle.trigger, cycle.cycle.trigger_detail) == ("schedule", "nightly")


async def test_by_default_a_person_approves_risky_tasks_and_low_risk_ones_run_at_once(
    system: System,
) -> None:
    await system.governance.DeletePolicy(gov.DeletePolicyRequest(policy_id="tasks-ask-first"))

    async def default_policy() -> gov.Policy | None:
        listed = await system.governance.ListPolicies(gov.ListPoliciesRequest())
        return next((p for p in listed.policies if p.policy_id == "tasks-approval"), None)

    for _ in range(200):
        policy = await default_policy()
        if policy is not None:
            break
        await asyncio.sleep(0.02)
    assert policy is not None
    assert (policy.principal, policy.min_risk_level) == ("tasks", gov.RISK_LEVEL_MEDIUM)

    system.sources.domains_ = [DomainHealth("ai_domain", "degraded")]
    system.sources.executions_ = [ExecutionSeen("e1", "wf", False, "data_domain", "ingest", "boom")]
    ran = await system.tasks.RunCycle(pb.RunCycleRequest())
    by_remedy = {t.remedy: t for t in ran.tasks}
    assert by_remedy["heal:restart_component"].state == pb.TASK_STATE_PENDING_APPROVAL
    low = by_remedy["heal:diagnose_network"]
    assert low.risk == "low"
    await task_in(system, low.task_id, pb.TASK_STATE_COMPLETED)
    assert [run[1] for run in system.target.runs] == ["heal:diagnose_network"]


async def test_an_operator_lists_and_approves_tasks_with_the_cli(
    system: System, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    system.sources.domains_ = [DomainHealth("ai_domain", "degraded")]
    [task] = (await system.tasks.RunCycle(pb.RunCycleRequest())).tasks
    monkeypatch.setenv("GRACE_TASKS_ADDR", system.address)
    for name, value in session_pki().cli_env().items():
        if name.startswith("GRACE_"):
            monkeypatch.setenv(name, value)

    def grace(*argv: str) -> int:
        return main(["tasks", *argv])

    assert await asyncio.to_thread(grace, "list", "--state", "pending-approval", "-o", "json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["task_id"], t["state"]) for t in listed] == [
        (task.task_id, "TASK_STATE_PENDING_APPROVAL")
    ]
    # The requester cannot approve its own task: refused by the server (exit 4).
    # The approver is whoever the CLI's token authenticates: the requester's own token is
    # refused, another operator's is not.
    monkeypatch.setenv("GRACE_TOKEN", session_pki().token("tasks", "operator"))
    assert await asyncio.to_thread(grace, "approve", task.task_id) == 4
    assert "someone else must approve it" in capsys.readouterr().err
    monkeypatch.setenv("GRACE_TOKEN", session_pki().token("alice", "operator"))
    assert await asyncio.to_thread(grace, "approve", task.task_id) == 0
    await task_in(system, task.task_id, pb.TASK_STATE_COMPLETED)
    assert await asyncio.to_thread(grace, "show", task.task_id, "-o", "table") == 0
    shown = capsys.readouterr().out
    assert "COMPLETED" in shown
    assert "approved         by alice" in shown
    assert len(system.target.runs) == 1
