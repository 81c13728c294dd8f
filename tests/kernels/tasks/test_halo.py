"""HALO cycles over a real store on both backends: triggers, degraded sources, proposals,
events and log entries, and learning from what the tasks fixed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.kernels.tasks.halo import HaloSettings
from services.kernels.tasks.model import DomainHealth, Severity, TaskState
from tests.conftest import DatabaseTarget
from tests.kernels.tasks.doubles import Loop, build
from tests.support import give_up_midway, pause_after


@pytest.fixture
async def loop(database: DatabaseTarget) -> AsyncIterator[Loop]:
    built = await build(database, verdict="allow")
    yield built
    await built.squad.close()
    await built.store.close()


def fail(loop: Loop, target: str, times: int = 1, event_type: str = "api.endpoint.failed") -> None:
    for _ in range(times):
        loop.halo.observe(event_type, {"domain_id": target}, "", "gateway", loop.clock())


async def finish(loop: Loop) -> None:
    await asyncio.sleep(0)
    await loop.squad.idle()


async def test_a_cycle_turns_failure_events_into_a_task_and_announces_itself(loop: Loop) -> None:
    fail(loop, "ai_domain", 5)
    cycle, tasks = await loop.halo.run_cycle("operator", "check")
    assert [w.key for w in cycle.weak_points] == ["endpoint_failures:ai_domain"]
    assert cycle.weak_points[0].severity is Severity.CRITICAL
    assert not cycle.degraded
    assert [t.remedy for t in tasks] == ["heal:restart_component"]
    assert cycle.proposals[0].task_id == tasks[0].task_id
    assert [c.playbook for c in cycle.proposals[0].candidates] == [
        "heal:restart_component",
        "heal:diagnose_network",
    ]
    # The squad dispatches the task while the cycle returns, so its events may come first.
    halo_types = [t for t in await loop.event_types() if t.startswith("halo.")]
    assert "halo.weakpoint.critical" in halo_types
    assert halo_types[-1] == "halo.cycle.completed"
    assert "halo.cycle.completed" in await loop.log_types()
    await finish(loop)
    assert (await loop.squad.get(tasks[0].task_id)).state is TaskState.COMPLETED
    assert await loop.halo.get_cycle(cycle.cycle_id) == cycle


async def test_events_are_taken_once_and_the_kernels_own_events_never_trigger(loop: Loop) -> None:
    assert not loop.halo.observe("squad.task.failed", {}, "t", "tasks", loop.clock())
    assert not loop.halo.observe("api.endpoint.success", {}, "", "gateway", loop.clock())
    # One event matching two subscriptions (api.endpoint.failed and *.failed) counts once.
    for _ in range(2):
        loop.halo.observe("x.failed", {"domain_id": "b"}, "", "gateway", loop.clock(), "ev-1")
    fail(loop, "ai_domain")
    first, _ = await loop.halo.run_cycle("operator")
    second, _ = await loop.halo.run_cycle("operator")
    assert [w.key for w in first.weak_points] == [
        "endpoint_failures:ai_domain",
        "event_failures:b",
    ]
    assert first.weak_points[1].evidence["count"] == 1
    assert second.weak_points == ()
    assert loop.halo.trigger_events == 2


async def test_a_source_that_is_down_degrades_the_cycle_instead_of_stopping_it(loop: Loop) -> None:
    loop.sources.down = {"immune", "memory"}
    loop.sources.domains_ = [DomainHealth("flaky", "healthy", 0.3)]
    cycle, tasks = await loop.halo.run_cycle("operator")
    assert cycle.degraded
    down = {s.name: s.error for s in cycle.sources if not s.ok}
    assert down == {
        "immune": "ConnectionError: immune is down",
        "memory": "ConnectionError: memory is down",
    }
    assert [w.key for w in cycle.weak_points] == ["low_success_rate:flaky"]
    assert len(tasks) == 1
    assert (await loop.event_types()).count("halo.source.degraded") == 2


async def test_no_second_task_while_one_is_open_and_warnings_get_none(
    database: DatabaseTarget,
) -> None:
    loop = await build(database, verdict="pending_approval")
    try:
        fail(loop, "ai_domain")
        loop.sources.domains_ = [DomainHealth("slow", "degraded")]
        _, first = await loop.halo.run_cycle("operator")
        fail(loop, "ai_domain")
        cycle, second = await loop.halo.run_cycle("operator")
        assert {t.weak_point.key for t in first} == {
            "endpoint_failures:ai_domain",
            "domain_degraded:slow",
        }
        assert second == []
        assert all("is still open" in p.skipped for p in cycle.proposals)
    finally:
        await loop.squad.close()
        await loop.store.close()


async def test_a_cycle_creates_at_most_its_limit_of_tasks(database: DatabaseTarget) -> None:
    loop = await build(database, settings=HaloSettings(max_tasks=1, min_interval_s=0.0))
    try:
        fail(loop, "a")
        fail(loop, "b")
        cycle, tasks = await loop.halo.run_cycle("operator")
        assert len(tasks) == 1
        assert [p.skipped for p in cycle.proposals if not p.task_id] == [
            "this cycle created its 1 tasks"
        ]
    finally:
        await loop.squad.close()
        await loop.store.close()


async def test_the_next_cycle_records_what_fixed_the_weak_point_and_ranks_by_it(
    loop: Loop,
) -> None:
    fail(loop, "ai_domain")
    _, [first] = await loop.halo.run_cycle("operator")
    await finish(loop)
    loop.clock.advance(60)
    # The weak point is gone: the restart fixed it.
    judged, _ = await loop.halo.run_cycle("operator")
    assert [(e.task_id, e.fixed) for e in judged.evaluations] == [(first.task_id, True)]
    stats = await loop.halo.stats()
    assert [(k, s.playbook, s.successes, s.failures) for k, s in stats.outcomes] == [
        ("endpoint_failures", "heal:restart_component", 1, 0)
    ]
    # Now the restart fails: it is tried and recorded as not fixing it...
    loop.target.failing.add("heal:restart_component")
    for _ in range(2):
        fail(loop, "ai_domain")
        await loop.halo.run_cycle("operator")
        await finish(loop)
        loop.clock.advance(60)
    fail(loop, "ai_domain")
    cycle, [task] = await loop.halo.run_cycle("operator")
    # ... twice: 1 success, 2 failures scores 0.4 < 0.5, so the untried remedy comes first.
    assert [(c.playbook, round(c.score, 2)) for c in cycle.proposals[0].candidates] == [
        ("heal:diagnose_network", 0.5),
        ("heal:restart_component", 0.4),
    ]
    assert task.remedy == "heal:diagnose_network"
    assert task.reason.startswith("error: ai_domain failed 1 time")


async def test_event_triggers_make_one_cycle_per_interval(database: DatabaseTarget) -> None:
    loop = await build(database, settings=HaloSettings(min_interval_s=0.0))
    runner = asyncio.create_task(loop.halo.run_triggers())
    try:
        fail(loop, "ai_domain", 3, "error.critical")
        for _ in range(200):
            cycles, _ = await loop.halo.list_cycles(10, "")
            if cycles:
                break
            await asyncio.sleep(0.01)
        assert len(cycles) == 1
        assert cycles[0].trigger == "event"
        assert cycles[0].trigger_detail == "error.critical"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await loop.squad.close()
        await loop.store.close()


async def test_a_cycle_whose_caller_gives_up_midway_is_recorded_and_runs_its_tasks(
    loop: Loop, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An operator's deadline cancels RunCycle's handler, here just after a task is stored
    # and before the cycle is: the cycle must still be recorded and its task dispatched,
    # since no later cycle proposes a task for a weak point whose task is still open.
    task_stored = pause_after(monkeypatch, loop.squad, "create")
    fail(loop, "ai_domain", 5)
    await give_up_midway(loop.halo.run_cycle("operator", "check"), task_stored)
    cycles, _ = await loop.halo.list_cycles(10, "")
    assert [c.trigger_detail for c in cycles] == ["check"]
    await finish(loop)
    assert (await loop.squad.get(cycles[0].proposals[0].task_id)).state is TaskState.COMPLETED
    assert len(loop.target.runs) == 1
