"""The orchestrator asks governance before each step (seed 004, phase 4)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from grace.kernels.governance.v1 import governance_pb2 as gov
from grace.kernels.governance.v1 import governance_pb2_grpc
from grace.orchestrator.v1 import orchestrator_pb2 as pb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from services.orchestrator.server import OrchestratorServer
from tests.orchestrator.conftest import ListPublisher, World, orchestrator_config
from tests.orchestrator.test_workflows import run, workflow
from tests.support import server_config, serving


class Discard:
    async def publish(self, events: object) -> None:
        """The bus and the log are not under test here."""


class Governed:
    def __init__(
        self,
        orchestrator: orchestrator_pb2_grpc.OrchestratorServiceStub,
        governance: governance_pb2_grpc.GovernanceServiceStub,
    ) -> None:
        self.orchestrator = orchestrator
        self.governance = governance


@pytest.fixture
async def governed(world: World) -> AsyncIterator[Governed]:
    governance = GovernanceServer(
        GovernanceConfig(
            server=server_config("governance", world.tmp_path),
            settings=GovernanceSettings(mode=Mode.ENFORCE),
        ),
        bus=Discard(),
        immutable_log=Discard(),
    )
    gov_server, gov_chan = await world.stack.enter_async_context(
        serving(governance.config.server, governance)
    )
    config = replace(
        orchestrator_config(world.tmp_path / "orch", world.registry_address),
        governance=True,
        governance_address=gov_server.address,
        governance_fallback="enforce",
    )
    service = OrchestratorServer(config, publisher=ListPublisher(world.events))
    async with serving(service.config.server, service) as (_, chan):
        yield Governed(
            orchestrator_pb2_grpc.OrchestratorServiceStub(chan),
            governance_pb2_grpc.GovernanceServiceStub(gov_chan),
        )


NO_DEPLOYS: dict[str, Any] = {
    "name": "deploy",
    "steps": [
        {"domain_id": "data_domain", "action": "load"},
        {"domain_id": "ai_domain", "action": "deploy", "depends_on": ["step_1"]},
    ],
}

FORBID_DEPLOY = gov.Policy(
    policy_id="no-deploys",
    description="deploys are frozen",
    action="ai_domain.deploy",
    effect=gov.EFFECT_FORBID,
)


async def test_a_denied_step_fails_and_rolls_back_with_the_denial_in_its_record(
    world: World, governed: Governed
) -> None:
    data = await world.add_domain("data_domain")
    ai = await world.add_domain("ai_domain")
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=FORBID_DEPLOY))
    ex = await run(governed.orchestrator, NO_DEPLOYS)
    assert ex.state == pb.EXECUTION_STATE_ROLLED_BACK
    assert ex.steps[1].state == pb.STEP_STATE_FAILED
    assert "deploys are frozen" in ex.steps[1].error
    assert ex.steps[1].attempts == 1  # a denial is not retried
    assert ex.steps[0].state == pb.STEP_STATE_COMPENSATED
    assert "deploys are frozen" in ex.error
    assert not any(call[2] == "deploy" for call in world.journal.calls)
    assert data.runs
    assert not ai.runs
    denied = await governed.governance.ListDecisions(
        gov.ListDecisionsRequest(verdict=gov.VERDICT_DENY)
    )
    assert [d.action for d in denied.decisions] == ["ai_domain.deploy"]
    assert denied.decisions[0].actor.startswith("workflow:")


async def test_in_log_only_mode_the_workflow_runs_and_each_step_is_recorded(
    world: World, governed: Governed
) -> None:
    await world.add_domain("data_domain")
    await world.add_domain("ai_domain")
    await governed.governance.SetMode(gov.SetModeRequest(mode=gov.MODE_LOG_ONLY))
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=FORBID_DEPLOY))
    ex = await run(governed.orchestrator, NO_DEPLOYS)
    assert ex.state == pb.EXECUTION_STATE_SUCCEEDED
    recorded = await governed.governance.ListDecisions(gov.ListDecisionsRequest())
    actions = sorted(d.action for d in recorded.decisions)
    assert actions == ["ai_domain.deploy", "data_domain.load"]
    [deploy] = [d for d in recorded.decisions if d.action == "ai_domain.deploy"]
    assert deploy.evaluated_verdict == gov.VERDICT_DENY


DEPLOYS_NEED_APPROVAL = gov.Policy(
    policy_id="deploys-need-approval",
    description="a person approves each deploy",
    action="ai_domain.deploy",
    effect=gov.EFFECT_REQUIRE_APPROVAL,
)


async def _pending_approval(governed: Governed) -> gov.Approval:
    while True:
        listed = await governed.governance.ListApprovals(
            gov.ListApprovalsRequest(status=gov.APPROVAL_STATUS_PENDING)
        )
        if listed.approvals:
            return listed.approvals[0]
        await asyncio.sleep(0.05)


async def _start(governed: Governed) -> tuple[str, asyncio.Task[pb.Execution]]:
    created = await governed.orchestrator.CreateWorkflow(workflow(NO_DEPLOYS))
    started = await governed.orchestrator.ExecuteWorkflow(
        pb.ExecuteWorkflowRequest(workflow_id=created.workflow_id)
    )
    execution_id = started.execution.execution_id

    async def finished() -> pb.Execution:
        while True:
            got = await governed.orchestrator.GetExecution(
                pb.GetExecutionRequest(execution_id=execution_id)
            )
            if got.execution.finished_at.seconds:
                return got.execution
            await asyncio.sleep(0.05)

    return execution_id, asyncio.create_task(finished())


async def test_a_step_that_needs_approval_waits_for_it_and_runs_once_approved(
    world: World, governed: Governed
) -> None:
    await world.add_domain("data_domain")
    ai = await world.add_domain("ai_domain")
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=DEPLOYS_NEED_APPROVAL))
    _, finished = await _start(governed)

    approval = await _pending_approval(governed)
    assert approval.action == "ai_domain.deploy"
    await asyncio.sleep(0.3)
    assert not finished.done()  # waiting, not failed and rolled back
    assert not ai.runs
    await governed.governance.Approve(
        gov.ApproveRequest(approval_id=approval.approval_id, approver="ops:bob", reason="ok")
    )

    ex = await asyncio.wait_for(finished, 30)
    assert ex.state == pb.EXECUTION_STATE_SUCCEEDED, ex.error
    assert ex.steps[1].state == pb.STEP_STATE_SUCCEEDED
    assert len(ai.runs) == 1
    everything = await governed.governance.ListApprovals(gov.ListApprovalsRequest())
    assert [a.approval_id for a in everything.approvals] == [approval.approval_id]


async def test_a_rejected_step_fails_and_rolls_back_with_the_rejection_in_its_record(
    world: World, governed: Governed
) -> None:
    await world.add_domain("data_domain")
    ai = await world.add_domain("ai_domain")
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=DEPLOYS_NEED_APPROVAL))
    _, finished = await _start(governed)
    approval = await _pending_approval(governed)
    await governed.governance.Reject(
        gov.RejectRequest(approval_id=approval.approval_id, approver="ops:bob", reason="not now")
    )
    ex = await asyncio.wait_for(finished, 30)
    assert ex.state == pb.EXECUTION_STATE_ROLLED_BACK
    assert ex.steps[1].state == pb.STEP_STATE_FAILED
    assert "rejected" in ex.steps[1].error
    assert ex.steps[0].state == pb.STEP_STATE_COMPENSATED
    assert not ai.runs
