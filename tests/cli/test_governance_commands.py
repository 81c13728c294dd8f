"""`grace policies` and `grace approvals` against a real governance server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from grace.kernels.governance.v1 import governance_pb2 as pb
from grace.kernels.governance.v1 import governance_pb2_grpc
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from tests.cli.conftest import Result, grace
from tests.kernels.governance.test_servicer import Collected
from tests.support import server_config, serving

POLICY = """
policy_id: restarts
description: restarts wait for an operator
principal: immune
action: "heal:*"
effect: EFFECT_REQUIRE_APPROVAL
"""


class Governance:
    def __init__(self, address: str, stub: governance_pb2_grpc.GovernanceServiceAsyncStub) -> None:
        self.env = {"GRACE_GOVERNANCE_ADDR": address, "GRACE_DATA_DIR": "/nonexistent"}
        self.stub = stub

    async def grace(self, *args: str) -> Result:
        return await grace(*args, env=self.env)


@pytest.fixture
async def governance(tmp_path: Path) -> AsyncIterator[Governance]:
    config = GovernanceConfig(
        server=server_config("governance", tmp_path),
        settings=GovernanceSettings(mode=Mode.ENFORCE),
        relay_interval_s=0.05,
    )
    service = GovernanceServer(config, bus=Collected(), immutable_log=Collected())
    async with serving(config.server, service) as (server, chan):
        yield Governance(server.address, governance_pb2_grpc.GovernanceServiceStub(chan))


async def test_a_policy_from_yaml_holds_a_request_until_the_cli_approves_it(
    governance: Governance, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    created = await governance.grace("policies", "create", str(policy))
    assert created.code == 0, created.stderr
    assert json.loads(created.stdout)["effect"] == "EFFECT_REQUIRE_APPROVAL"
    listed = await governance.grace("policies", "list", "-o", "table")
    assert "restarts" in listed.stdout
    assert "REQUIRE_APPROVAL" in listed.stdout

    evaluated = await governance.stub.Evaluate(
        pb.EvaluateRequest(
            actor="immune", action="heal:restart_component", resource="component:ai_domain"
        )
    )
    approval_id = evaluated.decision.approval_id
    pending = await governance.grace("approvals", "list")
    assert [a["approval_id"] for a in json.loads(pending.stdout)] == [approval_id]

    approved = await governance.grace("approvals", "approve", approval_id, "--reason", "planned")
    assert approved.code == 0, approved.stderr
    decided = json.loads(approved.stdout)
    # A secure Grace records the authenticated caller (the test PKI's admin token), not
    # the name the CLI was given.
    assert (decided["status"], decided["decided_by"]) == ("APPROVAL_STATUS_APPROVED", "test-admin")
    assert json.loads((await governance.grace("approvals", "list")).stdout) == []

    again = await governance.grace("approvals", "reject", approval_id, "--reason", "late")
    assert again.code == 4, again.stderr  # already decided: refused by the server
    assert "FAILED_PRECONDITION" in again.stderr

    decisions = await governance.grace("policies", "decisions", "--verdict", "pending_approval")
    assert [d["approval_id"] for d in json.loads(decisions.stdout)] == [approval_id]


async def test_policies_mode_shows_and_sets_the_enforcement_mode(governance: Governance) -> None:
    shown = await governance.grace("policies", "mode", "-o", "table")
    assert shown.stdout.startswith("mode: ENFORCE")
    changed = await governance.grace("policies", "mode", "log_only")
    assert json.loads(changed.stdout)["mode"] == "MODE_LOG_ONLY"
    missing = await governance.grace("policies", "show", "nope")
    assert missing.code == 3
