"""What the tasks kernel reasons about: snapshots of the system, weak points, cycles and
tasks with their state machine."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from services.common.errors import FailedPrecondition
from services.kernels.immune.model import PlaybookScore


class Severity(enum.IntEnum):
    """How bad a weak point is; higher is worse."""

    WARNING = 1
    ERROR = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        """Lower-case name: warning, error, critical."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        """A severity from its name (any case); ValueError otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"{text!r}: expected warning, error or critical") from None


class TaskState(enum.Enum):
    """Where a task is (seed 002's statuses)."""

    PENDING_APPROVAL = "pending-approval"
    APPROVED = "approved"
    REJECTED = "rejected"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


# The only moves a task can make. Only an approved task is dispatched, and dispatching
# leaves APPROVED, so a task is dispatched once per attempt; a failed task goes back to
# governance on request (retry).
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING_APPROVAL: frozenset({TaskState.APPROVED, TaskState.REJECTED}),
    TaskState.APPROVED: frozenset({TaskState.DISPATCHED}),
    TaskState.REJECTED: frozenset(),
    TaskState.DISPATCHED: frozenset({TaskState.RUNNING, TaskState.FAILED}),
    TaskState.RUNNING: frozenset({TaskState.COMPLETED, TaskState.FAILED}),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(
        {TaskState.PENDING_APPROVAL, TaskState.APPROVED, TaskState.REJECTED}
    ),
}
# States in which a task still answers its weak point (no second task is proposed).
OPEN_STATES = frozenset(
    {TaskState.PENDING_APPROVAL, TaskState.APPROVED, TaskState.DISPATCHED, TaskState.RUNNING}
)
# States a restart finds a task in without knowing whether its target acted.
IN_FLIGHT_STATES = frozenset({TaskState.DISPATCHED, TaskState.RUNNING})


