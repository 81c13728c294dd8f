"""Guardian asks governance before healing: a real governance server, a real Guardian
supervising a test component."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

from gateway.server import Gateway, build_app
from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from grace.kernels.governance.v1 import governance_pb2 as gov
from grace.kernels.governance.v1 import governance_pb2_grpc
from services.common.channels import channel
from services.common.config import ServerConfig
from services.common.pki import Identity
from services.guardian.config import GuardianConfig
from services.guardian.server import GuardianServer
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from tests.gateway.conftest import gateway_config
from tests.guardian.conftest import component, topology
from tests.guardian.test_cli import _grace
from tests.support import free_ports, server_config, serving, session_pki

pytestmark = pytest.mark.slow


class Discard:
    async def publish(self, events: object) -> None:
        """Accepts and forgets: the bus and the log are not under test here."""


@dataclass
class Setup:
    guardian: guardian_pb2_grpc.GuardianServiceStub
    governance: governance_pb2_grpc.GovernanceServiceStub
    service: GuardianServer
    address: str


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path, mode: Mode, *, governance_up: bool = True, fallback: str = "log_only"
) -> AsyncIterator[Setup]:
    (tmp_path / "guardian").mkdir(parents=True, exist_ok=True)
    governance = GovernanceServer(
        GovernanceConfig(
            server=server_config("governance", tmp_path),
            settings=GovernanceSettings(mode=mode),
        ),
        bus=Discard(),
        immutable_log=Discard(),
    )
    async with serving(server_config("governance", tmp_path), governance) as (gov_server, chan):
        peers = {"GRACE_GOVERNANCE_ADDR": gov_server.address} if governance_up else {}
        config = GuardianConfig(
            server=server_config("guardian", tmp_path / "guardian", peers=peers),
            governance_fallback=fallback,
        )
        [port] = free_ports(1)
        service = GuardianServer(config, topology({"alpha": component("alpha", port)}))
        async with serving(config.server, service) as (server, guardian_chan):
            yield Setup(
                guardian_pb2_grpc.GuardianServiceStub(guardian_chan),
                governance_pb2_grpc.GovernanceServiceStub(chan),
                service,
                server.address,
            )


async def forbid_restarts(governance: governance_pb2_grpc.GovernanceServiceStub) -> None:
    await governance.CreatePolicy(
        gov.CreatePolicyRequest(
            policy=gov.Policy(
                policy_id="change-freeze",
                description="no restarts during the change freeze",
                action="heal:restart_component",
                effect=gov.EFFECT_FORBID,
            )
        )
    )


async def pid_of(guardian: guardian_pb2_grpc.GuardianServiceStub, name: str) -> int:
    got = await guardian.GetComponent(guardian_pb2.GetComponentRequest(component_name=name))
    return got.component.pid


async def test_an_enforced_forbid_refuses_the_heal_and_leaves_the_component_alone(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, Mode.ENFORCE) as s:
        await forbid_restarts(s.governance)
        before = await pid_of(s.guardian, "alpha")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async with session_pki().channel_as(s.address, "user:alice", "operator") as alice:
                await guardian_pb2_grpc.GuardianServiceStub(alice).Heal(
                    guardian_pb2.HealRequest(component_name="alpha", playbook="restart_component"),
                    metadata=[("x-actor", "user:mallory")],
                )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "no restarts during the change freeze" in (refused.value.details() or "")
        assert "user:alice" in (refused.value.details() or "")
        assert await pid_of(s.guardian, "alpha") == before
        decisions = await s.service.store.decisions("alpha")
        denied = [d for d in decisions if d.event_type == "healing.denied"]
        assert len(denied) == 1
        assert denied[0].data["actor"] == "user:alice"
        assert not any(d.event_type == "healing.started" for d in decisions)

        # `grace heal` reports the refusal with the policy's reason.
        cli = await asyncio.to_thread(
            _grace,
            "heal",
            "alpha",
            "--playbook",
            "restart_component",
            "--guardian",
            s.address,
            env=session_pki().cli_env(),
        )
        assert cli.returncode != 0
        assert "PERMISSION_DENIED" in cli.stderr
        assert "no restarts during the change freeze" in cli.stderr
        assert await pid_of(s.guardian, "alpha") == before


HEAL_FREEZE = gov.Policy(
    policy_id="heal-freeze",
    description="hands off the components during the freeze",
    action="heal:*",
    effect=gov.EFFECT_FORBID,
)


async def test_a_heal_freeze_also_refuses_restart_stop_and_start_over_grpc(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, Mode.ENFORCE) as s:
        await s.governance.CreatePolicy(gov.CreatePolicyRequest(policy=HEAL_FREEZE))
        before = await pid_of(s.guardian, "alpha")
        name = "alpha"
        calls = {
            "heal:restart_component": s.guardian.RestartComponent(
                guardian_pb2.RestartComponentRequest(component_name=name),
                metadata=[("x-actor", "user:mallory")],
            ),
            "heal:stop_component": s.guardian.StopComponent(
                guardian_pb2.StopComponentRequest(component_name=name),
                metadata=[("x-actor", "user:mallory")],
            ),
            "heal:start_component": s.guardian.StartComponent(
                guardian_pb2.StartComponentRequest(component_name=name),
                metadata=[("x-actor", "user:mallory")],
            ),
        }
        for action, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, action
            assert action in (refused.value.details() or "")
            assert "hands off the components" in (refused.value.details() or "")
        assert await pid_of(s.guardian, "alpha") == before
        # Governance judged the authenticated caller (the test PKI's admin), not x-actor.
        listed = await s.governance.ListDecisions(gov.ListDecisionsRequest(actor="test-admin"))
        assert sorted(d.action for d in listed.decisions) == sorted(calls)
        assert {d.resource for d in listed.decisions} == {"component:alpha"}


async def test_a_heal_freeze_refuses_the_restart_route_of_the_gateway(tmp_path: Path) -> None:
    async with running(tmp_path, Mode.ENFORCE) as s:
        await s.governance.CreatePolicy(gov.CreatePolicyRequest(policy=HEAL_FREEZE))
        before = await pid_of(s.guardian, "alpha")
        config = gateway_config(
            {"GRACE_GUARDIAN_ADDR": s.address, "GRACE_GATEWAY_GOVERNANCE": "off"}
        )
        async with (
            Gateway(config, build_app(config)) as gateway,
            httpx.AsyncClient(base_url=gateway.url, timeout=30) as http,
        ):
            for verb in ("restart", "stop"):
                refused = await http.post(f"/guardian/components/alpha/{verb}")
                assert refused.status_code == 403, refused.text
                assert f"heal:{verb}_component" in refused.text
        assert await pid_of(s.guardian, "alpha") == before


async def test_a_heal_freeze_does_not_stop_guardian_restarting_a_crashed_component(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, Mode.ENFORCE) as s:
        await s.governance.CreatePolicy(gov.CreatePolicyRequest(policy=HEAL_FREEZE))
        before = await pid_of(s.guardian, "alpha")
        os.kill(before, signal.SIGKILL)
        for _ in range(600):
            got = await s.guardian.GetComponent(
                guardian_pb2.GetComponentRequest(component_name="alpha")
            )
            if got.component.pid not in (0, before) and (
                got.component.state == guardian_pb2.COMPONENT_STATE_SERVING
            ):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("alpha was not restarted after its crash")
        listed = await s.governance.ListDecisions(gov.ListDecisionsRequest())
        assert not listed.decisions


async def test_log_only_lets_the_heal_run_and_records_what_enforcing_would_do(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, Mode.LOG_ONLY) as s:
        await forbid_restarts(s.governance)
        before = await pid_of(s.guardian, "alpha")
        healed = await s.guardian.Heal(
            guardian_pb2.HealRequest(component_name="alpha", playbook="restart_component")
        )
        assert healed.success
        assert healed.component.pid != before
        # The actor is who authenticated (the test process's admin token), not a header.
        listed = await s.governance.ListDecisions(gov.ListDecisionsRequest(actor="test-admin"))
        [decision] = listed.decisions
        assert (decision.action, decision.resource) == (
            "heal:restart_component",
            "component:alpha",
        )
        assert decision.risk_level == gov.RISK_LEVEL_MEDIUM
        assert decision.verdict == gov.VERDICT_ALLOW
        assert decision.evaluated_verdict == gov.VERDICT_DENY
        started = [
            d for d in await s.service.store.decisions("alpha") if d.event_type == "healing.started"
        ]
        assert started[-1].data["governance_decision"] == decision.decision_id


async def test_a_decision_the_caller_holds_is_confirmed_not_asked_again(tmp_path: Path) -> None:
    async with running(tmp_path, Mode.ENFORCE) as s:
        asked = await s.governance.Evaluate(
            gov.EvaluateRequest(
                actor="immune",
                action="heal:restart_component",
                resource="component:alpha",
                risk_level=gov.RISK_LEVEL_MEDIUM,
            )
        )
        assert asked.allowed
        decision_id = asked.decision.decision_id
        # The immune kernel is a component: it names whom it acts for.
        immune = session_pki().client(identity=Identity("component", "immune"))
        async with channel(s.address, security=immune) as chan:
            healed = await guardian_pb2_grpc.GuardianServiceStub(chan).Heal(
                guardian_pb2.HealRequest(component_name="alpha", playbook="restart_component"),
                metadata=[("x-actor", "immune"), ("x-governance-decision", decision_id)],
            )
        assert healed.success
        listed = await s.governance.ListDecisions(gov.ListDecisionsRequest())
        assert [d.decision_id for d in listed.decisions] == [decision_id]

        # The same decision does not stretch to another playbook, nor does an unknown one.
        for playbook, claimed in (("rebind_port", decision_id), ("restart_component", "nope")):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await s.guardian.Heal(
                    guardian_pb2.HealRequest(component_name="alpha", playbook=playbook),
                    metadata=[("x-governance-decision", claimed)],
                )
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_heal_needing_approval_names_the_approval(tmp_path: Path) -> None:
    async with running(tmp_path, Mode.ENFORCE) as s:
        await s.governance.CreatePolicy(
            gov.CreatePolicyRequest(
                policy=gov.Policy(
                    policy_id="ask-first",
                    description="a person approves restarts",
                    action="heal:*",
                    effect=gov.EFFECT_REQUIRE_APPROVAL,
                )
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as pending:
            await s.guardian.Heal(guardian_pb2.HealRequest(component_name="alpha"))
        assert pending.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        approvals = await s.governance.ListApprovals(gov.ListApprovalsRequest())
        [approval] = approvals.approvals
        assert approval.approval_id in (pending.value.details() or "")


async def test_with_governance_down_the_fallback_mode_decides(tmp_path: Path) -> None:
    async with running(tmp_path / "a", Mode.ENFORCE, governance_up=False) as s:
        before = await pid_of(s.guardian, "alpha")
        healed = await s.guardian.Heal(
            guardian_pb2.HealRequest(component_name="alpha", playbook="restart_component")
        )
        assert healed.success  # log_only fallback: allowed and recorded locally
        assert healed.component.pid != before
        assert s.service.governance is not None
        [record] = s.service.governance.fallback_records
        assert (record.action, record.allowed) == ("heal:restart_component", True)
    async with running(tmp_path / "b", Mode.ENFORCE, governance_up=False, fallback="enforce") as s:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await s.guardian.Heal(
                guardian_pb2.HealRequest(component_name="alpha", playbook="rebind_port")
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "governance unavailable" in (refused.value.details() or "")
        medium = await s.guardian.Heal(
            guardian_pb2.HealRequest(component_name="alpha", playbook="restart_component")
        )
        assert medium.success  # enforce fallback denies only high risk


def test_governance_settings_are_read_from_the_environment() -> None:
    config = GuardianConfig.from_env(
        {
            "GRACE_GUARDIAN_GOVERNANCE": "off",
            "GRACE_GUARDIAN_GOVERNANCE_FALLBACK": "enforce",
            "GRACE_GUARDIAN_GOVERNANCE_DEADLINE_S": "0.5",
        }
    )
    assert (config.governance, config.governance_fallback, config.governance_deadline_s) == (
        False,
        "enforce",
        0.5,
    )
    assert isinstance(config.server, ServerConfig)


async def test_an_approved_heal_goes_through_once_with_its_decision(tmp_path: Path) -> None:
    async with running(tmp_path, Mode.ENFORCE) as s:
        await s.governance.CreatePolicy(
            gov.CreatePolicyRequest(
                policy=gov.Policy(
                    policy_id="ask-first",
                    description="a person approves restarts",
                    action="heal:*",
                    effect=gov.EFFECT_REQUIRE_APPROVAL,
                )
            )
        )
        alice = [("x-actor", "user:alice")]
        heal = guardian_pb2.HealRequest(component_name="alpha", playbook="restart_component")
        with pytest.raises(grpc.aio.AioRpcError) as pending:
            await s.guardian.Heal(heal, metadata=alice)
        [approval] = (await s.governance.ListApprovals(gov.ListApprovalsRequest())).approvals
        await s.governance.Approve(
            gov.ApproveRequest(approval_id=approval.approval_id, approver="user:bob", reason="ok")
        )
        before = await pid_of(s.guardian, "alpha")
        with_decision = [*alice, ("x-governance-decision", approval.decision_id)]

        healed = await s.guardian.Heal(heal, metadata=with_decision)

        assert healed.success
        assert healed.component.pid != before
        # Spent: the same decision does not heal twice, and no new approval was asked for.
        with pytest.raises(grpc.aio.AioRpcError) as spent:
            await s.guardian.Heal(heal, metadata=with_decision)
        assert spent.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "already redeemed" in (spent.value.details() or "")
        listed = await s.governance.ListApprovals(gov.ListApprovalsRequest())
        assert [a.approval_id for a in listed.approvals] == [approval.approval_id]
        assert approval.approval_id in (pending.value.details() or "")
