"""What governance reasons about: policies, requests, decisions and approvals."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class RiskLevel(enum.IntEnum):
    """How much harm an action can do; ordered so levels compare."""

    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        """Lower-case name, as conditions and policy files spell it."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> RiskLevel:
        """A level from its name in any case; ValueError otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown risk level {text!r}") from None


class Effect(enum.Enum):
    """What a matching policy asks for."""

    PERMIT = "permit"
    FORBID = "forbid"
    REQUIRE_APPROVAL = "require_approval"


class Mode(enum.Enum):
    """Whether decisions block."""

    LOG_ONLY = "log_only"
    ENFORCE = "enforce"


class Verdict(enum.Enum):
    """The answer to an evaluation."""

    ALLOW = "allow"
    DENY = "deny"
    PENDING_APPROVAL = "pending_approval"


class Operator(enum.Enum):
    """How a condition compares a context attribute with its value."""

    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LE = "le"
    GT = "gt"
    GE = "ge"
    IN = "in"
    NOT_IN = "not_in"
    EXISTS = "exists"
    MATCHES = "matches"


class ApprovalStatus(enum.Enum):
    """Where an approval request stands."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def settled(self) -> bool:
        """True once nothing can change it any more."""
        return self is not ApprovalStatus.PENDING


@dataclass(frozen=True)
class Condition:
    """A test on one attribute of a request's context."""

    attribute: str
    operator: Operator
    value: Any = None


@dataclass(frozen=True)
class Policy:
    """One rule. Patterns use '*' for any run of characters; empty means '*'.

    Attributes:
        mode: None follows the global mode.
        min_risk_level: None matches every level.
    """

    policy_id: str
    effect: Effect
    description: str = ""
    principal: str = "*"
    action: str = "*"
    resource: str = "*"
    conditions: tuple[Condition, ...] = ()
    min_risk_level: RiskLevel | None = None
    mode: Mode | None = None
    version: int = 0
    created_at: float = 0.0
    updated_at: float = 0.0

    def body(self) -> dict[str, Any]:
        """The policy's content (no version or times), JSON-ready, as files write it."""
        out: dict[str, Any] = {
            "policy_id": self.policy_id,
            "description": self.description,
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "conditions": [
                {"attribute": c.attribute, "operator": c.operator.value, "value": c.value}
                for c in self.conditions
            ],
            "effect": self.effect.value,
        }
        if self.min_risk_level is not None:
            out["min_risk_level"] = self.min_risk_level.label
        if self.mode is not None:
            out["mode"] = self.mode.value
        return out


@dataclass(frozen=True)
class Request:
    """What someone wants to do."""

    actor: str
    action: str
    resource: str
    risk_level: RiskLevel
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Match:
    """A policy that matched a request, or failed to evaluate on it."""

    policy_id: str
    version: int
    effect: Effect
    mode: Mode
    reason: str
    failed: bool = False


@dataclass(frozen=True)
class Evaluation:
    """The pure result of evaluating policies on a request.

    Attributes:
        verdict: What the caller must do.
        evaluated_verdict: What enforcing everything would give.
        policy_ids: Policies that decided the verdict (or matched, in log-only).
        reasons: One line per deciding policy, or the default that applied.
        matches: Every policy that matched or failed.
    """

    verdict: Verdict
    evaluated_verdict: Verdict
    policy_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    matches: tuple[Match, ...]


@dataclass(frozen=True)
class Decision:
    """A recorded evaluation."""

    decision_id: str
    request: Request
    evaluation: Evaluation
    mode: Mode
    time: float
    request_id: str = ""
    approval_id: str = ""

    @property
    def verdict(self) -> Verdict:
        """The answer that counts."""
        return self.evaluation.verdict

    def to_json(self) -> dict[str, Any]:
        """A JSON form for the immutable log and the event bus."""
        return {
            "decision_id": self.decision_id,
            "actor": self.request.actor,
            "action": self.request.action,
            "resource": self.request.resource,
            "risk_level": self.request.risk_level.label,
            "context": dict(self.request.context),
            "verdict": self.verdict.value,
            "evaluated_verdict": self.evaluation.evaluated_verdict.value,
            "mode": self.mode.value,
            "policy_ids": list(self.evaluation.policy_ids),
            "reasons": list(self.evaluation.reasons),
            "matches": [
                {
                    "policy_id": m.policy_id,
                    "version": m.version,
                    "effect": m.effect.value,
                    "mode": m.mode.value,
                    "reason": m.reason,
                    "failed": m.failed,
                }
                for m in self.evaluation.matches
            ],
            "approval_id": self.approval_id,
            "time": self.time,
            "request_id": self.request_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Decision:
        """The inverse of `to_json`."""
        return cls(
            decision_id=data["decision_id"],
            request=Request(
                actor=data["actor"],
                action=data["action"],
                resource=data["resource"],
                risk_level=RiskLevel.parse(data["risk_level"]),
                context=dict(data["context"]),
            ),
            evaluation=Evaluation(
                verdict=Verdict(data["verdict"]),
                evaluated_verdict=Verdict(data["evaluated_verdict"]),
                policy_ids=tuple(data["policy_ids"]),
                reasons=tuple(data["reasons"]),
                matches=tuple(
                    Match(
                        policy_id=m["policy_id"],
                        version=m["version"],
                        effect=Effect(m["effect"]),
                        mode=Mode(m["mode"]),
                        reason=m["reason"],
                        failed=m["failed"],
                    )
                    for m in data["matches"]
                ),
            ),
            mode=Mode(data["mode"]),
            time=data["time"],
            request_id=data["request_id"],
            approval_id=data["approval_id"],
        )


@dataclass(frozen=True)
class Approval:
    """A request held until a person approves or rejects it."""

    approval_id: str
    decision_id: str
    request: Request
    policy_ids: tuple[str, ...]
    reasons: tuple[str, ...]
    status: ApprovalStatus
    created_at: float
    expires_at: float
    decided_by: str = ""
    decision_reason: str = ""
    decided_at: float = 0.0
