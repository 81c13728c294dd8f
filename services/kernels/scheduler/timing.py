"""Due times: when cron, interval and one-shot schedules fire, and what a late scheduler
fires under the missed-fire policy. Pure functions of the timing and a clock reading.

Cron expressions are read by croniter in the schedule's time zone, so "0 13 * * TUE" in
"Europe/Paris" is 13:00 Paris time on both sides of a daylight-saving change. Interval
due times are `start + k * every` exactly, without drift. Jitter is derived from the
schedule id and the due time, so every scheduler instance computes the same fire time.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from services.common.errors import InvalidArgument
from services.kernels.scheduler.model import (
    Cause,
    MissedFirePolicy,
    ScheduleSpec,
    Timing,
    TimingKind,
)

MAX_FIRES_PER_PLAN = 1000
_EPSILON = 0.001


@dataclass(frozen=True)
class Plan:
    """What to fire now and where the schedule goes next.

    Attributes:
        fires: `(due time, cause)` in due order.
        next_due: The next due time after them; 0 when nothing is left.
    """

    fires: tuple[tuple[float, Cause], ...]
    next_due: float


def zone(name: str, *, field: str = "time_zone") -> tzinfo:
    """The time zone named `name` ("" is UTC)."""
    if not name or name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(field, f"{name!r} is not an IANA time zone") from None


def check_cron(expression: str, *, field: str = "cron.expression") -> str:
    """A cron expression croniter reads (5 fields, or 6 with seconds last)."""
    if not expression.strip():
        raise InvalidArgument(field, "is required")
    if len(expression) > 256:
        raise InvalidArgument(field, "must be at most 256 characters")
    if len(expression.split()) not in (5, 6):
        raise InvalidArgument(field, "must have 5 fields, or 6 with seconds last")
    try:
        croniter(expression, datetime.now(UTC))
    except (CroniterBadCronError, CroniterError, ValueError, KeyError) as exc:
        raise InvalidArgument(field, f"is not a cron expression: {exc}") from None
    return expression


def _cron(timing: Timing, start: float, *, is_prev: bool = False) -> croniter:
    moment = datetime.fromtimestamp(start, tz=zone(timing.time_zone))
    return croniter(timing.expression, moment, is_prev=is_prev)


def next_due(timing: Timing, after: float) -> float:
    """The first due time strictly after `after`; 0 when there is none."""
    if timing.kind is TimingKind.ONCE:
        return timing.at if timing.at > after else 0.0
    if timing.kind is TimingKind.INTERVAL:
        if after < timing.start:
            return timing.start
        k = math.floor((after - timing.start) / timing.every_s) + 1
        due = timing.start + k * timing.every_s
        while due <= after:  # floating-point rounding
            k += 1
            due = timing.start + k * timing.every_s
        return due
    try:
        return float(_cron(timing, after).get_next(float))
    except CroniterBadDateError:
        return 0.0  # an expression that never matches again ("0 0 30 2 *")


def due_at_or_after(timing: Timing, moment: float) -> float:
    """The first due time at or after `moment`; 0 when there is none."""
    return next_due(timing, moment - _EPSILON)


def latest_dues_before(timing: Timing, before: float, count: int, not_before: float) -> list[float]:
    """The last `count` due times in [not_before, before), oldest first."""
    if count <= 0 or before <= not_before:
        return []
    if timing.kind is TimingKind.ONCE:
        return [timing.at] if not_before <= timing.at < before else []
    found: list[float] = []
    if timing.kind is TimingKind.INTERVAL:
        k = math.ceil((before - timing.start) / timing.every_s) - 1
        while len(found) < count and k >= 0:
            due = timing.start + k * timing.every_s
            if due < not_before:
                break
            if due < before:
                found.append(due)
            k -= 1
        return found[::-1]
    it = _cron(timing, before, is_prev=True)
    try:
        while len(found) < count:
            due = float(it.get_prev(float))
            if due < not_before:
                break
            if due < before:
                found.append(due)
    except CroniterBadDateError:
        pass
    return found[::-1]


def dues_between(timing: Timing, start: float, end: float, limit: int) -> list[float]:
    """Due times in [start, end), at most `limit + 1` (so callers see an overflow)."""
    found: list[float] = []
    due = due_at_or_after(timing, start)
    while due and due < end and len(found) <= limit:
        found.append(due)
        due = next_due(timing, due)
    return found


def jitter_offset(schedule_id: str, due: float, jitter_s: float) -> float:
    """How much later than `due` it fires: in [0, jitter_s), the same on every instance."""
    if jitter_s <= 0:
        return 0.0
    digest = hashlib.sha256(f"{schedule_id}@{round(due * 1000)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * jitter_s


def fire_time(schedule_id: str, spec: ScheduleSpec, due: float) -> float:
    """When due time `due` fires: plus its jitter (0 stays 0)."""
    return due + jitter_offset(schedule_id, due, spec.jitter_s) if due else 0.0


def plan(schedule_id: str, spec: ScheduleSpec, next_due_time: float, now: float) -> Plan:
    """The firings a schedule owes at `now`, given its next due time.

    A due time is on time while `now - due <= grace + jitter`: it fires (cause
    SCHEDULED) once its fire time (due plus jitter) has come. Older due times were missed:
    SKIP drops them, FIRE_ONCE fires the latest, CATCH_UP the latest `catchup_limit`
    (cause CATCH_UP). Due times at or after the end time never fire. At most
    MAX_FIRES_PER_PLAN firings are returned; the rest come with the next plan.
    """
    timing = spec.timing
    fires: list[tuple[float, Cause]] = []
    due = next_due_time
    cutoff = now - spec.grace_s - spec.jitter_s
    if due and due < cutoff:
        keep = {
            MissedFirePolicy.SKIP: 0,
            MissedFirePolicy.FIRE_ONCE: 1,
            MissedFirePolicy.CATCH_UP: spec.catchup_limit,
        }[spec.missed_fire_policy]
        keep = min(keep, MAX_FIRES_PER_PLAN)
        fires.extend((d, Cause.CATCH_UP) for d in latest_dues_before(timing, cutoff, keep, due))
        due = due_at_or_after(timing, cutoff)
    while due and fire_time(schedule_id, spec, due) <= now and len(fires) < MAX_FIRES_PER_PLAN:
        fires.append((due, Cause.SCHEDULED))
        due = next_due(timing, due)
    if spec.end_time:
        fires = [(d, c) for d, c in fires if d < spec.end_time]
        if due >= spec.end_time:
            due = 0.0
    return Plan(tuple(fires), due)


def first_due(spec: ScheduleSpec, created_at: float) -> float:
    """The first due time of a new schedule (one-shot times in the past included: the
    missed-fire policy decides about them)."""
    timing = spec.timing
    if timing.kind is TimingKind.ONCE:
        due = timing.at
    elif timing.kind is TimingKind.INTERVAL:
        due = due_at_or_after(timing, created_at)
    else:
        due = next_due(timing, created_at)
    if spec.end_time and due >= spec.end_time:
        return 0.0
    return due


def shortest_gap(timing: Timing, after: float, samples: int = 16) -> float:
    """The shortest time between consecutive due times among the next `samples`
    (infinity for a one-shot), to bound the jitter."""
    if timing.kind is TimingKind.ONCE:
        return math.inf
    if timing.kind is TimingKind.INTERVAL:
        return timing.every_s
    gaps = []
    due = next_due(timing, after)
    for _ in range(samples):
        following = next_due(timing, due) if due else 0.0
        if not following:
            break
        gaps.append(following - due)
        due = following
    return min(gaps, default=math.inf)
