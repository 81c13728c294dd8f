"""Trigger rules: an event pattern, a condition on the event, and the action it fires.

A rule is plain data (what the rules file and the API carry) checked once by `parse_rule`:
every expression is compiled there, so a rule that loads can always be evaluated.

Conditions and input mappings are JMESPath expressions (a side-effect-free query language:
no function can reach anything outside the event). They are evaluated against the event as
a document `{"id", "type", "source", "subject", "time", "data"}`. A condition holds when
its value is truthy in JMESPath's sense (not `false`, `null`, `""`, `[]` or `{}`), so
`data.size > \\`1000\\`` and `data.document_id` (present and not empty) both work; the
empty condition always holds.

Actions:
- `workflow`: starts `workflow_id` with the mapped input (default: the event's data).
- `domain`: runs `action` on `domain_id` (or any domain with `capability`).
- `event`: publishes `event_type` with the mapped input as data.
- `task`: asks the tasks kernel for an analysis cycle, which proposes operator tasks.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jmespath
from jmespath import exceptions as jmespath_errors
from jmespath.parser import ParsedResult

from services.common.errors import InvalidArgument
from services.common.governance_client import RISK_LEVELS
from services.common.patterns import EVENT_TYPE_PATTERN, matches, validate_pattern
from services.common.validation import require_id

MAX_EXPRESSION_LENGTH = 1024
MAX_MAPPINGS = 64
MAX_ATTEMPTS = 20
MAX_DESCRIPTION = 1000


class ActionKind(enum.StrEnum):
    """What a rule fires."""

    WORKFLOW = "workflow"
    DOMAIN = "domain"
    EVENT = "event"
    TASK = "task"


def _compile(expression: str, field_name: str) -> ParsedResult:
    if len(expression) > MAX_EXPRESSION_LENGTH:
        raise InvalidArgument(field_name, f"must be at most {MAX_EXPRESSION_LENGTH} characters")
    try:
        return jmespath.compile(expression)
    except jmespath_errors.JMESPathError as exc:
        raise InvalidArgument(field_name, f"is not a valid JMESPath expression: {exc}") from None


def truthy(value: Any) -> bool:
    """JMESPath's truth: false, null, empty strings, lists and objects are false."""
    return value not in (None, False, "", [], {})


