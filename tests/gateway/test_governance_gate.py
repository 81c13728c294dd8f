"""The gateway asks governance before forwarding mutating requests (seed 004, phase 3)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.server import Gateway, build_app
from grace.kernels.governance.v1 import governance_pb2 as gov
from grace.kernels.governance.v1 import governance_pb2_grpc
from services.kernels.governance.config import GovernanceConfig
from services.kernels.governance.governance import GovernanceSettings
from services.kernels.governance.model import Mode
from services.kernels.governance.server import GovernanceServer
from services.registry.server import RegistryServer
from tests.gateway.conftest import gateway_config
from tests.registry.conftest import registry_config
from tests.support import free_ports, server_config, serving


class Discard:
    async def publish(self, events: object) -> None:
        """The bus and the log are not under test here."""


@dataclass
class GovernedStack:
    http: httpx.AsyncClient
    governance: governance_pb2_grpc.GovernanceServiceStub


@pytest.fixture
async def governed(tmp_path: Path) -> AsyncIterator[GovernedStack]:
    async with governed_stack(tmp_path) as stack:
        yield stack


@contextlib.asynccontextmanager
async def governed_stack(
    tmp_path: Path, env: dict[str, str] | None = None
) -> AsyncIterator[GovernedStack]:
    registry = RegistryServer(registry_config(tmp_path))
    governance = GovernanceServer(
        GovernanceConfig(
            server=server_config("governance", tmp_path),
            settings=GovernanceSettings(mode=Mode.ENFORCE),
        ),
        bus=Discard(),
        immutable_log=Discard(),
    )
    async with contextlib.AsyncExitStack() as stack:
        reg, _ = await stack.enter_async_context(serving(registry.config.server, registry))
        gov_server, gov_chan = await stack.enter_async_context(
            serving(governance.config.server, governance)
        )
        config = gateway_config(
            {
                "GRACE_REGISTRY_ADDR": reg.address,
                "GRACE_GOVERNANCE_ADDR": gov_server.address,
                **(env or {}),
            }
        )
        gateway = await stack.enter_async_context(Gateway(config, build_app(config)))
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=gateway.url, timeout=30))
        yield GovernedStack(http, governance_pb2_grpc.GovernanceServiceStub(gov_chan))


NO_MALLORY = gov.Policy(
    policy_id="no-mallory",
    description="mallory may not register domains",
    principal="user:mallory",
    action="POST:/domains/*",
    effect=gov.EFFECT_FORBID,
)


async def test_an_enforced_policy_blocks_a_mutating_request_with_403_and_reasons(
    governed: GovernedStack,
) -> None:
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=NO_MALLORY))
    refused = await governed.http.post(
        "/domains/register",
        json={"domain_id": "evil", "port": 9001},
        headers={"X-Actor": "user:mallory"},
    )
    assert refused.status_code == 403
    assert "mallory may not register domains" in refused.text
    listed = await governed.http.get("/domains/list")
    assert listed.status_code == 200
    assert "evil" not in listed.text
    allowed = await governed.http.post(
        "/domains/register",
        json={"domain_id": "good", "port": 9002},
        headers={"X-Actor": "user:alice"},
    )
    assert allowed.status_code == 200


async def test_in_log_only_mode_the_request_passes_and_the_decision_is_recorded(
    governed: GovernedStack,
) -> None:
    await governed.governance.SetMode(gov.SetModeRequest(mode=gov.MODE_LOG_ONLY))
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=NO_MALLORY))
    passed = await governed.http.post(
        "/domains/register",
        json={"domain_id": "evil", "port": 9001},
        headers={"X-Actor": "user:mallory"},
    )
    assert passed.status_code == 200
    recorded = await governed.governance.ListDecisions(
        gov.ListDecisionsRequest(actor="user:mallory")
    )
    [decision] = recorded.decisions
    assert decision.action == "POST:/domains/register"
    assert decision.verdict == gov.VERDICT_ALLOW
    assert decision.evaluated_verdict == gov.VERDICT_DENY
    assert list(decision.policy_ids) == ["no-mallory"]


async def test_reads_and_health_are_not_asked_about(governed: GovernedStack) -> None:
    assert (await governed.http.get("/domains/list")).status_code == 200
    assert (await governed.http.get("/domains/system/health")).status_code in (200, 503)
    stats = await governed.governance.GetGovernanceStats(gov.GetGovernanceStatsRequest())
    assert stats.decisions == 0


SECOND_PAIR_OF_EYES = gov.Policy(
    policy_id="register-needs-approval",
    description="registering a domain waits for a person",
    principal="user:alice",
    action="POST:/domains/register",
    effect=gov.EFFECT_REQUIRE_APPROVAL,
)


async def _approve(governed: GovernedStack, approval_id: str) -> None:
    await governed.governance.Approve(
        gov.ApproveRequest(approval_id=approval_id, approver="user:bob", reason="looks right")
    )


async def _domain_ids(governed: GovernedStack) -> list[str]:
    listed = await governed.http.get("/domains/list")
    assert listed.status_code == 200, listed.text
    return [d["domain_id"] for d in listed.json()["domains"]]


async def test_an_approved_request_goes_through_once_with_its_retry_token(
    governed: GovernedStack,
) -> None:
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=SECOND_PAIR_OF_EYES))
    alice = {"X-Actor": "user:alice"}
    body = {"domain_id": "approved_one", "port": 9003}

    held = await governed.http.post("/domains/register", json=body, headers=alice)
    assert held.status_code == 202, held.text
    pending = held.json()
    assert pending["status"] == "PENDING_APPROVAL"
    assert pending["approval_id"]
    assert pending["retry_token"]
    assert held.headers["x-approval-id"] == pending["approval_id"]
    assert "approved_one" not in await _domain_ids(governed)

    await _approve(governed, pending["approval_id"])
    token = {**alice, "X-Retry-Token": pending["retry_token"]}
    # The token is bound to the request it was made for: another body cannot use it.
    other = await governed.http.post(
        "/domains/register", json={"domain_id": "smuggled", "port": 9004}, headers=token
    )
    assert other.status_code == 403, other.text
    assert "smuggled" not in await _domain_ids(governed)

    redeemed = await governed.http.post("/domains/register", json=body, headers=token)
    assert redeemed.status_code == 200, redeemed.text
    assert "approved_one" in await _domain_ids(governed)

    again = await governed.http.post("/domains/register", json=body, headers=token)
    assert again.status_code == 409, again.text
    assert "already redeemed" in again.json()["error"]["message"]
    # A new request without the token asks anew: a new approval, not the spent one.
    anew = await governed.http.post("/domains/register", json=body, headers=alice)
    assert anew.status_code == 202, anew.text
    assert anew.json()["approval_id"] != pending["approval_id"]


async def test_a_retry_token_is_not_spent_while_the_upstream_cannot_be_reached(
    tmp_path: Path,
) -> None:
    # The registry the gateway forwards to is not up yet: the approved retry answers 503
    # without redeeming its decision, and the same token goes through once it is up.
    (port,) = free_ports(1)
    env = {"GRACE_REGISTRY_ADDR": f"127.0.0.1:{port}"}
    async with governed_stack(tmp_path / "stack", env) as governed:
        await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=SECOND_PAIR_OF_EYES))
        alice = {"X-Actor": "user:alice"}
        body = {"domain_id": "late_upstream", "port": 9007}
        held = await governed.http.post("/domains/register", json=body, headers=alice)
        assert held.status_code == 202, held.text
        await _approve(governed, held.json()["approval_id"])
        token = {**alice, "X-Retry-Token": held.json()["retry_token"]}

        down = await governed.http.post(
            "/domains/register", json=body, headers={**token, "grpc-timeout": "1S"}
        )
        assert down.status_code == 503, down.text
        assert "cannot be reached" in down.json()["error"]["message"]

        late = RegistryServer(registry_config(tmp_path / "late"))
        config = dataclasses.replace(late.config.server, port=port)
        async with serving(config, late):
            redeemed = await governed.http.post("/domains/register", json=body, headers=token)
            assert redeemed.status_code == 200, redeemed.text
            assert "late_upstream" in await _domain_ids(governed)
            again = await governed.http.post("/domains/register", json=body, headers=token)
            assert again.status_code == 409, again.text


async def test_a_token_retried_before_the_approval_is_settled_is_still_pending(
    governed: GovernedStack,
) -> None:
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=SECOND_PAIR_OF_EYES))
    alice = {"X-Actor": "user:alice"}
    body = {"domain_id": "early_bird", "port": 9005}
    held = await governed.http.post("/domains/register", json=body, headers=alice)
    assert held.status_code == 202, held.text
    early = await governed.http.post(
        "/domains/register",
        json=body,
        headers={**alice, "X-Retry-Token": held.json()["retry_token"]},
    )
    assert early.status_code == 202, early.text
    assert early.json()["approval_id"] == held.json()["approval_id"]
    assert "early_bird" not in await _domain_ids(governed)


async def test_a_client_that_prefers_to_wait_is_forwarded_once_approved(
    governed: GovernedStack,
) -> None:
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=SECOND_PAIR_OF_EYES))
    waiting = asyncio.create_task(
        governed.http.post(
            "/domains/register",
            json={"domain_id": "patient", "port": 9006},
            headers={"X-Actor": "user:alice", "Prefer": "wait=60"},
        )
    )
    approval_id = ""
    while not approval_id:
        listed = await governed.governance.ListApprovals(
            gov.ListApprovalsRequest(status=gov.APPROVAL_STATUS_PENDING)
        )
        approval_id = listed.approvals[0].approval_id if listed.approvals else ""
        await asyncio.sleep(0.05)
    assert not waiting.done()
    await _approve(governed, approval_id)
    answered = await waiting
    assert answered.status_code == 200, answered.text
    assert "patient" in await _domain_ids(governed)


async def test_a_client_that_waits_for_a_rejected_request_is_refused(
    governed: GovernedStack,
) -> None:
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=SECOND_PAIR_OF_EYES))
    waiting = asyncio.create_task(
        governed.http.post(
            "/domains/register",
            json={"domain_id": "refused", "port": 9007},
            headers={"X-Actor": "user:alice", "Prefer": "wait=60"},
        )
    )
    approval_id = ""
    while not approval_id:
        listed = await governed.governance.ListApprovals(
            gov.ListApprovalsRequest(status=gov.APPROVAL_STATUS_PENDING)
        )
        approval_id = listed.approvals[0].approval_id if listed.approvals else ""
        await asyncio.sleep(0.05)
    await governed.governance.Reject(
        gov.RejectRequest(approval_id=approval_id, approver="user:bob", reason="no")
    )
    answered = await waiting
    assert answered.status_code == 403, answered.text
    assert "rejected" in answered.json()["error"]["message"]
    assert "refused" not in await _domain_ids(governed)


NO_DEREGISTERING_GOOD = gov.Policy(
    policy_id="keep-good",
    description="the good domain stays registered",
    principal="user:mallory",
    action="DELETE:/domains/domain/good",
    effect=gov.EFFECT_FORBID,
)


@pytest.mark.parametrize(
    "path",
    [
        "/domains/domain/%67ood",  # percent-encoded path variable
        "/domains/domain/%67%6F%6f%64",  # escapes of either case
        "/domains/domain/good/",  # trailing slash
        "/domains/%64omain/good",  # an encoded literal segment
    ],
)
async def test_a_percent_encoded_or_slashed_path_is_governed_as_its_canonical_form(
    governed: GovernedStack, path: str
) -> None:
    registered = await governed.http.post(
        "/domains/register", json={"domain_id": "good", "port": 9002}
    )
    assert registered.status_code == 200
    await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=NO_DEREGISTERING_GOOD))
    refused = await governed.http.delete(path, headers={"X-Actor": "user:mallory"})
    assert refused.status_code == 403, refused.text
    assert "the good domain stays registered" in refused.text
    listed = await governed.http.get("/domains/list")
    assert "good" in listed.text
    decisions = await governed.governance.ListDecisions(
        gov.ListDecisionsRequest(actor="user:mallory")
    )
    assert [d.action for d in decisions.decisions] == ["DELETE:/domains/domain/good"]


@pytest.mark.parametrize(
    "path",
    [
        "/domains/domain/go%2Fod",
        "/domains/domain/go%2fod",
        "/domains/domain/..%2Fgood",
        "/domains/domain/%2E%2E",
        "/domains//domain/good",
        "/domains/domain/g%zzood",
        "/domains/domain/g%ffood",
    ],
)
async def test_a_path_with_no_single_meaning_is_refused_with_400_before_governance(
    governed: GovernedStack, path: str
) -> None:
    refused = await governed.http.delete(path, headers={"X-Actor": "user:mallory"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["details"][0]["fieldViolations"][0]["field"] == "path"
    stats = await governed.governance.GetGovernanceStats(gov.GetGovernanceStatsRequest())
    assert stats.decisions == 0


NO_DEREGISTERING = gov.Policy(
    policy_id="no-deregistering",
    description="nobody deregisters domains",
    action="DELETE:/domains/domain/*",
    effect=gov.EFFECT_FORBID,
)


async def test_a_governance_error_does_not_open_the_gate_in_enforce_mode(tmp_path: Path) -> None:
    env = {"GRACE_GATEWAY_GOVERNANCE_FALLBACK": "enforce"}
    async with governed_stack(tmp_path, env) as governed:
        await governed.http.post("/domains/register", json={"domain_id": "good", "port": 9002})
        await governed.governance.CreatePolicy(gov.CreatePolicyRequest(policy=NO_DEREGISTERING))
        # An actor longer than governance accepts makes Evaluate answer INVALID_ARGUMENT.
        refused = await governed.http.delete(
            "/domains/domain/good", headers={"X-Actor": "user:" + "m" * 1000}
        )
        assert refused.status_code == 403, refused.text
        assert "INVALID_ARGUMENT" in refused.text
        assert "good" in (await governed.http.get("/domains/list")).text
