"""Governance over gRPC: policies, decisions, the approval flow, the verify action, the
client and its fallback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.kernels.governance.v1 import governance_pb2 as pb
from grace.kernels.governance.v1 import governance_pb2_grpc
from services.common.governance_client import (
    GovernanceClient,
    check_with_approval,
    gateway_request,
)
from services.common.outbox import OutboxEvent
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from tests.support import eventually, free_port, server_config, serving, session_pki


class Collected:
    """A publisher that keeps what it is given (the immutable log / bus in these tests)."""

    def __init__(self) -> None:
        self.events: list[OutboxEvent] = []

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.events.extend(events)


class Running:
    def __init__(self, address: str, chan: grpc.aio.Channel, log: Collected) -> None:
        self.address = address
        self.stub = governance_pb2_grpc.GovernanceServiceStub(chan)
        self.domain = domain_pb2_grpc.DomainServiceStub(chan)
        self.log = log


@pytest.fixture
async def governance(tmp_path: Path) -> AsyncIterator[Running]:
    config = GovernanceConfig(
        server=server_config("governance", tmp_path),
        settings=GovernanceSettings(mode=Mode.ENFORCE),
        relay_interval_s=0.05,
    )
    log = Collected()
    service = GovernanceServer(config, bus=Collected(), immutable_log=log)
    async with serving(config.server, service) as (server, chan):
        yield Running(server.address, chan, log)


APPROVE_RESTARTS = pb.Policy(
    policy_id="restarts",
    description="restarts wait for an operator",
    principal="immune",
    action="heal:*",
    effect=pb.EFFECT_REQUIRE_APPROVAL,
)


async def test_the_approval_flow_end_to_end(governance: Running) -> None:
    await governance.stub.CreatePolicy(pb.CreatePolicyRequest(policy=APPROVE_RESTARTS))
    evaluated = await governance.stub.Evaluate(
        pb.EvaluateRequest(
            actor="immune",
            action="heal:restart_component",
            resource="component:ai_domain",
            risk_level=pb.RISK_LEVEL_MEDIUM,
        )
    )
    decision = evaluated.decision
    assert decision.verdict == pb.VERDICT_PENDING_APPROVAL
    assert not evaluated.allowed
    assert list(decision.policy_ids) == ["restarts"]
    watch = governance.stub.WatchApproval(
        pb.WatchApprovalRequest(approval_id=decision.approval_id), timeout=20
    )
    first = await watch.read()
    assert first.approval.status == pb.APPROVAL_STATUS_PENDING
    listed = await governance.stub.ListApprovals(
        pb.ListApprovalsRequest(status=pb.APPROVAL_STATUS_PENDING)
    )
    assert [a.approval_id for a in listed.approvals] == [decision.approval_id]
    with pytest.raises(grpc.aio.AioRpcError) as own:
        async with session_pki().channel_as(governance.address, "immune", "operator") as chan:
            await governance_pb2_grpc.GovernanceServiceStub(chan).Approve(
                pb.ApproveRequest(approval_id=decision.approval_id)
            )
    assert own.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    async with session_pki().channel_as(governance.address, "ops:bob", "operator") as chan:
        await governance_pb2_grpc.GovernanceServiceStub(chan).Approve(
            pb.ApproveRequest(approval_id=decision.approval_id, reason="ok")
        )
    settled = await watch.read()
    assert settled.approval.status == pb.APPROVAL_STATUS_APPROVED
    assert settled.approval.decided_by == "ops:bob"
    assert await watch.read() == grpc.aio.EOF
    stats = await governance.stub.GetGovernanceStats(pb.GetGovernanceStatsRequest())
    assert stats.approvals_by_status == {"APPROVAL_STATUS_APPROVED": 1}
    assert stats.decisions_by_verdict == {"VERDICT_PENDING_APPROVAL": 1}


async def test_decisions_reach_the_immutable_log_and_list_with_filters(governance: Running) -> None:
    high = await governance.stub.Evaluate(
        pb.EvaluateRequest(actor="alice", action="POST:/x", risk_level=pb.RISK_LEVEL_HIGH)
    )
    assert high.decision.verdict == pb.VERDICT_DENY
    assert "default for high risk is forbid" in high.decision.reasons[-1]
    await governance.stub.Evaluate(
        pb.EvaluateRequest(actor="alice", action="GET:/x", risk_level=pb.RISK_LEVEL_LOW)
    )
    denied = await governance.stub.ListDecisions(
        pb.ListDecisionsRequest(actor="alice", verdict=pb.VERDICT_DENY)
    )
    assert [d.decision_id for d in denied.decisions] == [high.decision.decision_id]
    await eventually(
        lambda: (
            {e.subject for e in governance.log.events if e.event_type == "governance.decision"}
            >= {high.decision.decision_id}
        ),
        within_s=10,
    )


async def test_policy_crud_and_bad_requests_answer_the_right_codes(governance: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as no_effect:
        await governance.stub.CreatePolicy(pb.CreatePolicyRequest(policy=pb.Policy(policy_id="p")))
    assert no_effect.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    cond = pb.Condition(
        attribute="amount",
        operator=pb.CONDITION_OPERATOR_GT,
        value=struct_pb2.Value(number_value=10),
    )
    created = await governance.stub.CreatePolicy(
        pb.CreatePolicyRequest(
            policy=pb.Policy(policy_id="p", effect=pb.EFFECT_FORBID, conditions=[cond])
        )
    )
    assert created.policy.version == 1
    assert created.policy.conditions[0].value.number_value == 10
    updated = await governance.stub.UpdatePolicy(
        pb.UpdatePolicyRequest(
            policy=pb.Policy(policy_id="p", effect=pb.EFFECT_PERMIT), expected_version=1
        )
    )
    assert updated.policy.version == 2
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await governance.stub.UpdatePolicy(
            pb.UpdatePolicyRequest(
                policy=pb.Policy(policy_id="p", effect=pb.EFFECT_PERMIT), expected_version=1
            )
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    await governance.stub.DeletePolicy(pb.DeletePolicyRequest(policy_id="p"))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await governance.stub.GetPolicy(pb.GetPolicyRequest(policy_id="p"))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    mode = await governance.stub.SetMode(pb.SetModeRequest(mode=pb.MODE_LOG_ONLY))
    assert mode.mode == pb.MODE_LOG_ONLY
    got = await governance.stub.GetMode(pb.GetModeRequest())
    assert got.mode == pb.MODE_LOG_ONLY
    assert len(got.defaults) == 4


def verify_input(**fields: object) -> struct_pb2.Struct:
    data = struct_pb2.Struct()
    data.update(fields)
    return data


async def test_the_verify_action_fails_a_workflow_step_that_policy_forbids(
    governance: Running,
) -> None:
    described = await governance.domain.DescribeDomain(domain_pb2.DescribeDomainRequest())
    assert "verify" in [a.name for a in described.actions]
    await governance.stub.CreatePolicy(
        pb.CreatePolicyRequest(
            policy=pb.Policy(
                policy_id="no-prod",
                description="nothing touches prod",
                resource="prod:*",
                effect=pb.EFFECT_FORBID,
            )
        )
    )
    ok = await governance.domain.Execute(
        domain_pb2.ExecuteRequest(
            action="verify",
            input=verify_input(actor="workflow:wf1", resource="staging:db", risk_level="low"),
            workflow_id="wf1",
            idempotency_key="e1/step_3",
        )
    )
    assert ok.output["allowed"] is True
    assert ok.output["verdict"] == "allow"
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await governance.domain.Execute(
            domain_pb2.ExecuteRequest(
                action="verify",
                input=verify_input(actor="workflow:wf1", resource="prod:db"),
                workflow_id="wf1",
                idempotency_key="e2/step_3",
            )
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "nothing touches prod" in (denied.value.details() or "")
    recorded = await governance.stub.ListDecisions(
        pb.ListDecisionsRequest(actor="workflow:wf1", verdict=pb.VERDICT_DENY)
    )
    assert len(recorded.decisions) == 1


async def test_the_verify_action_waits_for_an_approval(governance: Running) -> None:
    await governance.stub.CreatePolicy(pb.CreatePolicyRequest(policy=APPROVE_RESTARTS))
    request = domain_pb2.ExecuteRequest(
        action="verify",
        input=verify_input(actor="immune", action="heal:restart_component"),
        idempotency_key="e3/step_1",
    )
    with pytest.raises(grpc.aio.AioRpcError) as waiting:
        await governance.domain.Execute(request)
    assert waiting.value.code() == grpc.StatusCode.UNAVAILABLE
    pending = await governance.stub.ListApprovals(pb.ListApprovalsRequest())
    approval_id = pending.approvals[0].approval_id
    async with session_pki().channel_as(governance.address, "ops", "operator") as chan:
        await governance_pb2_grpc.GovernanceServiceStub(chan).Approve(
            pb.ApproveRequest(approval_id=approval_id)
        )
    retried = await governance.domain.Execute(request)  # same key: same decision, now approved
    assert retried.output["allowed"] is True
    assert retried.output["approval_id"] == approval_id


async def test_the_client_asks_governance_and_waits_for_approvals(governance: Running) -> None:
    client = GovernanceClient(governance.address, fallback_mode="enforce")
    try:
        low = await client.check("alice", "GET:/x", risk_level="low")
        assert low.allowed
        assert low.source == "governance"
        assert low.decision_id
        high = await client.check("alice", "POST:/x", risk_level="high")
        assert not high.allowed
        assert high.verdict == "deny"
        await governance.stub.CreatePolicy(pb.CreatePolicyRequest(policy=APPROVE_RESTARTS))

        ops_channel = session_pki().channel_as(governance.address, "ops", "operator")

        async def approve_soon() -> None:
            while True:
                listed = await governance.stub.ListApprovals(
                    pb.ListApprovalsRequest(status=pb.APPROVAL_STATUS_PENDING)
                )
                if listed.approvals:
                    async with ops_channel as chan:
                        await governance_pb2_grpc.GovernanceServiceStub(chan).Approve(
                            pb.ApproveRequest(approval_id=listed.approvals[0].approval_id)
                        )
                    return
                await asyncio.sleep(0.02)

        approver = asyncio.create_task(approve_soon())
        waited = await check_with_approval(client, "immune", "heal:rebind_port", approval_wait_s=20)
        await approver
        assert waited.allowed
        assert waited.approval_id
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("mode", "risk", "allowed"),
    [
        ("log_only", "critical", True),
        ("enforce", "high", False),
        ("enforce", "critical", False),
        ("enforce", "medium", True),
    ],
)
async def test_when_governance_is_down_the_client_applies_its_fallback_mode(
    mode: str, risk: str, allowed: bool
) -> None:
    seen: list[object] = []
    client = GovernanceClient(
        f"127.0.0.1:{free_port()}", fallback_mode=mode, deadline_s=0.5, on_fallback=seen.append
    )
    try:
        decision = await client.check("alice", "POST:/x", risk_level=risk)
    finally:
        await client.close()
    assert decision.allowed is allowed
    assert decision.source == "fallback"
    assert len(client.fallback_records) == 1
    assert client.fallback_records[0].allowed is allowed
    assert seen == [client.fallback_records[0]]


def test_the_gateway_asks_only_about_mutating_requests_and_skips_health() -> None:
    asked = gateway_request("post", "/domains/workflows/create", {"X-Actor": "user:alice"})
    assert asked is not None
    assert (asked.actor, asked.action) == ("user:alice", "POST:/domains/workflows/create")
    assert gateway_request("GET", "/domains/list", {}) is None
    assert gateway_request("POST", "/health", {}) is None
    anonymous = gateway_request("DELETE", "/domains/domain/x", {})
    assert anonymous is not None
    assert anonymous.actor == "anonymous"