@dataclass(frozen=True)
class Rule:
    """One rule as stored (see the module docstring).

    Attributes:
        rule_id: Unique name.
        pattern: Event-type pattern (`*` matches any run of characters).
        condition: JMESPath expression over the event; empty: always.
        action: What fires.
        target: The action's parameters (`workflow_id`; `domain_id` or `capability` and
            `action`; `event_type`; `reason` for tasks).
        input: Output field -> JMESPath expression over the event; empty: the event's data.
        min_trust: Least trust score of the event's source domain, in [0, 1]; 0 skips the check.
        risk_level: Risk declared to governance.
        max_attempts: Attempts before a firing is dead-lettered.
        enabled: Disabled rules match nothing.
        description: Free text.
        version: Starts at 1, +1 on every update.
        origin: "file" or "api".
    """

    rule_id: str
    pattern: str
    action: ActionKind
    target: Mapping[str, str]
    condition: str = ""
    input: Mapping[str, str] = field(default_factory=dict)
    min_trust: float = 0.0
    risk_level: str = "medium"
    max_attempts: int = 5
    enabled: bool = True
    description: str = ""
    version: int = 1
    origin: str = "api"
    _condition: Any = field(default=None, init=False, repr=False, compare=False)
    _input: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Compiled once; parse_rule has already proven they compile.
        object.__setattr__(
            self, "_condition", _compile(self.condition, "condition") if self.condition else None
        )
        object.__setattr__(
            self,
            "_input",
            {k: _compile(v, f"input.{k}") for k, v in self.input.items()},
        )

    def resource(self) -> str:
        """What the action touches, as governance sees it."""
        if self.action is ActionKind.WORKFLOW:
            return f"workflow:{self.target['workflow_id']}"
        if self.action is ActionKind.DOMAIN:
            who = self.target.get("domain_id") or f"capability:{self.target['capability']}"
            return f"domain:{who}/{self.target['action']}"
        if self.action is ActionKind.EVENT:
            return f"event:{self.target['event_type']}"
        return "tasks:run_cycle"

    def applies_to(self, event: Mapping[str, Any]) -> bool:
        """Whether the rule fires for `event` (a document, see `event_document`)."""
        if not self.enabled or not matches(self.pattern, str(event.get("type", ""))):
            return False
        condition: ParsedResult | None = self._condition
        return condition is None or truthy(condition.search(event))

    def action_input(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The action's input: the mapped fields, or the event's data without a mapping."""
        mapping: dict[str, ParsedResult] = self._input
        if not mapping:
            data = event.get("data")
            return dict(data) if isinstance(data, Mapping) else {}
        return {name: expression.search(event) for name, expression in mapping.items()}

    def to_json(self) -> dict[str, Any]:
        """The rule as plain data (what `parse_rule` reads back)."""
        return {
            "rule_id": self.rule_id,
            "pattern": self.pattern,
            "condition": self.condition,
            "action": self.action.value,
            "target": dict(self.target),
            "input": dict(self.input),
            "min_trust": self.min_trust,
            "risk_level": self.risk_level,
            "max_attempts": self.max_attempts,
            "enabled": self.enabled,
            "description": self.description,
            "version": self.version,
            "origin": self.origin,
        }


_TARGET_FIELDS: dict[ActionKind, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # (required, optional)
    ActionKind.WORKFLOW: (("workflow_id",), ()),
    ActionKind.DOMAIN: (("action",), ("domain_id", "capability")),
    ActionKind.EVENT: (("event_type",), ("subject",)),
    ActionKind.TASK: ((), ("reason",)),
}


def _text(data: Mapping[str, Any], name: str, default: str = "") -> str:
    value = data.get(name, default)
    if not isinstance(value, str):
        raise InvalidArgument(name, "must be a string")
    return value


def parse_rule(data: Mapping[str, Any], *, origin: str = "api", version: int = 1) -> Rule:
    """A validated rule from plain data; InvalidArgument names the field and the rule."""
    known = {
        "rule_id",
        "pattern",
        "condition",
        "action",
        "target",
        "input",
        "min_trust",
        "risk_level",
        "max_attempts",
        "enabled",
        "description",
        "version",
        "origin",
    }
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidArgument(
            unknown[0], f"is not a rule field (known: {', '.join(sorted(known))})"
        )
    rule_id = require_id("rule_id", _text(data, "rule_id"))
    pattern = validate_pattern(_text(data, "pattern"), field="pattern")
    try:
        action = ActionKind(_text(data, "action"))
    except ValueError:
        raise InvalidArgument(
            "action", f"must be one of {', '.join(k.value for k in ActionKind)}"
        ) from None
    raw_target = data.get("target", {})
    if not isinstance(raw_target, Mapping):
        raise InvalidArgument("target", "must be a table of strings")
    required, optional = _TARGET_FIELDS[action]
    target: dict[str, str] = {}
    for name, value in raw_target.items():
        if name not in required + optional:
            raise InvalidArgument(f"target.{name}", f"is not a parameter of {action.value} actions")
        if not isinstance(value, str) or not value or len(value) > 256:
            raise InvalidArgument(f"target.{name}", "must be a string of 1-256 characters")
        target[str(name)] = value
    for name in required:
        if name not in target:
            raise InvalidArgument(f"target.{name}", f"is required for {action.value} actions")
    if action is ActionKind.DOMAIN and ("domain_id" in target) == ("capability" in target):
        raise InvalidArgument("target", "domain actions need exactly one of domain_id, capability")
    if action is ActionKind.EVENT and not EVENT_TYPE_PATTERN.fullmatch(target["event_type"]):
        raise InvalidArgument("target.event_type", "may contain only letters, digits, _ . : -")
    condition = _text(data, "condition")
    if condition:
        _compile(condition, "condition")
    raw_input = data.get("input", {})
    if not isinstance(raw_input, Mapping) or len(raw_input) > MAX_MAPPINGS:
        raise InvalidArgument("input", f"must be a table of at most {MAX_MAPPINGS} expressions")
    mapping: dict[str, str] = {}
    for name, expression in raw_input.items():
        if not isinstance(expression, str) or not expression:
            raise InvalidArgument(f"input.{name}", "must be a JMESPath expression")
        _compile(expression, f"input.{name}")
        mapping[str(name)] = expression
    min_trust = data.get("min_trust", 0.0)
    if isinstance(min_trust, bool) or not isinstance(min_trust, int | float):
        raise InvalidArgument("min_trust", "must be a number in [0, 1]")
    if not 0.0 <= float(min_trust) <= 1.0:
        raise InvalidArgument("min_trust", "must be in [0, 1]")
    risk = _text(data, "risk_level", "medium")
    if risk not in RISK_LEVELS:
        raise InvalidArgument("risk_level", f"must be one of {', '.join(RISK_LEVELS)}")
    attempts = data.get("max_attempts", 5)
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise InvalidArgument("max_attempts", f"must be an integer in [1, {MAX_ATTEMPTS}]")
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise InvalidArgument("max_attempts", f"must be in [1, {MAX_ATTEMPTS}]")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidArgument("enabled", "must be true or false")
    description = _text(data, "description")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument("description", f"must be at most {MAX_DESCRIPTION} characters")
    return Rule(
        rule_id=rule_id,
        pattern=pattern,
        condition=condition,
        action=action,
        target=target,
        input=mapping,
        min_trust=float(min_trust),
        risk_level=risk,
        max_attempts=attempts,
        enabled=enabled,
        description=description,
        version=version,
        origin=origin,
    )


def event_document(
    event_id: str,
    event_type: str,
    source: str,
    subject: str,
    time: float,
    data: Mapping[str, Any],
) -> dict[str, Any]:
    """The document conditions and mappings are evaluated against."""
    return {
        "id": event_id,
        "type": event_type,
        "source": source,
        "subject": subject,
        "time": time,
        "data": dict(data),
    }


def firing_id(event_id: str, rule_id: str) -> str:
    """The one firing of `rule_id` for `event_id` (the exactly-once key)."""
    return hashlib.sha256(f"{event_id}\x00{rule_id}".encode()).hexdigest()[:40]


class FiringState(enum.StrEnum):
    """Where a firing is."""

    PENDING = "pending"  # claimed, waiting for (another) attempt
    SUCCEEDED = "succeeded"
    DENIED = "denied"  # governance refused
    REFUSED = "refused"  # the source's trust is below the rule's minimum
    DEAD_LETTERED = "dead_lettered"  # every attempt failed


@dataclass(frozen=True)
class Firing:
    """One (event, rule) firing.

    Attributes:
        firing_id: `firing_id(event_id, rule_id)`.
        rule_id: The rule.
        rule_version: The rule's version when it matched.
        event: The event document.
        state: Where it is.
        attempts: Attempts made.
        next_at: When the next attempt may start (epoch seconds).
        created_at: When the event was claimed.
        updated_at: Last change.
        result: The action's result, or why it did not run.
    """

    firing_id: str
    rule_id: str
    rule_version: int
    event: Mapping[str, Any]
    state: FiringState
    attempts: int
    next_at: float
    created_at: float
    updated_at: float
    result: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain data for the API."""
        return {
            "firing_id": self.firing_id,
            "rule_id": self.rule_id,
            "rule_version": self.rule_version,
            "event_id": self.event.get("id", ""),
            "event_type": self.event.get("type", ""),
            "source": self.event.get("source", ""),
            "state": self.state.value,
            "attempts": self.attempts,
            "next_at": self.next_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "result": dict(self.result),
        }
