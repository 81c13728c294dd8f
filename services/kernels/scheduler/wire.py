"""Between the wire and the core: ScheduleSpec messages in (validated, every rule broken
named by its field), schedules and firings out."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from grace.kernels.scheduler.v1 import scheduler_pb2 as pb
from services.common.errors import InvalidArgument
from services.common.governance_client import RISK_LEVELS
from services.common.timestamps import from_duration, from_timestamp, to_duration, to_timestamp
from services.common.validation import require_id, require_struct_size, require_text
from services.kernels.scheduler import timing
from services.kernels.scheduler.model import (
    Action,
    ActionKind,
    Cause,
    Firing,
    MissedFirePolicy,
    Outcome,
    OverlapPolicy,
    Schedule,
    ScheduleSpec,
    ScheduleState,
    Timing,
    TimingKind,
)

MIN_INTERVAL_S = 1.0
MAX_INTERVAL_S = 366 * 86_400.0
MAX_JITTER_S = 3600.0
MAX_GRACE_S = 366 * 86_400.0
MAX_CATCHUP = 1000

_POLICY = {
    pb.MISSED_FIRE_POLICY_UNSPECIFIED: MissedFirePolicy.FIRE_ONCE,
    pb.MISSED_FIRE_POLICY_SKIP: MissedFirePolicy.SKIP,
    pb.MISSED_FIRE_POLICY_FIRE_ONCE: MissedFirePolicy.FIRE_ONCE,
    pb.MISSED_FIRE_POLICY_CATCH_UP: MissedFirePolicy.CATCH_UP,
}
_POLICY_OUT = {v: k for k, v in _POLICY.items() if k != pb.MISSED_FIRE_POLICY_UNSPECIFIED}
_OVERLAP = {
    pb.OVERLAP_POLICY_UNSPECIFIED: OverlapPolicy.ALLOW,
    pb.OVERLAP_POLICY_ALLOW: OverlapPolicy.ALLOW,
    pb.OVERLAP_POLICY_SKIP: OverlapPolicy.SKIP,
}
_OVERLAP_OUT = {
    OverlapPolicy.ALLOW: pb.OVERLAP_POLICY_ALLOW,
    OverlapPolicy.SKIP: pb.OVERLAP_POLICY_SKIP,
}
STATE_TO_PROTO = {
    state: pb.ScheduleState.Value(f"SCHEDULE_STATE_{state.name}") for state in ScheduleState
}
STATE_FROM_PROTO = {v: k for k, v in STATE_TO_PROTO.items()}
OUTCOME_TO_PROTO = {o: pb.FiringOutcome.Value(f"FIRING_OUTCOME_{o.name}") for o in Outcome}
CAUSE_TO_PROTO = {c: pb.FiringCause.Value(f"FIRING_CAUSE_{c.name}") for c in Cause}


def _times(**seconds: float) -> dict[str, Any]:
    """Timestamp fields for the non-zero times only: an unset time stays absent in JSON."""
    return {name: to_timestamp(value) for name, value in seconds.items() if value}


def _struct(field: str, message: Any) -> dict[str, Any]:
    require_struct_size(field, message)
    return json_format.MessageToDict(message)


def _timing(spec: pb.ScheduleSpec) -> Timing:
    which = spec.WhichOneof("timing")
    if which == "cron":
        timing.zone(spec.cron.time_zone, field="spec.cron.time_zone")
        return Timing(
            TimingKind.CRON,
            expression=timing.check_cron(spec.cron.expression, field="spec.cron.expression"),
            time_zone=spec.cron.time_zone,
        )
    if which == "interval":
        every = from_duration(spec.interval.every)
        if not MIN_INTERVAL_S <= every <= MAX_INTERVAL_S:
            raise InvalidArgument("spec.interval.every", "must be between 1 second and 366 days")
        return Timing(
            TimingKind.INTERVAL, every_s=every, start=from_timestamp(spec.interval.start_time)
        )
    if which == "once":
        at = from_timestamp(spec.once.at)
        if not at:
            raise InvalidArgument("spec.once.at", "is required")
        return Timing(TimingKind.ONCE, at=at)
    raise InvalidArgument("spec", "needs one of cron, interval or once")


def _action(spec: pb.ScheduleSpec) -> Action:
    which = spec.WhichOneof("action")
    if which == "workflow":
        w = spec.workflow
        return Action(
            ActionKind.WORKFLOW,
            {
                "workflow_id": require_id("spec.workflow.workflow_id", w.workflow_id),
                "input": _struct("spec.workflow.input", w.input),
            },
        )
    if which == "domain":
        d = spec.domain
        if bool(d.domain_id) == bool(d.capability):
            raise InvalidArgument("spec.domain", "needs exactly one of domain_id or capability")
        if d.domain_id:
            require_id("spec.domain.domain_id", d.domain_id)
        else:
            require_id("spec.domain.capability", d.capability)
        return Action(
            ActionKind.DOMAIN,
            {
                "domain_id": d.domain_id,
                "capability": d.capability,
                "action": require_id("spec.domain.action", d.action),
                "input": _struct("spec.domain.input", d.input),
            },
        )
    if which == "event":
        e = spec.event
        return Action(
            ActionKind.EVENT,
            {
                "event_type": require_id("spec.event.event_type", e.event_type, max_length=256),
                "data": _struct("spec.event.data", e.data),
            },
        )
    if which == "task":
        t = spec.task
        return Action(
            ActionKind.TASK,
            {
                "title": require_text("spec.task.title", t.title, max_length=256, required=True),
                "details": _struct("spec.task.details", t.details),
                "priority": require_text("spec.task.priority", t.priority, max_length=32),
            },
        )
    raise InvalidArgument("spec", "needs one of workflow, domain, event or task")


def spec_from_proto(spec: pb.ScheduleSpec) -> ScheduleSpec:
    """A validated core spec."""
    owner = require_text("spec.owner", spec.owner, max_length=128, required=True)
    risk = spec.risk_level or "medium"
    if risk not in RISK_LEVELS:
        raise InvalidArgument("spec.risk_level", f"must be one of {', '.join(RISK_LEVELS)}")
    limit = spec.catchup_limit or 10
    if not 1 <= limit <= MAX_CATCHUP:
        raise InvalidArgument("spec.catchup_limit", f"must be between 1 and {MAX_CATCHUP}")
    grace = from_duration(spec.grace_period) if spec.HasField("grace_period") else 60.0
    if not 0 <= grace <= MAX_GRACE_S:
        raise InvalidArgument("spec.grace_period", "must be between 0 and 366 days")
    jitter = from_duration(spec.jitter)
    if not 0 <= jitter <= MAX_JITTER_S:
        raise InvalidArgument("spec.jitter", "must be between 0 and 1 hour")
    if spec.missed_fire_policy not in _POLICY:
        raise InvalidArgument("spec.missed_fire_policy", "is not a known policy")
    if spec.overlap_policy not in _OVERLAP:
        raise InvalidArgument("spec.overlap_policy", "is not a known policy")
    return ScheduleSpec(
        timing=_timing(spec),
        action=_action(spec),
        owner=owner,
        description=require_text("spec.description", spec.description, max_length=1024),
        missed_fire_policy=_POLICY[spec.missed_fire_policy],
        catchup_limit=limit,
        grace_s=grace,
        jitter_s=jitter,
        overlap=_OVERLAP[spec.overlap_policy],
        end_time=from_timestamp(spec.end_time),
        risk_level=risk,
    )


def spec_to_proto(spec: ScheduleSpec) -> pb.ScheduleSpec:
    """The wire form of a spec."""
    out = pb.ScheduleSpec(
        owner=spec.owner,
        description=spec.description,
        missed_fire_policy=_POLICY_OUT[spec.missed_fire_policy],
        catchup_limit=spec.catchup_limit,
        grace_period=to_duration(spec.grace_s),
        jitter=to_duration(spec.jitter_s),
        overlap_policy=_OVERLAP_OUT[spec.overlap],
        risk_level=spec.risk_level,
        **_times(end_time=spec.end_time),
    )
    t = spec.timing
    if t.kind is TimingKind.CRON:
        out.cron.CopyFrom(pb.CronSpec(expression=t.expression, time_zone=t.time_zone))
    elif t.kind is TimingKind.INTERVAL:
        out.interval.CopyFrom(
            pb.IntervalSpec(every=to_duration(t.every_s), **_times(start_time=t.start))
        )
    else:
        out.once.CopyFrom(pb.OnceSpec(at=to_timestamp(t.at)))
    p = spec.action.params
    kind = spec.action.kind
    if kind is ActionKind.WORKFLOW:
        out.workflow.workflow_id = p["workflow_id"]
        out.workflow.input.update(p.get("input") or {})
    elif kind is ActionKind.DOMAIN:
        out.domain.domain_id = p.get("domain_id", "")
        out.domain.capability = p.get("capability", "")
        out.domain.action = p["action"]
        out.domain.input.update(p.get("input") or {})
    elif kind is ActionKind.EVENT:
        out.event.event_type = p["event_type"]
        out.event.data.update(p.get("data") or {})
    else:
        out.task.title = p["title"]
        out.task.details.update(p.get("details") or {})
        out.task.priority = p.get("priority", "")
    return out


def firing_to_proto(firing: Firing) -> pb.Firing:
    """The wire form of a firing."""
    out = pb.Firing(
        firing_id=firing.firing_id,
        schedule_id=firing.schedule_id,
        cause=CAUSE_TO_PROTO[firing.cause],
        outcome=OUTCOME_TO_PROTO[firing.outcome],
        attempt=firing.attempt,
        error=firing.error,
        governance_decision_id=firing.decision_id,
        **_times(
            due_time=firing.due,
            fire_time=firing.fire_at,
            started_at=firing.started_at,
            finished_at=firing.finished_at,
        ),
    )
    out.result.update(firing.result)
    return out


def schedule_to_proto(schedule: Schedule, recent: list[Firing] | None = None) -> pb.Schedule:
    """The wire form of a schedule (with its recent firings when given)."""
    live = schedule.state is ScheduleState.ACTIVE
    return pb.Schedule(
        schedule_id=schedule.schedule_id,
        spec=spec_to_proto(schedule.spec),
        state=STATE_TO_PROTO[schedule.state],
        fire_count=schedule.fire_count,
        recent_firings=[firing_to_proto(f) for f in recent or []],
        **_times(
            created_at=schedule.created_at,
            updated_at=schedule.updated_at,
            next_due_time=schedule.next_due if live else 0.0,
            next_fire_time=schedule.next_fire_at if live else 0.0,
            last_due_time=schedule.last_due,
        ),
    )
