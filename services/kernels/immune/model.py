"""What the immune kernel reasons about: metric points, anomalies and remediations."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricPoint:
    """One observation of one metric of one component."""

    component: str
    metric: str
    value: float
    time: float


@dataclass(frozen=True)
class EvidencePoint:
    """A point beyond the threshold, with its score."""

    value: float
    score: float
    time: float


@dataclass(frozen=True)
class Anomaly:
    """A sustained departure of a series from its baseline."""

    anomaly_id: str
    component: str
    metric: str
    kind: str
    median: float
    mad: float
    threshold: float
    evidence: tuple[EvidencePoint, ...]
    detected_at: float
    remediation_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form, for storage and the `anomaly.detected` event."""
        return {
            "anomaly_id": self.anomaly_id,
            "component": self.component,
            "metric": self.metric,
            "kind": self.kind,
            "median": self.median,
            "mad": self.mad,
            "threshold": self.threshold,
            "evidence": [
                {"value": e.value, "score": e.score, "time": e.time} for e in self.evidence
            ],
            "detected_at": self.detected_at,
            "remediation_id": self.remediation_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Anomaly:
        """The inverse of `to_json`."""
        return cls(
            anomaly_id=data["anomaly_id"],
            component=data["component"],
            metric=data["metric"],
            kind=data["kind"],
            median=data["median"],
            mad=data["mad"],
            threshold=data["threshold"],
            evidence=tuple(EvidencePoint(**e) for e in data["evidence"]),
            detected_at=data["detected_at"],
            remediation_id=data.get("remediation_id", ""),
        )


class Outcome(enum.Enum):
    """How a remediation ended."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DENIED = "denied"
    SKIPPED = "skipped"
    DRY_RUN = "dry_run"


@dataclass(frozen=True)
class PlaybookScore:
    """What is known about one playbook for one anomaly kind."""

    playbook: str
    successes: int = 0
    failures: int = 0

    @property
    def score(self) -> float:
        """Success rate estimate with a uniform prior: (s + 1) / (s + f + 2)."""
        return (self.successes + 1) / (self.successes + self.failures + 2)


@dataclass(frozen=True)
class Remediation:
    """One attempt to heal a component after an anomaly."""

    remediation_id: str
    anomaly_id: str
    component: str
    kind: str
    outcome: Outcome
    reason: str
    started_at: float
    finished_at: float = 0.0
    playbook: str = ""
    candidates: tuple[PlaybookScore, ...] = ()
    governance_decision_id: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON form, for storage and the `remediation.completed` event."""
        return {
            "remediation_id": self.remediation_id,
            "anomaly_id": self.anomaly_id,
            "component": self.component,
            "kind": self.kind,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "playbook": self.playbook,
            "candidates": [
                {"playbook": c.playbook, "successes": c.successes, "failures": c.failures}
                for c in self.candidates
            ],
            "governance_decision_id": self.governance_decision_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Remediation:
        """The inverse of `to_json`."""
        return cls(
            remediation_id=data["remediation_id"],
            anomaly_id=data["anomaly_id"],
            component=data["component"],
            kind=data["kind"],
            outcome=Outcome(data["outcome"]),
            reason=data["reason"],
            started_at=data["started_at"],
            finished_at=data["finished_at"],
            playbook=data["playbook"],
            candidates=tuple(PlaybookScore(**c) for c in data["candidates"]),
            governance_decision_id=data["governance_decision_id"],
        )
