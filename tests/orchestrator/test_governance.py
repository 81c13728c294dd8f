"""The orchestrator asks governance before each step (seed 004, phase 4)."""

from __future__ import annotations

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
from tests.orchestrator.test_workflows import run
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
