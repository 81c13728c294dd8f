"""The governance core on SQLite and PostgreSQL: policies, decisions, approvals, modes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from services.kernels.governance.governance import Governance, GovernanceSettings
from services.kernels.governance.model import (
    ApprovalStatus,
    Condition,
    Effect,
    Mode,
    Operator,
    Policy,
    RiskLevel,
    Verdict,
)
from services.kernels.governance.store import DecisionFilter
from tests.support import ManualClock, Pause, give_up_midway, pause_after_commit


async def test_policies_are_versioned_and_survive_a_restart(
    governance: Governance, opened: Callable[..., Any]
) -> None:
    created = await governance.create_policy(Policy("p1", Effect.FORBID, action="DELETE:*"))
    assert created.version == 1
    with pytest.raises(AlreadyExists):
        await governance.create_policy(Policy("p1", Effect.PERMIT))
    updated = await governance.update_policy(Policy("p1", Effect.PERMIT, action="DELETE:*"))
    assert updated.version == 2
    with pytest.raises(Aborted):
        await governance.update_policy(Policy("p1", Effect.FORBID), expected_version=1)
    older = await governance.store.policy_version("p1", 1)
    assert older is not None
    assert older.effect is Effect.FORBID
    again = await opened(GovernanceSettings())
    assert again.get_policy("p1").version == 2
    assert again.get_policy("p1").effect is Effect.PERMIT
    assert again.mode is Mode.ENFORCE  # persisted by the first core


async def test_a_deleted_policy_stops_matching_and_its_id_continues_its_versions(
    governance: Governance,
) -> None:
    await governance.create_policy(Policy("p1", Effect.FORBID))
    assert await governance.delete_policy("p1") == 1
    with pytest.raises(NotFound):
        governance.get_policy("p1")
    decision, _ = await governance.evaluate("a", "x", risk_level=RiskLevel.LOW)
    assert decision.verdict is Verdict.ALLOW
    recreated = await governance.create_policy(Policy("p1", Effect.PERMIT))
    assert recreated.version == 3  # 1 = first body, 2 = tombstone


async def test_policies_list_in_pages_by_id(governance: Governance) -> None:
    for i in range(5):
        await governance.create_policy(Policy(f"p{i}", Effect.PERMIT))
    first, token = governance.list_policies(3)
    second, last = governance.list_policies(3, token)
    assert [p.policy_id for p in first + second] == [f"p{i}" for i in range(5)]
    assert last == ""


async def test_every_decision_is_recorded_and_listed_with_filters(
    governance: Governance, clock: ManualClock
) -> None:
    await governance.create_policy(Policy("no-deletes", Effect.FORBID, action="DELETE:*"))
    await governance.evaluate("alice", "DELETE:/x", risk_level=RiskLevel.LOW)
    clock.advance(10)
    await governance.evaluate("bob", "POST:/x", risk_level=RiskLevel.LOW)
    await governance.evaluate("bob", "POST:/y", risk_level=RiskLevel.HIGH)
    everything, _ = await governance.list_decisions(DecisionFilter())
    assert [d.request.action for d in everything] == ["POST:/y", "POST:/x", "DELETE:/x"]
    denied, _ = await governance.list_decisions(DecisionFilter(verdict=Verdict.DENY))
    assert {d.request.action for d in denied} == {"DELETE:/x", "POST:/y"}
    by_policy, _ = await governance.list_decisions(DecisionFilter(policy_id="no-deletes"))
    assert [d.request.actor for d in by_policy] == ["alice"]
    by_action, _ = await governance.list_decisions(DecisionFilter(action_like="POST:*"))
    assert len(by_action) == 2
    recent, _ = await governance.list_decisions(DecisionFilter(since=clock.now))
    assert {d.request.actor for d in recent} == {"bob"}
    page, token = await governance.list_decisions(DecisionFilter(), size=2)
    rest, end = await governance.list_decisions(DecisionFilter(), size=2, token=token)
    assert [d.decision_id for d in page + rest] == [d.decision_id for d in everything]
    assert end == ""
    fetched = await governance.get_decision(everything[0].decision_id)
    assert fetched == everything[0]


async def test_a_repeated_request_id_replays_the_first_decision(governance: Governance) -> None:
    first, replayed = await governance.evaluate("a", "x", request_id="r1")
    assert not replayed
    await governance.create_policy(Policy("now-forbidden", Effect.FORBID))
    again, replayed = await governance.evaluate("a", "x", request_id="r1")
    assert replayed
    assert again.decision_id == first.decision_id
    assert again.verdict is Verdict.ALLOW


async def test_a_batch_holding_a_recorded_request_id_records_the_rest_once(
    governance: Governance,
) -> None:
    # Two evaluations of one request id that both missed the other's decision: the second
    # reaches the recorder in a batch with another decision, hits the unique key, and the
    # batch is recorded one decision at a time.
    first, _ = await governance.evaluate("a", "x", request_id="r1")
    duplicate = dataclasses.replace(first, decision_id="d-duplicate")
    fresh = dataclasses.replace(first, decision_id="d-fresh", request_id="r2")
    results = await asyncio.gather(
        governance.recorder.record(duplicate, None), governance.recorder.record(fresh, None)
    )
    assert results == [(first, True), (fresh, False)]
    pending = await governance.log_entries.pending(100)
    assert [e.subject for e in pending] == [first.decision_id, fresh.decision_id]


async def test_decisions_wait_in_the_immutable_log_outbox_until_it_takes_them(
    governance: Governance,
) -> None:
    decision, _ = await governance.evaluate("a", "x")
    pending = await governance.log_entries.pending(100)
    assert [(e.event_type, e.subject) for e in pending] == [
        ("governance.decision", decision.decision_id)
    ]
    assert pending[0].data["verdict"] == "allow"
    events = await governance.events.pending(100)
    assert [e.event_type for e in events] == ["governance.decision"]
    assert (await governance.stats()).log_backlog == 1


async def test_log_only_mode_allows_and_records_what_enforcing_would_block(
    opened: Callable[..., Any],
) -> None:
    core: Governance = await opened(GovernanceSettings(mode=Mode.LOG_ONLY))
    await core.create_policy(Policy("no-posts", Effect.FORBID, action="POST:*"))
    decision, _ = await core.evaluate("a", "POST:/x")
    assert decision.verdict is Verdict.ALLOW
    assert decision.evaluation.evaluated_verdict is Verdict.DENY
    assert decision.evaluation.policy_ids == ("no-posts",)
    stats = await core.stats()
    assert stats.would_have_blocked == 1
    await core.set_mode(Mode.ENFORCE)
    enforced, _ = await core.evaluate("a", "POST:/x")
    assert enforced.verdict is Verdict.DENY


async def test_require_approval_creates_a_pending_request_that_a_person_approves(
    governance: Governance,
) -> None:
    await governance.create_policy(
        Policy("restarts", Effect.REQUIRE_APPROVAL, action="heal:*", principal="immune")
    )
    decision, _ = await governance.evaluate("immune", "heal:restart_component", "component:x")
    assert decision.verdict is Verdict.PENDING_APPROVAL
    pending, _ = await governance.approvals.list(ApprovalStatus.PENDING)
    assert [a.approval_id for a in pending] == [decision.approval_id]
    with pytest.raises(FailedPrecondition) as own:
        await governance.approvals.approve(decision.approval_id, "immune")
    assert own.value.reason == "SELF_APPROVAL"
    with pytest.raises(InvalidArgument):
        await governance.approvals.approve(decision.approval_id, "")
    approved = await governance.approvals.approve(decision.approval_id, "operator", "looks fine")
    assert approved.status is ApprovalStatus.APPROVED
    assert approved.decided_by == "operator"
    with pytest.raises(FailedPrecondition):
        await governance.approvals.reject(decision.approval_id, "operator")
    kinds = [e.event_type for e in await governance.events.pending(100)]
    assert "governance.approval.requested" in kinds
    assert "governance.approval.approved" in kinds


async def test_unanswered_approvals_expire(governance: Governance, clock: ManualClock) -> None:
    await governance.create_policy(Policy("all", Effect.REQUIRE_APPROVAL))
    decision, _ = await governance.evaluate("a", "x")
    clock.advance(governance.settings.approval_ttl_s + 1)
    assert await governance.approvals.expire_due() == 1
    expired = await governance.approvals.get(decision.approval_id)
    assert expired.status is ApprovalStatus.EXPIRED
    with pytest.raises(FailedPrecondition):
        await governance.approvals.approve(decision.approval_id, "operator")


async def test_watching_an_approval_sees_its_settlement(governance: Governance) -> None:
    import asyncio

    await governance.create_policy(Policy("all", Effect.REQUIRE_APPROVAL))
    decision, _ = await governance.evaluate("a", "x")
    seen: list[ApprovalStatus] = []

    async def watch() -> None:
        async for approval in governance.approvals.watch(decision.approval_id):
            seen.append(approval.status)

    watcher = asyncio.create_task(watch())
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.01)
    await governance.approvals.reject(decision.approval_id, "operator", "no")
    await asyncio.wait_for(watcher, timeout=10)
    assert seen == [ApprovalStatus.PENDING, ApprovalStatus.REJECTED]


async def test_a_policy_file_creates_then_updates_only_what_changed(
    governance: Governance, tmp_path: Path
) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(
        """
