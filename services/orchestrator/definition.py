"""Validation and normalization of workflow definitions.

Every rule failure is an `InvalidArgument` naming the offending step by its position,
for example `steps[2].depends_on`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument
from services.common.validation import require_id, require_text
from services.orchestrator.dataflow import check_references
from services.orchestrator.model import JsonDict, RetryPolicy, StepSpec

MAX_STEPS = 100
MAX_STEP_ID_LENGTH = 64
MAX_ACTION_LENGTH = 128
MAX_NAME_LENGTH = 128
MAX_DESCRIPTION_LENGTH = 1024
MAX_TIMEOUT_S = 3600.0
MAX_ATTEMPTS = 20
MAX_DATA_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RetryDraft:
    """A retry policy as sent; zero or None fields take the defaults."""

    max_attempts: int = 0
    initial_backoff_s: float | None = None
    multiplier: float = 0.0
    max_backoff_s: float | None = None
    unavailable_window_s: float | None = None


@dataclass(frozen=True)
class StepDraft:
    """A step as a client sent it, before ids and defaults are filled in."""

    action: str
    id: str = ""
    domain_id: str = ""
    capability: str = ""
    data: JsonDict = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    timeout_s: float | None = None
    retry: RetryDraft | None = None
    compensation_action: str = ""
    compensation_skip: bool = False


def _retry(prefix: str, draft: RetryDraft | None) -> RetryPolicy:
    default = RetryPolicy()
    if draft is None:
        return default
    attempts = draft.max_attempts or default.max_attempts
    if not 1 <= attempts <= MAX_ATTEMPTS:
        raise InvalidArgument(f"{prefix}.max_attempts", f"must be between 1 and {MAX_ATTEMPTS}")
    initial = (
        default.initial_backoff_s if draft.initial_backoff_s is None else draft.initial_backoff_s
    )
    maximum = default.max_backoff_s if draft.max_backoff_s is None else draft.max_backoff_s
    window = (
        default.unavailable_window_s
        if draft.unavailable_window_s is None
        else draft.unavailable_window_s
    )
    for name, value in (
        ("initial_backoff", initial),
        ("max_backoff", maximum),
        ("unavailable_window", window),
    ):
        if not 0 <= value <= MAX_TIMEOUT_S:
            raise InvalidArgument(f"{prefix}.{name}", "must be between 0 s and 1 h")
    multiplier = draft.multiplier or default.multiplier
    if not 1 <= multiplier <= 10:
        raise InvalidArgument(f"{prefix}.backoff_multiplier", "must be between 1 and 10")
    return RetryPolicy(attempts, initial, multiplier, max(maximum, 0.0), window)


def _find_cycle(steps: Sequence[StepSpec]) -> list[str] | None:
    graph = {s.id: s.depends_on for s in steps}
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = 1
        stack.append(node)
        for dep in graph[node]:
            if color.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in color and (found := visit(dep)):
                return found
        stack.pop()
        color[node] = 2
        return None

    for step in steps:
        if step.id not in color and (cycle := visit(step.id)):
            return cycle
    return None


def ancestors(steps: Sequence[StepSpec]) -> dict[str, set[str]]:
    """For each step id, the ids of every step it transitively depends on (acyclic input)."""
    by_id = {s.id: s for s in steps}
    memo: dict[str, set[str]] = {}

    def of(step_id: str) -> set[str]:
        if step_id not in memo:
            found: set[str] = set()
            for dep in by_id[step_id].depends_on:
                found.add(dep)
                found |= of(dep)
            memo[step_id] = found
        return memo[step_id]

    return {s.id: of(s.id) for s in steps}


def build_steps(drafts: Sequence[StepDraft]) -> tuple[StepSpec, ...]:
    """Validates drafts and returns the normalized steps.

    Raises:
        InvalidArgument: naming `steps[i].<field>` and the rule broken.
    """
    if not drafts:
        raise InvalidArgument("steps", "at least one step is required")
    if len(drafts) > MAX_STEPS:
        raise InvalidArgument("steps", f"must have at most {MAX_STEPS} steps")
    steps: list[StepSpec] = []
    positions: dict[str, int] = {}
    for index, draft in enumerate(drafts):
        prefix = f"steps[{index}]"
        step_id = draft.id or f"step_{index + 1}"
        require_id(f"{prefix}.id", step_id, max_length=MAX_STEP_ID_LENGTH)
        if step_id in positions:
            raise InvalidArgument(
                f"{prefix}.id", f"duplicates the id {step_id!r} of steps[{positions[step_id]}]"
            )
        positions[step_id] = index
        if bool(draft.domain_id) == bool(draft.capability):
            raise InvalidArgument(
                f"{prefix}.domain_id", "set exactly one of domain_id and capability"
            )
        if draft.domain_id:
            require_id(f"{prefix}.domain_id", draft.domain_id)
        else:
            require_id(f"{prefix}.capability", draft.capability, max_length=64)
        require_id(f"{prefix}.action", draft.action, max_length=MAX_ACTION_LENGTH)
        if draft.compensation_action:
            require_id(
                f"{prefix}.compensation.action",
                draft.compensation_action,
                max_length=MAX_ACTION_LENGTH,
            )
        size = len(json.dumps(draft.data, separators=(",", ":")).encode())
        if size > MAX_DATA_BYTES:
            raise InvalidArgument(
                f"{prefix}.data", f"is {size} bytes; the limit is {MAX_DATA_BYTES}"
            )
        timeout = DEFAULT_TIMEOUT_S if draft.timeout_s is None else draft.timeout_s
        if not 0 < timeout <= MAX_TIMEOUT_S:
            raise InvalidArgument(f"{prefix}.timeout", "must be more than 0 s and at most 1 h")
        if len(draft.depends_on) > MAX_STEPS:
            raise InvalidArgument(f"{prefix}.depends_on", f"must have at most {MAX_STEPS} entries")
        steps.append(
            StepSpec(
                id=step_id,
                action=draft.action,
                domain_id=draft.domain_id,
                capability=draft.capability,
                data=dict(draft.data),
                depends_on=tuple(dict.fromkeys(draft.depends_on)),
                timeout_s=timeout,
                retry=_retry(f"{prefix}.retry", draft.retry),
                compensation_action=draft.compensation_action,
                compensation_skip=draft.compensation_skip,
            )
        )
    for index, step in enumerate(steps):
        for dep in step.depends_on:
            if dep not in positions:
                raise InvalidArgument(
                    f"steps[{index}].depends_on", f"unknown step {dep!r} (no step has this id)"
                )
            if dep == step.id:
                raise InvalidArgument(
                    f"steps[{index}].depends_on", "a step cannot depend on itself"
                )
    cycle = _find_cycle(steps)
    if cycle:
        raise InvalidArgument(
            f"steps[{positions[cycle[0]]}].depends_on", f"forms a cycle: {' -> '.join(cycle)}"
        )
    reachable = ancestors(steps)
    for index, step in enumerate(steps):
        check_references(f"steps[{index}].data", step.data, reachable[step.id])
    return tuple(steps)


def check_name(name: str, description: str) -> None:
    """Checks the workflow's name and description."""
    require_text("name", name, max_length=MAX_NAME_LENGTH, required=True)
    require_text("description", description, max_length=MAX_DESCRIPTION_LENGTH)
