"""Due-time computation: cron in time zones, intervals, one-shots, jitter and the
missed-fire policies, with a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.kernels.scheduler import timing
from services.kernels.scheduler.model import (
    Action,
    ActionKind,
    Cause,
    MissedFirePolicy,
    ScheduleSpec,
    Timing,
    TimingKind,
)

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def spec(t: Timing, **kw: object) -> ScheduleSpec:
    return ScheduleSpec(t, Action(ActionKind.EVENT, {"event_type": "x"}), "op", **kw)  # type: ignore[arg-type]  # test keywords


def every(seconds: float, start: float = T0) -> Timing:
    return Timing(TimingKind.INTERVAL, every_s=seconds, start=start)


def test_cron_in_a_time_zone_fires_at_local_wall_time_across_a_dst_change() -> None:
    paris = ZoneInfo("Europe/Paris")
    tuesday_13h = Timing(TimingKind.CRON, expression="0 13 * * TUE", time_zone="Europe/Paris")
    # 2027-03-23 is a Tuesday before the change (UTC+1), 2027-03-30 after it (UTC+2).
    first = timing.next_due(tuesday_13h, datetime(2027, 3, 22, tzinfo=UTC).timestamp())
    second = timing.next_due(tuesday_13h, first)
    for due in (first, second):
        local = datetime.fromtimestamp(due, paris)
        assert (local.weekday(), local.hour, local.minute) == (1, 13, 0)
    assert datetime.fromtimestamp(first, UTC).hour == 12
    assert datetime.fromtimestamp(second, UTC).hour == 11


def test_six_field_cron_has_seconds_last() -> None:
    every_ten_seconds = Timing(TimingKind.CRON, expression="* * * * * */10")
    assert timing.next_due(every_ten_seconds, T0 + 1) == T0 + 10


def test_bad_cron_and_time_zone_are_invalid_arguments_naming_the_field() -> None:
    with pytest.raises(InvalidArgument) as bad:
        timing.check_cron("61 * * * *")
    assert bad.value.field == "cron.expression"
    with pytest.raises(InvalidArgument) as zone:
        timing.zone("Mars/Olympus")
    assert zone.value.field == "time_zone"


def test_a_cron_that_never_matches_again_has_no_next_due_time() -> None:
    assert timing.next_due(Timing(TimingKind.CRON, expression="0 0 30 2 *"), T0) == 0.0


@settings(max_examples=200, deadline=None)
@given(
    period=st.integers(min_value=1, max_value=86_400),
    offset=st.floats(min_value=-1e6, max_value=1e7, allow_nan=False),
)
def test_interval_next_due_is_the_first_grid_point_strictly_after(
    period: int, offset: float
) -> None:
    t = every(period)
    after = T0 + offset
    due = timing.next_due(t, after)
    assert due > after
    assert due - period <= after or due == T0
    assert ((due - T0) / period) == pytest.approx(round((due - T0) / period))


@settings(max_examples=100, deadline=None)
@given(
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    offset=st.integers(0, 10 * 86_400),
    zone_name=st.sampled_from(["", "Europe/Paris", "America/New_York", "Asia/Kolkata"]),
)
def test_cron_next_due_is_after_and_matches_the_expression(
    minute: int, hour: int, offset: int, zone_name: str
) -> None:
    t = Timing(TimingKind.CRON, expression=f"{minute} {hour} * * *", time_zone=zone_name)
    after = T0 + offset
    due = timing.next_due(t, after)
    assert after < due <= after + 2 * 86_400
    local = datetime.fromtimestamp(due, timing.zone(zone_name))
    assert (local.minute, local.second) == (minute, 0)
    assert local.hour == hour or zone_name == "America/New_York"  # a DST gap moves the hour


def test_one_shot_fires_once_then_has_nothing_left() -> None:
    once = Timing(TimingKind.ONCE, at=T0 + 5)
    assert timing.next_due(once, T0) == T0 + 5
    assert timing.next_due(once, T0 + 5) == 0.0


def test_on_time_due_times_fire_as_scheduled_and_the_plan_moves_on() -> None:
    plan = timing.plan("s", spec(every(10)), T0, T0 + 25)
    assert plan.fires == (
        (T0, Cause.SCHEDULED),
        (T0 + 10, Cause.SCHEDULED),
        (T0 + 20, Cause.SCHEDULED),
    )
    assert plan.next_due == T0 + 30


def test_nothing_fires_before_the_fire_time() -> None:
    plan = timing.plan("s", spec(every(10)), T0, T0 - 0.5)
    assert plan.fires == ()
    assert plan.next_due == T0


def test_skip_policy_drops_missed_due_times() -> None:
    s = spec(every(60), missed_fire_policy=MissedFirePolicy.SKIP, grace_s=30)
    plan = timing.plan("s", s, T0, T0 + 3600)
    assert plan.fires == ((T0 + 3600, Cause.SCHEDULED),)
    assert plan.next_due == T0 + 3660


def test_fire_once_policy_fires_only_the_latest_missed_due_time() -> None:
    s = spec(every(60), missed_fire_policy=MissedFirePolicy.FIRE_ONCE, grace_s=30)
    plan = timing.plan("s", s, T0, T0 + 3590)
    assert plan.fires == ((T0 + 3540, Cause.CATCH_UP),)
    assert plan.next_due == T0 + 3600


def test_catch_up_policy_fires_the_latest_missed_times_up_to_the_limit() -> None:
    s = spec(every(60), missed_fire_policy=MissedFirePolicy.CATCH_UP, catchup_limit=3, grace_s=30)
    plan = timing.plan("s", s, T0, T0 + 3590)
    assert [d for d, _ in plan.fires] == [T0 + 3420, T0 + 3480, T0 + 3540]
    assert {c for _, c in plan.fires} == {Cause.CATCH_UP}


def test_catch_up_of_a_cron_schedule_walks_back_from_the_cutoff() -> None:
    hourly = Timing(TimingKind.CRON, expression="0 * * * *")
    s = spec(hourly, missed_fire_policy=MissedFirePolicy.CATCH_UP, catchup_limit=2, grace_s=60)
    plan = timing.plan("s", s, T0, T0 + 5 * 3600 + 1800)
    assert [d for d, _ in plan.fires] == [T0 + 4 * 3600, T0 + 5 * 3600]
    assert plan.next_due == T0 + 6 * 3600


def test_due_times_at_or_after_the_end_time_never_fire() -> None:
    s = spec(every(10), end_time=T0 + 20)
    plan = timing.plan("s", s, T0, T0 + 50)
    assert [d for d, _ in plan.fires] == [T0, T0 + 10]
    assert plan.next_due == 0.0


@settings(max_examples=200, deadline=None)
@given(
    schedule_id=st.text(min_size=1, max_size=20),
    due=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    jitter=st.floats(min_value=0.001, max_value=3600, allow_nan=False),
)
def test_jitter_is_within_bounds_and_the_same_on_every_call(
    schedule_id: str, due: float, jitter: float
) -> None:
    offset = timing.jitter_offset(schedule_id, due, jitter)
    assert 0 <= offset < jitter
    assert offset == timing.jitter_offset(schedule_id, due, jitter)


def test_jitter_delays_the_fire_time_not_the_due_time() -> None:
    s = spec(every(60), jitter_s=30)
    fire_at = timing.fire_time("s", s, T0)
    assert T0 <= fire_at < T0 + 30
    assert timing.plan("s", s, T0, fire_at - 0.001).fires == ()
    assert timing.plan("s", s, T0, fire_at).fires == ((T0, Cause.SCHEDULED),)


@settings(max_examples=100, deadline=None)
@given(
    period=st.integers(1, 3600),
    late=st.floats(min_value=0, max_value=1e6, allow_nan=False),
    policy=st.sampled_from(list(MissedFirePolicy)),
    limit=st.integers(1, 20),
)
def test_a_plan_fires_each_due_time_at_most_once_in_order_and_never_in_the_future(
    period: int, late: float, policy: MissedFirePolicy, limit: int
) -> None:
    s = spec(every(period), missed_fire_policy=policy, catchup_limit=limit, grace_s=30)
    now = T0 + late
    plan = timing.plan("s", s, T0, now)
    dues = [d for d, _ in plan.fires]
    assert dues == sorted(set(dues))
    assert all(T0 <= d <= now for d in dues)
    assert plan.next_due > now - 1e-6
    assert not dues or plan.next_due > dues[-1]
    missed = [d for d, c in plan.fires if c is Cause.CATCH_UP]
    assert len(missed) <= {MissedFirePolicy.SKIP: 0, MissedFirePolicy.FIRE_ONCE: 1}.get(
        policy, limit
    )


def test_dues_between_lists_a_range_and_reports_an_overflow() -> None:
    assert timing.dues_between(every(10), T0, T0 + 30, 100) == [T0, T0 + 10, T0 + 20]
    assert len(timing.dues_between(every(1), T0, T0 + 100, 5)) == 6