[[policies]]
policy_id = "big-payments"
description = "Large payments wait for a person"
action = "payments.process"
effect = "require_approval"
conditions = [{ attribute = "amount", operator = "gt", value = 1000 }]

[[policies]]
policy_id = "no-deletes"
action = "DELETE:*"
effect = "forbid"
mode = "log_only"
"""
    )
    assert await governance.load_file(path) == 2
    assert await governance.load_file(path) == 0
    policy = governance.get_policy("big-payments")
    assert policy.conditions == (Condition("amount", Operator.GT, 1000),)
    assert governance.get_policy("no-deletes").mode is Mode.LOG_ONLY
    path.write_text(path.read_text().replace("1000", "5000"))
    assert await governance.load_file(path) == 1
    assert governance.get_policy("big-payments").version == 2
    decision, _ = await governance.evaluate("shop", "payments.process", context={"amount": 6000})
    assert decision.verdict is Verdict.PENDING_APPROVAL


async def test_a_bad_policy_file_names_the_policy_and_field(
    governance: Governance, tmp_path: Path
) -> None:
    path = tmp_path / "policies.json"
    path.write_text('{"policies": [{"policy_id": "x", "effect": "maybe"}]}')
    with pytest.raises(InvalidArgument) as caught:
        await governance.load_file(path)
    assert caught.value.field == "policies.json.policies[0].effect"


async def test_a_mode_is_stored_with_its_announcement_or_not_at_all(
    governance: Governance, opened: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(governance.log_entries, "enqueue", broken)
        with pytest.raises(RuntimeError):
            await governance.set_mode(Mode.LOG_ONLY)
    assert governance.mode is Mode.ENFORCE
    assert (await opened(GovernanceSettings())).mode is Mode.ENFORCE
    assert not [e for e in await governance.events.pending(100) if "mode" in e.event_type]


async def test_concurrent_mode_changes_each_announce_the_mode_they_replaced(
    governance: Governance,
) -> None:
    await asyncio.gather(
        governance.set_mode(Mode.LOG_ONLY),
        governance.set_mode(Mode.ENFORCE),
        governance.set_mode(Mode.LOG_ONLY),
    )
    changes = [
        (e.data["previous"], e.data["mode"])
        for e in await governance.events.pending(100)
        if e.event_type == "governance.mode.changed"
    ]
    assert changes == [("enforce", "log_only"), ("log_only", "enforce"), ("enforce", "log_only")]
    assert governance.mode is Mode.LOG_ONLY


async def test_policy_and_mode_changes_take_effect_even_when_their_caller_gives_up_midway(
    governance: Governance, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each change is given up on just after its first transaction commits.
    def committed() -> Pause:
        return pause_after_commit(monkeypatch, governance.store.db, "transaction")

    forbid = Policy("no-deletes", Effect.FORBID, action="DELETE:*")
    await give_up_midway(governance.create_policy(forbid), committed())
    assert governance.get_policy("no-deletes").version == 1
    denied, _ = await governance.evaluate("a", "DELETE:/x", risk_level=RiskLevel.LOW)
    assert denied.verdict is Verdict.DENY

    permit = Policy("no-deletes", Effect.PERMIT, action="DELETE:*")
    await give_up_midway(governance.update_policy(permit, 1), committed())
    assert governance.get_policy("no-deletes").version == 2
    allowed, _ = await governance.evaluate("a", "DELETE:/x", risk_level=RiskLevel.LOW)
    assert allowed.verdict is Verdict.ALLOW

    await give_up_midway(governance.delete_policy("no-deletes"), committed())
    with pytest.raises(NotFound):
        governance.get_policy("no-deletes")
    recreated = await governance.create_policy(forbid)
    assert recreated.version == 4  # one past the deletion's tombstone

    await give_up_midway(governance.set_mode(Mode.LOG_ONLY), committed())
    assert governance.mode is Mode.LOG_ONLY
    logged, _ = await governance.evaluate("a", "DELETE:/x", risk_level=RiskLevel.LOW)
    assert (logged.verdict, logged.evaluation.evaluated_verdict) == (Verdict.ALLOW, Verdict.DENY)