@dataclass(frozen=True)
class WeakPoint:
    """One problem a cycle found."""

    kind: str
    target: str
    severity: Severity
    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """`<kind>:<target>`: the same in every cycle while the problem lasts."""
        return f"{self.kind}:{self.target}"

    def to_json(self) -> dict[str, Any]:
        """JSON form, for storage and events."""
        return {
            "key": self.key,
            "kind": self.kind,
            "target": self.target,
            "severity": self.severity.label,
            "reason": self.reason,
            "evidence": self.evidence,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WeakPoint:
        """Parses `to_json`'s output."""
        return cls(
            data["kind"],
            data["target"],
            Severity.parse(data["severity"]),
            data["reason"],
            dict(data.get("evidence") or {}),
        )


@dataclass(frozen=True)
class SourceStatus:
    """How reading one source went."""

    name: str
    ok: bool
    error: str = ""
    items: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {"name": self.name, "ok": self.ok, "error": self.error, "items": self.items}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SourceStatus:
        """Parses `to_json`'s output."""
        return cls(data["name"], data["ok"], data.get("error", ""), data.get("items", 0))


@dataclass(frozen=True)
class DomainHealth:
    """A registered domain as the registry sees it."""

    domain_id: str
    status: str  # healthy | degraded | unhealthy
    success_rate: float = 1.0
    latency_ms: float = 0.0


@dataclass(frozen=True)
class AnomalySeen:
    """An anomaly the immune kernel detected."""

    component: str
    kind: str
    detected_at: float


@dataclass(frozen=True)
class DeadLetterSeen:
    """An event the bus gave up delivering."""

    domain_id: str
    event_type: str
    reason: str


@dataclass(frozen=True)
class ExecutionSeen:
    """A workflow execution that failed (rolled back) or could not be compensated."""

    execution_id: str
    workflow_id: str
    compensation_failed: bool
    domain_id: str
    action: str
    error: str


@dataclass(frozen=True)
class PatternSeen:
    """A contribution in shared memory that failed more often than it worked."""

    contribution_id: str
    domain_id: str
    contribution_type: str
    summary: str
    successes: int
    failures: int


@dataclass(frozen=True)
class FailureEvent:
    """A critical or error event that arrived since the last cycle."""

    event_type: str
    target: str
    time: float
    detail: str = ""


@dataclass(frozen=True)
class Snapshot:
    """The system as the sources showed it at the start of a cycle."""

    domains: tuple[DomainHealth, ...] = ()
    anomalies: tuple[AnomalySeen, ...] = ()
    dead_letters: tuple[DeadLetterSeen, ...] = ()
    executions: tuple[ExecutionSeen, ...] = ()
    patterns: tuple[PatternSeen, ...] = ()
    failures: tuple[FailureEvent, ...] = ()
    sources: tuple[SourceStatus, ...] = ()


def score_to_json(score: PlaybookScore) -> dict[str, Any]:
    """A remedy's record as JSON."""
    return {
        "remedy": score.playbook,
        "successes": score.successes,
        "failures": score.failures,
        "score": score.score,
    }


@dataclass(frozen=True)
class Proposal:
    """What a cycle proposed for one weak point."""

    weak_point: str
    candidates: tuple[PlaybookScore, ...]
    task_id: str = ""
    skipped: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "weak_point": self.weak_point,
            "candidates": [score_to_json(c) for c in self.candidates],
            "task_id": self.task_id,
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Proposal:
        """Parses `to_json`'s output."""
        return cls(
            data["weak_point"],
            tuple(
                PlaybookScore(c["remedy"], c["successes"], c["failures"])
                for c in data["candidates"]
            ),
            data.get("task_id", ""),
            data.get("skipped", ""),
        )


@dataclass(frozen=True)
class Evaluation:
    """A cycle's verdict on an earlier task."""

    task_id: str
    weak_point: str
    kind: str
    remedy: str
    fixed: bool

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "task_id": self.task_id,
            "weak_point": self.weak_point,
            "kind": self.kind,
            "remedy": self.remedy,
            "fixed": self.fixed,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Evaluation:
        """Parses `to_json`'s output."""
        return cls(data["task_id"], data["weak_point"], data["kind"], data["remedy"], data["fixed"])


@dataclass(frozen=True)
class Cycle:
    """One analysis of the system."""

    cycle_id: str
    trigger: str
    trigger_detail: str
    started_at: float
    finished_at: float = 0.0
    sources: tuple[SourceStatus, ...] = ()
    weak_points: tuple[WeakPoint, ...] = ()
    proposals: tuple[Proposal, ...] = ()
    evaluations: tuple[Evaluation, ...] = ()

    @property
    def degraded(self) -> bool:
        """True when a source could not be read."""
        return any(not s.ok for s in self.sources)

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "cycle_id": self.cycle_id,
            "trigger": self.trigger,
            "trigger_detail": self.trigger_detail,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "sources": [s.to_json() for s in self.sources],
            "degraded": self.degraded,
            "weak_points": [w.to_json() for w in self.weak_points],
            "proposals": [p.to_json() for p in self.proposals],
            "evaluations": [e.to_json() for e in self.evaluations],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cycle:
        """Parses `to_json`'s output."""
        return cls(
            data["cycle_id"],
            data["trigger"],
            data["trigger_detail"],
            data["started_at"],
            data["finished_at"],
            tuple(SourceStatus.from_json(s) for s in data["sources"]),
            tuple(WeakPoint.from_json(w) for w in data["weak_points"]),
            tuple(Proposal.from_json(p) for p in data["proposals"]),
            tuple(Evaluation.from_json(e) for e in data["evaluations"]),
        )


@dataclass(frozen=True)
class Transition:
    """One change of a task's state."""

    state: TaskState
    time: float
    actor: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "state": self.state.value,
            "time": self.time,
            "actor": self.actor,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transition:
        """Parses `to_json`'s output."""
        return cls(TaskState(data["state"]), data["time"], data["actor"], data["reason"])


@dataclass(frozen=True)
class Task:
    """One thing to do about a weak point.

    Attributes:
        remedy: `heal:<playbook>`, `workflow:<workflow_id>` or `action:<domain>.<action>`.
        target: The component a heal acts on (a workflow or action gets it as input).
        risk: Risk declared to governance.
        evaluated: True once a cycle recorded whether it fixed its weak point.
    """

    task_id: str
    cycle_id: str
    weak_point: WeakPoint
    remedy: str
    target: str
    risk: str
    reason: str
    state: TaskState
    created_at: float
    updated_at: float
    decision_id: str = ""
    approval_id: str = ""
    attempts: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    history: tuple[Transition, ...] = ()
    evaluated: bool = False

    def moved(self, state: TaskState, now: float, actor: str, reason: str, **changes: Any) -> Task:
        """This task in `state`, with the transition recorded; FailedPrecondition when the
        state machine does not allow the move."""
        if state not in TRANSITIONS[self.state]:
            raise FailedPrecondition(
                f"task {self.task_id} is {self.state.value}: it cannot become {state.value}",
                reason="TASK_STATE",
                metadata={"task_id": self.task_id, "state": self.state.value},
            )
        return replace(
            self,
            state=state,
            updated_at=now,
            history=(*self.history, Transition(state, now, actor, reason)),
            **changes,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON form, for storage, events and log entries."""
        return {
            "task_id": self.task_id,
            "cycle_id": self.cycle_id,
            "weak_point": self.weak_point.to_json(),
            "remedy": self.remedy,
            "target": self.target,
            "risk": self.risk,
            "reason": self.reason,
            "state": self.state.value,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "decision_id": self.decision_id,
            "approval_id": self.approval_id,
            "attempts": self.attempts,
            "result": self.result,
            "error": self.error,
            "history": [t.to_json() for t in self.history],
            "evaluated": self.evaluated,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        """Parses `to_json`'s output."""
        return cls(
            task_id=data["task_id"],
            cycle_id=data["cycle_id"],
            weak_point=WeakPoint.from_json(data["weak_point"]),
            remedy=data["remedy"],
            target=data["target"],
            risk=data["risk"],
            reason=data["reason"],
            state=TaskState(data["state"]),
            created_at=data["created_at"],
            updated_at=data["updated_at"],
            decision_id=data.get("decision_id", ""),
            approval_id=data.get("approval_id", ""),
            attempts=data.get("attempts", 0),
            result=dict(data.get("result") or {}),
            error=data.get("error", ""),
            history=tuple(Transition.from_json(t) for t in data.get("history", [])),
            evaluated=data.get("evaluated", False),
        )
