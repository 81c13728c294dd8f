"""The squad builder over a real store on both backends: governance's answer sets a task's
first state, only approved tasks run, each approved attempt is dispatched exactly once,
every transition is announced and logged, and failed tasks are retried on request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.common.errors import FailedPrecondition, PermissionDenied
from services.kernels.tasks.model import TRANSITIONS, Severity, TaskState, WeakPoint
from services.kernels.tasks.squad import SquadSettings
from tests.conftest import DatabaseTarget
from tests.kernels.tasks.doubles import Loop, build
from tests.support import Pause, give_up_midway, pause_after

WEAK = WeakPoint("endpoint_failures", "ai_domain", Severity.ERROR, "ai_domain failed 3 times")


@pytest.fixture
async def loop(database: DatabaseTarget) -> AsyncIterator[Loop]:
    built = await build(database, verdict="pending_approval")
    yield built
    await built.squad.close()
    await built.store.close()


async def settled(loop: Loop, task_id: str, state: TaskState) -> None:
    for _ in range(400):
        if (await loop.squad.get(task_id)).state is state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} never became {state.value}")


def test_the_state_machine_only_dispatches_approved_tasks() -> None:
    sources = [s for s, targets in TRANSITIONS.items() if TaskState.DISPATCHED in targets]
    assert sources == [TaskState.APPROVED]
    assert TRANSITIONS[TaskState.COMPLETED] == frozenset()
    assert TRANSITIONS[TaskState.REJECTED] == frozenset()


async def test_a_task_governance_holds_waits_for_approval_and_is_not_run(loop: Loop) -> None:
    task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
    assert task.state is TaskState.PENDING_APPROVAL
    assert task.approval_id == "a-1"
    assert task.risk == "medium"
    assert loop.gate.asked[0]["action"] == "heal:restart_component"
    assert loop.gate.asked[0]["resource"] == "component:ai_domain"
    assert loop.gate.asked[0]["actor"] == "tasks"
    with pytest.raises(FailedPrecondition, match="only an approved task is dispatched"):
        await loop.squad.dispatch(task.task_id)
    assert loop.target.runs == []
    assert await loop.event_types() == ["squad.task.pending_approval"]


async def test_an_approved_task_runs_once_and_completes(loop: Loop) -> None:
    task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
    approved = await loop.squad.approve(task.task_id, "alice", "looks right")
    assert approved.state is TaskState.APPROVED
    await settled(loop, task.task_id, TaskState.COMPLETED)
    await loop.squad.idle()
    done = await loop.squad.get(task.task_id)
    assert loop.target.runs == [(task.task_id, "heal:restart_component", "d-1")]
    assert done.attempts == 1
    assert done.result == {"ok": True}
    assert [h.state for h in done.history] == [
        TaskState.PENDING_APPROVAL,
        TaskState.APPROVED,
        TaskState.DISPATCHED,
        TaskState.RUNNING,
        TaskState.COMPLETED,
    ]
    assert done.history[1].actor == "alice"
    expected = [
        "squad.task.pending_approval",
        "squad.task.approved",
        "squad.task.dispatched",
        "squad.task.running",
        "squad.task.completed",
    ]
    assert await loop.event_types() == expected
    assert await loop.log_types() == expected


async def test_racing_dispatches_call_the_target_once(loop: Loop) -> None:
    loop.squad.settings = SquadSettings(auto_dispatch=False)
    task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
    await loop.squad.approve(task.task_id, "alice", "")
    loop.target.hold.clear()
    racers = [asyncio.create_task(loop.squad.dispatch(task.task_id)) for _ in range(5)]
    await asyncio.sleep(0.2)
    loop.target.hold.set()
    results = await asyncio.gather(*racers, return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, FailedPrecondition)]
    assert len(winners) == 1
    assert len(losers) == 4
    assert len(loop.target.runs) == 1
    assert (await loop.squad.get(task.task_id)).state is TaskState.COMPLETED


async def test_an_approval_given_in_governance_is_noticed_and_dispatched_once(loop: Loop) -> None:
    task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
    loop.squad.start(task)
    loop.squad.start(task)  # a second start does not watch twice
    loop.approvals.settle(task.approval_id, "approved")
    await settled(loop, task.task_id, TaskState.COMPLETED)
    await loop.squad.idle()
    assert len(loop.target.runs) == 1
    assert (await loop.squad.get(task.task_id)).history[1].actor == "governance"


async def test_the_requester_cannot_approve_and_the_task_stays_pending(loop: Loop) -> None:
    task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
    with pytest.raises(PermissionDenied):
        await loop.squad.approve(task.task_id, "tasks", "")
    assert (await loop.squad.get(task.task_id)).state is TaskState.PENDING_APPROVAL
    assert loop.target.runs == []


async def test_a_rejected_task_never_runs_and_cannot_be_approved(loop: Loop) -> None:
    task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
    rejected = await loop.squad.reject(task.task_id, "bob", "not now")
    assert rejected.state is TaskState.REJECTED
    assert "rejected by bob: not now" in rejected.error
    with pytest.raises(FailedPrecondition, match="only a pending-approval task"):
        await loop.squad.approve(task.task_id, "alice", "")
    assert loop.target.runs == []


async def test_an_approval_needs_an_approver(loop: Loop) -> None:
    task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
    with pytest.raises(Exception, match="x-actor"):
        await loop.squad.approve(task.task_id, "", "")


async def test_a_task_governance_allows_runs_at_once(database: DatabaseTarget) -> None:
    loop = await build(database, verdict="allow")
    try:
        task = await loop.squad.create("c1", WEAK, "heal:diagnose_network", "because")
        assert task.state is TaskState.APPROVED
        assert loop.gate.asked[0]["risk_level"] == "low"
        loop.squad.start(task)
        await settled(loop, task.task_id, TaskState.COMPLETED)
        await loop.squad.idle()
        assert len(loop.target.runs) == 1
    finally:
        await loop.squad.close()
        await loop.store.close()


async def test_a_task_governance_denies_is_rejected(database: DatabaseTarget) -> None:
    loop = await build(database, verdict="deny")
    try:
        task = await loop.squad.create("c1", WEAK, "heal:rebind_port", "because")
        assert task.state is TaskState.REJECTED
        assert "policy no-tasks" in task.error
        assert task.risk == "high"
    finally:
        await loop.store.close()


async def test_a_failed_task_is_retried_on_request_only(database: DatabaseTarget) -> None:
    loop = await build(database, verdict="allow")
    try:
        loop.target.failing.add("heal:restart_component")
        task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
        failed = await loop.squad.dispatch(task.task_id)
        assert failed.state is TaskState.FAILED
        assert failed.error == "heal:restart_component did not help"
        assert "squad.task.failed" in await loop.event_types()
        with pytest.raises(FailedPrecondition, match="only an approved task"):
            await loop.squad.dispatch(task.task_id)
        loop.target.failing.clear()
        retried = await loop.squad.retry(task.task_id, "alice")
        assert retried.state is TaskState.APPROVED
        assert "retry asked by alice" in retried.history[-1].reason
        assert loop.gate.asked[-1]["request_id"] == f"task:{task.task_id}:2"
        await settled(loop, task.task_id, TaskState.COMPLETED)
        await loop.squad.idle()
        assert (await loop.squad.get(task.task_id)).attempts == 2
        assert len(loop.target.runs) == 2
        with pytest.raises(FailedPrecondition, match="only a failed task is retried"):
            await loop.squad.retry(task.task_id, "alice")
    finally:
        await loop.squad.close()
        await loop.store.close()


async def test_a_restart_fails_in_flight_tasks_instead_of_running_them_again(
    database: DatabaseTarget,
) -> None:
    loop = await build(database, verdict="allow")
    task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
    loop.target.hold.clear()
    running = asyncio.create_task(loop.squad.dispatch(task.task_id))
    await settled(loop, task.task_id, TaskState.RUNNING)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await loop.store.close()

    again = await build(database, verdict="allow")
    try:
        await again.squad.resume()
        found = await again.squad.get(task.task_id)
        assert found.state is TaskState.FAILED
        assert "outcome unknown" in found.error
        assert again.target.runs == []
    finally:
        await again.squad.close()
        await again.store.close()


async def test_tasks_are_listed_by_state_page_by_page(loop: Loop) -> None:
    ids = [
        (await loop.squad.create("c1", WEAK, "heal:restart_component", str(i))).task_id
        for i in range(3)
    ]
    await loop.squad.reject(ids[0], "bob", "")
    pending, token = await loop.squad.list(TaskState.PENDING_APPROVAL, "", 1, "")
    assert [t.task_id for t in pending] == [ids[2]]
    rest, token2 = await loop.squad.list(TaskState.PENDING_APPROVAL, "", 1, token)
    assert [t.task_id for t in rest] == [ids[1]]
    assert token2 == ""
    assert [t.task_id for t in (await loop.squad.list(None, "c1", 10, ""))[0]] == ids[::-1]


def approval_stored(loop: Loop, monkeypatch: pytest.MonkeyPatch) -> Pause:
    """Holds the squad just after it commits a task's transition to APPROVED."""
    return pause_after(
        monkeypatch, loop.squad, "_save", lambda _, after: after.state is TaskState.APPROVED
    )


async def test_an_approval_whose_caller_gives_up_midway_still_dispatches_the_task(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client's deadline cancels the RPC's handler, here just after APPROVED is stored:
    # the task must still be dispatched, since approving it again is refused.
    task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
    approving = loop.squad.approve(task.task_id, "alice", "")
    await give_up_midway(approving, approval_stored(loop, monkeypatch))
    await settled(loop, task.task_id, TaskState.COMPLETED)
    await loop.squad.idle()
    assert len(loop.target.runs) == 1


async def test_a_retry_whose_caller_gives_up_midway_still_runs_the_task(
    database: DatabaseTarget, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = await build(database, verdict="allow")
    try:
        loop.target.failing.add("heal:restart_component")
        task = await loop.squad.create("c1", WEAK, "heal:restart_component", "because")
        assert (await loop.squad.dispatch(task.task_id)).state is TaskState.FAILED
        loop.target.failing.clear()
        retrying = loop.squad.retry(task.task_id, "alice")
        await give_up_midway(retrying, approval_stored(loop, monkeypatch))
        await settled(loop, task.task_id, TaskState.COMPLETED)
        await loop.squad.idle()
        assert len(loop.target.runs) == 2
    finally:
        await loop.squad.close()
        await loop.store.close()
