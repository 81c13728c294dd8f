"""The scheduler core on both database backends, with a fake clock: exactly-once firing,
claims and fencing between instances, missed-fire policies, pause, trigger and backfill."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.storage import Database
from services.kernels.scheduler.firer import SchedulerSettings
from services.kernels.scheduler.model import (
    Action,
    ActionKind,
    Cause,
    MissedFirePolicy,
    Outcome,
    OverlapPolicy,
    ScheduleSpec,
    ScheduleState,
    Timing,
    TimingKind,
)
from services.kernels.scheduler.scheduler import Scheduler
from services.kernels.scheduler.store import SchedulerStore
from tests.conftest import DatabaseTarget
from tests.kernels.scheduler.doubles import FakeClock, RecordingPeers, ScriptedGate

WORKFLOW = Action(ActionKind.WORKFLOW, {"workflow_id": "wf", "input": {"n": 1}})


def interval_spec(seconds: float = 10, action: Action = WORKFLOW, **kw: object) -> ScheduleSpec:
    return ScheduleSpec(
        Timing(TimingKind.INTERVAL, every_s=seconds),
        action,
        "operator:alice",
        **kw,  # type: ignore[arg-type]  # test keywords
    )


@asynccontextmanager
async def instance(
    target: DatabaseTarget,
    clock: FakeClock,
    peers: RecordingPeers | None = None,
    gate: ScriptedGate | None = None,
    name: str = "a",
    **settings: object,
) -> AsyncIterator[Scheduler]:
    store = SchedulerStore(Database(target.url, schema=target.schema))
    scheduler = Scheduler(
        store,
        peers or RecordingPeers(),
        gate or ScriptedGate(),
        SchedulerSettings(instance_id=name, lease_s=60, **settings),  # type: ignore[arg-type]  # test keywords
        clock,
    )
    await scheduler.open()
    try:
        yield scheduler
    finally:
        await scheduler.close()
        await store.close()


async def fire(scheduler: Scheduler) -> list[str]:
    claimed = await scheduler.tick()
    await scheduler.idle()
    return [f.firing_id for f in claimed]


async def test_an_interval_schedule_fires_once_per_due_time(database: DatabaseTarget) -> None:
    clock = FakeClock()
    peers = RecordingPeers()
    async with instance(database, clock, peers) as scheduler:
        created = await scheduler.create("every-10", interval_spec(10))
        assert created.next_due == clock.now + 10
        assert await fire(scheduler) == []
        clock.advance(10)
        assert len(await fire(scheduler)) == 1
        assert await fire(scheduler) == []
        clock.advance(10)
        assert len(await fire(scheduler)) == 1
        schedule, recent = await scheduler.get("every-10")
    assert [w[0] for w in peers.workflows] == ["wf", "wf"]
    assert len({w[2] for w in peers.workflows}) == 2
    assert peers.workflows[0][1]["n"] == 1
    assert peers.workflows[0][1]["_schedule"]["schedule_id"] == "every-10"
    assert schedule.fire_count == 2
    assert schedule.last_due == created.next_due + 10
    assert schedule.next_due == created.next_due + 20
    assert [f.outcome for f in recent] == [Outcome.SUCCEEDED, Outcome.SUCCEEDED]
    assert recent[0].result["execution_id"].startswith("exec-schedule-")


async def test_two_instances_on_one_database_fire_each_due_time_once(
    database: DatabaseTarget,
) -> None:
    clock = FakeClock()
    peers = RecordingPeers()
    async with (
        instance(database, clock, peers, name="a") as a,
        instance(database, clock, peers, name="b") as b,
    ):
        for i in range(20):
            await a.create(f"s{i}", interval_spec(5))
        for _ in range(3):
            clock.advance(5)
            await asyncio.gather(a.tick(), b.tick())
            await asyncio.gather(a.idle(), b.idle())
        stats = await a.stats()
    keys = [w[2] for w in peers.workflows]
    assert len(keys) == 60
    assert len(set(keys)) == 60
    assert stats.firings_by_outcome == {"succeeded": 60}


async def test_a_firing_whose_instance_died_is_taken_over_with_a_higher_fencing_token(
    database: DatabaseTarget,
) -> None:
    clock = FakeClock()
    stuck = asyncio.Event()
    dead_peers = RecordingPeers(block=stuck)
    live_peers = RecordingPeers()
    async with (
        instance(database, clock, dead_peers, name="dies") as dies,
        instance(database, clock, live_peers, name="lives") as lives,
    ):
        await dies.create("s", interval_spec(1000))
        clock.advance(1000)
        [claimed] = await dies.tick()  # its action hangs: the instance is as good as dead
        assert await fire(lives) == []  # the claim is held: nothing to take over yet
        clock.advance(61)  # the lease lapses
        assert await fire(lives) == [claimed.firing_id]
        firing = await lives.store.get_firing(claimed.firing_id)
        assert firing is not None
        assert (firing.outcome, firing.attempt, firing.owner) == (Outcome.SUCCEEDED, 2, "lives")
        stuck.set()  # the old instance comes back and finishes late
        await dies.idle()
        after = await lives.store.get_firing(claimed.firing_id)
    assert after == firing  # its stale outcome was fenced off
    # Both attempts carried the same idempotency key, so the orchestrator starts one run.
    assert dead_peers.workflows[0][2] == live_peers.workflows[0][2]


async def test_missed_due_times_follow_the_policy_after_a_long_outage(
    database: DatabaseTarget,
) -> None:
    clock = FakeClock()
    async with instance(database, clock) as scheduler:
        for name, policy in [
            ("skip", MissedFirePolicy.SKIP),
            ("once", MissedFirePolicy.FIRE_ONCE),
            ("catchup", MissedFirePolicy.CATCH_UP),
        ]:
            await scheduler.create(
                name, interval_spec(60, missed_fire_policy=policy, catchup_limit=4, grace_s=30)
            )
        clock.advance(3600 + 45)  # an hour down, 45 s past a due time (beyond the grace)
        await fire(scheduler)
        counts = {}
        for name in ("skip", "once", "catchup"):
            _, recent = await scheduler.get(name)
            counts[name] = sorted(f.cause.value for f in recent)
    assert counts == {
        "skip": [],
        "once": ["catch_up"],
        "catchup": ["catch_up"] * 4,
    }


async def test_a_paused_schedule_does_not_fire_and_resumes_under_its_policy(
    database: DatabaseTarget,
) -> None:
    clock = FakeClock()
    peers = RecordingPeers()
    async with instance(database, clock, peers) as scheduler:
        await scheduler.create(
            "s", interval_spec(10, missed_fire_policy=MissedFirePolicy.SKIP, grace_s=2)
        )
        paused = await scheduler.pause("s")
        assert paused.state is ScheduleState.PAUSED
        clock.advance(503)
        assert await fire(scheduler) == []
        await scheduler.resume("s")
        assert await fire(scheduler) == []  # every due time passed is over 2 s late: skipped
        clock.advance(7)
        assert len(await fire(scheduler)) == 1
    assert len(peers.workflows) == 1


async def test_trigger_fires_now_and_once_per_request_id(database: DatabaseTarget) -> None:
    clock = FakeClock()
    peers = RecordingPeers()
    async with instance(database, clock, peers) as scheduler:
        await scheduler.create("s", interval_spec(3600), paused=True)
        first = await scheduler.trigger("s", "req-1")
        again = await scheduler.trigger("s", "req-1")
        assert first.firing_id == again.firing_id
        assert first.outcome is Outcome.PENDING
        await fire(scheduler)
        done = await scheduler.store.get_firing(first.firing_id)
    assert done is not None
    assert (done.outcome, done.cause) == (Outcome.SUCCEEDED, Cause.TRIGGER)
    assert len(peers.workflows) == 1


async def test_backfill_fires_each_past_due_time_once_and_leaves_fired_ones_alone(
    database: DatabaseTarget,
) -> None:
    clock = FakeClock()
    peers = RecordingPeers()
    async with instance(database, clock, peers) as scheduler:
        created = await scheduler.create("s", interval_spec(10))
        start = created.next_due
        clock.advance(10)
        await fire(scheduler)  # `start` fired normally
        clock.advance(100)
        result = await scheduler.backfill("s", start, start + 50)
        assert result.queued == [start + 10, start + 20, start + 30, start + 40]
        assert result.already_fired == 1
        await fire(scheduler)
        repeat = await scheduler.backfill("s", start, start + 50)
        with pytest.raises(InvalidArgument) as future:
            await scheduler.backfill("s", start, clock.now + 100)
        assert future.value.field == "end_time"
        with pytest.raises(InvalidArgument) as unset:
            await scheduler.backfill("s", 0.0, start)
        assert unset.value.field == "start_time"
    assert repeat.queued == []
    assert len({w[2] for w in peers.workflows}) == len(peers.workflows)


async def test_a_denied_firing_runs_nothing_and_records_the_decision(
    database: DatabaseTarget,
) -> None:
    clock = FakeClock()
    peers = RecordingPeers()
    gate = ScriptedGate(denied_actors={"operator:alice"})
    async with instance(database, clock, peers, gate) as scheduler:
        await scheduler.create("s", interval_spec(10, risk_level="high"))
        clock.advance(10)
        await fire(scheduler)
        _, [firing] = await scheduler.get("s")
        events = await scheduler.events.pending(100)
    assert peers.workflows == []
    assert firing.outcome is Outcome.DENIED
    assert firing.decision_id == "dec-deny"
    assert "owner is not allowed" in firing.error
    assert gate.asked[0]["actor"] == "operator:alice"
    assert gate.asked[0]["resource"] == "workflow:wf"
    assert gate.asked[0]["risk_level"] == "high"
    assert [e.event_type for e in events] == ["schedule.created", "schedule.fire_denied"]


async def test_each_outcome_goes_to_the_bus_and_the_immutable_log(
    database: DatabaseTarget,
) -> None:
    clock = FakeClock()
    async with instance(database, clock, RecordingPeers(fail="orchestrator: UNAVAILABLE")) as s:
        await s.create("s", interval_spec(10))
        clock.advance(10)
        await fire(s)
        bus = [e.event_type for e in await s.events.pending(100)]
        log = await s.log_entries.pending(100)
    assert bus == ["schedule.created", "schedule.fire_failed"]
    assert [e.event_type for e in log] == bus
    assert log[1].data["error"] == "orchestrator: UNAVAILABLE"
    assert log[1].data["owner"] == "operator:alice"


async def test_an_event_action_publishes_through_the_outbox_with_a_stable_id(
    database: DatabaseTarget,
) -> None:
    clock = FakeClock()
    action = Action(ActionKind.EVENT, {"event_type": "capacity.scale", "data": {"service": "auth"}})
    async with instance(database, clock) as scheduler:
        await scheduler.create("scale", interval_spec(10, action=action))
        clock.advance(10)
        await fire(scheduler)
        events = await scheduler.events.pending(100)
    [published] = [e for e in events if e.event_type == "capacity.scale"]
    assert published.data["service"] == "auth"
    assert published.event_id.startswith("schedule:")
    assert published.source_domain == "scheduler"


async def test_overlap_skip_does_not_start_while_the_previous_execution_runs(
    database: DatabaseTarget,
) -> None:
    clock = FakeClock()
    peers = RecordingPeers()
    async with instance(database, clock, peers) as scheduler:
        await scheduler.create("s", interval_spec(10, overlap=OverlapPolicy.SKIP))
        clock.advance(10)
        await fire(scheduler)
        peers.running.add(f"exec-{peers.workflows[0][2]}")
        clock.advance(10)
        await fire(scheduler)
        _, recent = await scheduler.get("s")
    assert [f.outcome for f in recent] == [Outcome.SKIPPED, Outcome.SUCCEEDED]
    assert len(peers.workflows) == 1


async def test_a_one_shot_schedule_completes_after_firing(database: DatabaseTarget) -> None:
    clock = FakeClock()
    action = Action(ActionKind.DOMAIN, {"capability": "scaling", "action": "scale", "input": {}})
    spec = ScheduleSpec(Timing(TimingKind.ONCE, at=clock.now + 5), action, "domain:capacity")
    peers = RecordingPeers()
    async with instance(database, clock, peers) as scheduler:
        await scheduler.create("once", spec)
        clock.advance(5)
        await fire(scheduler)
        schedule, _ = await scheduler.get("once")
        with pytest.raises(FailedPrecondition, match="completed"):
            await scheduler.pause("once")
    assert schedule.state is ScheduleState.COMPLETED
    assert schedule.next_due == 0
    assert len(peers.domain_calls) == 1


async def test_create_rules_ids_requests_and_task_actions(database: DatabaseTarget) -> None:
    clock = FakeClock()
    async with instance(database, clock) as scheduler:
        first = await scheduler.create("", interval_spec(10), request_id="r1")
        assert await scheduler.create("", interval_spec(99), request_id="r1") == first
        await scheduler.create("taken", interval_spec(10))
        with pytest.raises(AlreadyExists):
            await scheduler.create("taken", interval_spec(10))
        with pytest.raises(FailedPrecondition, match="tasks"):
            await scheduler.create(
                "t", interval_spec(10, action=Action(ActionKind.TASK, {"title": "x"}))
            )
        with pytest.raises(InvalidArgument, match="jitter"):
            await scheduler.create("j", interval_spec(10, jitter_s=10))
        with pytest.raises(NotFound):
            await scheduler.trigger("missing")
        await scheduler.delete("taken")
        with pytest.raises(NotFound):
            await scheduler.get("taken")


async def test_listing_pages_through_schedules_and_firings(database: DatabaseTarget) -> None:
    clock = FakeClock()
    async with instance(database, clock) as scheduler:
        for i in range(5):
            await scheduler.create(f"s{i}", interval_spec(1))
        page, token = await scheduler.page("", None, 2, "")
        rest, end = await scheduler.page("", None, 10, token)
        assert [s.schedule_id for s in page + rest] == [f"s{i}" for i in range(5)]
        assert end == ""
        clock.advance(3.5)
        await fire(scheduler)
        firings, token = await scheduler.firings("s0", 2, "")
        older, _ = await scheduler.firings("s0", 2, token)
        schedules_token = (await scheduler.page("", None, 1, ""))[1]
        with pytest.raises(InvalidArgument) as wrong:
            await scheduler.firings("s0", 2, schedules_token)
        assert wrong.value.field == "page_token"
    assert [f.due for f in firings] == sorted((f.due for f in firings), reverse=True)
    assert len(firings) + len(older) == 3
    assert older[0].due < firings[-1].due


async def test_a_firing_claimed_ahead_waits_for_its_fire_time(database: DatabaseTarget) -> None:
    clock = FakeClock()
    peers = RecordingPeers()
    async with instance(database, clock, peers, lookahead_s=0.5) as scheduler:
        created = await scheduler.create("s", interval_spec(10))
        clock.advance(9.7)  # 0.3 s before the due time: within the lookahead
        [claimed] = await scheduler.tick()
        assert claimed.due == created.next_due
        await asyncio.sleep(0.05)
        assert peers.workflows == []  # claimed, not fired yet
        await scheduler.idle()
    assert len(peers.workflows) == 1
