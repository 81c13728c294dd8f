"""What the scheduler stores: schedules, their timing and action, and their firings.

Times are epoch seconds (floats), as in every Grace core; 0 means "none".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class TimingKind(StrEnum):
    """How a schedule's due times are computed."""

    CRON = "cron"
    INTERVAL = "interval"
    ONCE = "once"


class ActionKind(StrEnum):
    """What a firing does."""

    WORKFLOW = "workflow"
    DOMAIN = "domain"
    EVENT = "event"
    TASK = "task"


class MissedFirePolicy(StrEnum):
    """What happens to due times missed by more than the grace period."""

    SKIP = "skip"
    FIRE_ONCE = "fire_once"
    CATCH_UP = "catch_up"


class OverlapPolicy(StrEnum):
    """What a workflow firing does while the previous firing's execution still runs."""

    ALLOW = "allow"
    SKIP = "skip"


class ScheduleState(StrEnum):
    """Whether a schedule fires."""

    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"


class Outcome(StrEnum):
    """Where a firing is, or how it ended."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DENIED = "denied"
    SKIPPED = "skipped"


OPEN_OUTCOMES = (Outcome.PENDING, Outcome.RUNNING)


class Cause(StrEnum):
    """Why a firing happened."""

    SCHEDULED = "scheduled"
    CATCH_UP = "catch_up"
    TRIGGER = "trigger"
    BACKFILL = "backfill"


@dataclass(frozen=True)
class Timing:
    """When a schedule fires.

    Attributes:
        kind: Cron, interval or once.
        expression: CRON: the cron expression.
        time_zone: CRON: IANA zone name ("" is UTC).
        every_s: INTERVAL: the period.
        start: INTERVAL: the first due time (due times are start + k * every_s).
        at: ONCE: the due time.
    """

    kind: TimingKind
    expression: str = ""
    time_zone: str = ""
    every_s: float = 0.0
    start: float = 0.0
    at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "kind": self.kind.value,
            "expression": self.expression,
            "time_zone": self.time_zone,
            "every_s": self.every_s,
            "start": self.start,
            "at": self.at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timing:
        """Reads the stored form."""
        return cls(
            kind=TimingKind(data["kind"]),
            expression=data.get("expression", ""),
            time_zone=data.get("time_zone", ""),
            every_s=float(data.get("every_s", 0.0)),
            start=float(data.get("start", 0.0)),
            at=float(data.get("at", 0.0)),
        )


@dataclass(frozen=True)
class Action:
    """What a firing does.

    Attributes:
        kind: Workflow, domain, event or task.
        params: The action's fields as JSON: WORKFLOW `workflow_id`, `input`; DOMAIN
            `domain_id` or `capability`, `action`, `input`; EVENT `event_type`, `data`;
            TASK `title`, `details`, `priority`.
    """

    kind: ActionKind
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        """What the action reaches, as governance sees the resource."""
        p = self.params
        if self.kind is ActionKind.WORKFLOW:
            return f"workflow:{p.get('workflow_id', '')}"
        if self.kind is ActionKind.DOMAIN:
            where = p.get("domain_id") or f"capability:{p.get('capability', '')}"
            return f"domain:{where}.{p.get('action', '')}"
        if self.kind is ActionKind.EVENT:
            return f"event:{p.get('event_type', '')}"
        return f"task:{p.get('title', '')}"


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as its creator wrote it (see ScheduleSpec in scheduler.proto)."""

    timing: Timing
    action: Action
    owner: str
    description: str = ""
    missed_fire_policy: MissedFirePolicy = MissedFirePolicy.FIRE_ONCE
    catchup_limit: int = 10
    grace_s: float = 60.0
    jitter_s: float = 0.0
    overlap: OverlapPolicy = OverlapPolicy.ALLOW
    end_time: float = 0.0
    risk_level: str = "medium"

    def to_json(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "timing": self.timing.to_json(),
            "action": {"kind": self.action.kind.value, "params": self.action.params},
            "owner": self.owner,
            "description": self.description,
            "missed_fire_policy": self.missed_fire_policy.value,
            "catchup_limit": self.catchup_limit,
            "grace_s": self.grace_s,
            "jitter_s": self.jitter_s,
            "overlap": self.overlap.value,
            "end_time": self.end_time,
            "risk_level": self.risk_level,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScheduleSpec:
        """Reads the stored form."""
        action = data["action"]
        return cls(
            timing=Timing.from_json(data["timing"]),
            action=Action(ActionKind(action["kind"]), dict(action.get("params") or {})),
            owner=data["owner"],
            description=data.get("description", ""),
            missed_fire_policy=MissedFirePolicy(data.get("missed_fire_policy", "fire_once")),
            catchup_limit=int(data.get("catchup_limit", 10)),
            grace_s=float(data.get("grace_s", 60.0)),
            jitter_s=float(data.get("jitter_s", 0.0)),
            overlap=OverlapPolicy(data.get("overlap", "allow")),
            end_time=float(data.get("end_time", 0.0)),
            risk_level=data.get("risk_level", "medium"),
        )


@dataclass(frozen=True)
class Schedule:
    """A stored schedule.

    Attributes:
        schedule_id: Its id.
        spec: As created.
        state: Active, paused or completed.
        created_at: Creation time.
        updated_at: Last change.
        next_due: Next due time (0: none left).
        next_fire_at: When that due time fires (due time plus jitter).
        last_due: Last due time that fired (0: none yet).
        fire_count: Firings so far.
        version: Bumped by every change; claims compare it (optimistic concurrency).
    """

    schedule_id: str
    spec: ScheduleSpec
    state: ScheduleState
    created_at: float
    updated_at: float
    next_due: float
    next_fire_at: float
    last_due: float = 0.0
    fire_count: int = 0
    version: int = 1


@dataclass(frozen=True)
class Firing:
    """One run of a schedule's action.

    Attributes:
        firing_id: `<schedule_id>@<due time in ms>` for due times (so each fires once),
            `<schedule_id>@trigger-<hex>` for triggers.
        schedule_id: The schedule.
        due: The due time it answers.
        fire_at: Due time plus jitter.
        cause: Why it fired.
        outcome: Where it is, or how it ended.
        attempt: Fencing token: the number of the claim that owns it.
        owner: Instance holding the claim.
        lease_until: The claim lapses then; another instance may take it over.
        started_at: When the action started (0: not yet).
        finished_at: When the outcome was recorded (0: not yet).
        result: What the action returned.
        error: Why it failed, was denied or skipped.
        decision_id: The governance decision.
    """

    firing_id: str
    schedule_id: str
    due: float
    fire_at: float
    cause: Cause
    outcome: Outcome
    attempt: int = 0
    owner: str = ""
    lease_until: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    decision_id: str = ""


def firing_id(schedule_id: str, due: float) -> str:
    """The id of the firing of one due time: the same on every instance."""
    return f"{schedule_id}@{round(due * 1000)}"
