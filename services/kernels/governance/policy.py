"""Policy semantics: validation and evaluation, pure functions with no I/O.

A policy matches a request when its principal, action and resource patterns match (the
seeds' '*' semantics of `services.common.patterns`: '*' is any run of characters, every
other character literal), the request's risk level is at or above its `min_risk_level`,
and every condition holds. Effects combine with FORBID over REQUIRE_APPROVAL over PERMIT.

- A condition on an attribute the context lacks is false (only EXISTS is interested in
  absence); a condition that cannot be evaluated (a string compared with `<` against a
  number, MATCHES on a non-string) makes the whole policy fail. A failed policy counts as
  FORBID when the request's risk level is at or above `fail_closed_at` (HIGH by default),
  and is ignored below it; either way it is reported in the matches.
- LOG_ONLY policies (and every policy in global LOG_ONLY mode) are evaluated and reported
  but do not shape the verdict. When no enforcing policy matches, the verdict is the
  default effect of the risk level in global ENFORCE mode, and ALLOW in global LOG_ONLY.
- `evaluated_verdict` is what enforcing every policy and the defaults would give: the
  "would have been blocked" signal that makes a log-only rollout measurable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from services.common.errors import InvalidArgument
from services.common.patterns import matches
from services.common.validation import require_id, require_text
from services.kernels.governance.model import (
    Condition,
    Effect,
    Evaluation,
    Match,
    Mode,
    Operator,
    Policy,
    Request,
    RiskLevel,
    Verdict,
)

MAX_PATTERN_LENGTH = 256
MAX_CONDITIONS = 16
MAX_DESCRIPTION_LENGTH = 1024
MAX_ATTRIBUTE_LENGTH = 128
MAX_LIST_VALUES = 256
_ATTRIBUTE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z_][A-Za-z0-9_\-]*)*")
# Patterns may hold any printable character but whitespace: actions such as
# "POST:/domains/workflows/create" carry slashes.
_PATTERN = re.compile(r"[^\s\x00-\x1f\x7f]+")
_REQUEST_FIELDS = ("actor", "action", "resource", "risk_level")
_PRECEDENCE = (Effect.FORBID, Effect.REQUIRE_APPROVAL, Effect.PERMIT)
_VERDICT_OF = {
    Effect.FORBID: Verdict.DENY,
    Effect.REQUIRE_APPROVAL: Verdict.PENDING_APPROVAL,
    Effect.PERMIT: Verdict.ALLOW,
}

DEFAULT_EFFECTS: Mapping[RiskLevel, Effect] = {
    RiskLevel.LOW: Effect.PERMIT,
    RiskLevel.MEDIUM: Effect.PERMIT,
    RiskLevel.HIGH: Effect.FORBID,
    RiskLevel.CRITICAL: Effect.FORBID,
}


class ConditionError(Exception):
    """A condition could not be evaluated on this request."""


def validate_pattern(field: str, value: str) -> str:
    """A pattern within limits; empty becomes '*'."""
    if not value:
        return "*"
    if len(value) > MAX_PATTERN_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_PATTERN_LENGTH} characters")
    if not _PATTERN.fullmatch(value):
        raise InvalidArgument(field, "must not contain whitespace or control characters")
    return value


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | bool | int | float)


def validate_condition(field: str, condition: Condition) -> Condition:
    """A condition whose attribute, operator and value fit together."""
    if not condition.attribute or len(condition.attribute) > MAX_ATTRIBUTE_LENGTH:
        raise InvalidArgument(f"{field}.attribute", f"must be 1-{MAX_ATTRIBUTE_LENGTH} characters")
    if not _ATTRIBUTE.fullmatch(condition.attribute):
        raise InvalidArgument(f"{field}.attribute", "must be a dotted path of identifiers")
    op, value = condition.operator, condition.value
    if op in (Operator.IN, Operator.NOT_IN):
        if not isinstance(value, list | tuple) or len(value) > MAX_LIST_VALUES:
            raise InvalidArgument(
                f"{field}.value", f"must be a list of at most {MAX_LIST_VALUES} values"
            )
        if not all(_scalar(v) for v in value):
            raise InvalidArgument(f"{field}.value", "list elements must be scalars")
        return Condition(condition.attribute, op, list(value))
    if op is Operator.MATCHES:
        if not isinstance(value, str):
            raise InvalidArgument(f"{field}.value", "must be a string pattern for MATCHES")
        validate_pattern(f"{field}.value", value)
    elif op in (Operator.LT, Operator.LE, Operator.GT, Operator.GE):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise InvalidArgument(f"{field}.value", "must be a number or a risk level name")
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidArgument(f"{field}.value", "must be finite")
    elif op is not Operator.EXISTS and not _scalar(value):
        raise InvalidArgument(f"{field}.value", "must be a number, string, bool or null")
    return condition


def validate_policy(policy: Policy) -> Policy:
    """The policy with defaults filled in, or InvalidArgument naming the field."""
    require_id("policy.policy_id", policy.policy_id)
    require_text("policy.description", policy.description, max_length=MAX_DESCRIPTION_LENGTH)
    if len(policy.conditions) > MAX_CONDITIONS:
        raise InvalidArgument("policy.conditions", f"must have at most {MAX_CONDITIONS} entries")
    return Policy(
        policy_id=policy.policy_id,
        effect=policy.effect,
        description=policy.description,
        principal=validate_pattern("policy.principal", policy.principal),
        action=validate_pattern("policy.action", policy.action),
        resource=validate_pattern("policy.resource", policy.resource),
        conditions=tuple(
            validate_condition(f"policy.conditions[{i}]", c)
            for i, c in enumerate(policy.conditions)
        ),
        min_risk_level=policy.min_risk_level,
        mode=policy.mode,
        version=policy.version,
        created_at=policy.created_at,
        updated_at=policy.updated_at,
    )


def _lookup(request: Request, path: str) -> tuple[bool, Any]:
    node: Any = request.context
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            break
    else:
        return True, node
    if path in _REQUEST_FIELDS:
        value = getattr(request, path)
        return True, value.label if isinstance(value, RiskLevel) else value
    return False, None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _risk(value: Any) -> RiskLevel | None:
    if isinstance(value, str):
        try:
            return RiskLevel.parse(value)
        except ValueError:
            return None
    return None


def _equal(left: Any, right: Any) -> bool:
    if _number(left) and _number(right):
        return bool(left == right)
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    return bool(left == right)


def _ordered(op: Operator, left: Any, right: Any) -> bool:
    if _number(left) and _number(right):
        a, b = float(left), float(right)
    else:
        la, rb = _risk(left), _risk(right)
        if la is None or rb is None:
            raise ConditionError(f"cannot compare {left!r} with {right!r} using {op.value}")
        a, b = float(la), float(rb)
    return {
        Operator.LT: a < b,
        Operator.LE: a <= b,
        Operator.GT: a > b,
        Operator.GE: a >= b,
    }[op]


def condition_holds(condition: Condition, request: Request) -> bool:
    """True when the condition holds; ConditionError when it cannot be evaluated."""
    found, value = _lookup(request, condition.attribute)
    op = condition.operator
    if op is Operator.EXISTS:
        return found
    if not found:
        return False
    if op is Operator.EQ:
        return _equal(value, condition.value)
    if op is Operator.NE:
        return not _equal(value, condition.value)
    if op in (Operator.IN, Operator.NOT_IN):
        if not isinstance(condition.value, list | tuple):
            raise ConditionError(f"{op.value} needs a list, got {condition.value!r}")
        inside = any(_equal(value, v) for v in condition.value)
        return inside if op is Operator.IN else not inside
    if op is Operator.MATCHES:
        if not isinstance(value, str) or not isinstance(condition.value, str):
            raise ConditionError(f"matches needs strings, got {value!r}")
        return matches(condition.value, value)
    return _ordered(op, value, condition.value)


def policy_applies(policy: Policy, request: Request) -> bool:
    """True when the policy matches the request; ConditionError when it cannot tell."""
    if policy.min_risk_level is not None and request.risk_level < policy.min_risk_level:
        return False
    if not (
        matches(policy.principal or "*", request.actor)
        and matches(policy.action or "*", request.action)
        and matches(policy.resource or "*", request.resource)
    ):
        return False
    return all(condition_holds(c, request) for c in policy.conditions)


def _combine(effects: Iterable[Effect]) -> Effect | None:
    present = set(effects)
    for effect in _PRECEDENCE:
        if effect in present:
            return effect
    return None


def _describe(policy: Policy, mode: Mode) -> str:
    text = policy.description or "matched"
    return (
        f"policy {policy.policy_id} v{policy.version} ({policy.effect.value}, {mode.value}): {text}"
    )


def evaluate(
    policies: Sequence[Policy],
    request: Request,
    *,
    mode: Mode,
    defaults: Mapping[RiskLevel, Effect] = DEFAULT_EFFECTS,
    fail_closed_at: RiskLevel = RiskLevel.HIGH,
) -> Evaluation:
    """Evaluates every policy on the request and combines them.

    Args:
        policies: The policies in force (any order; evaluated by id).
        request: The request.
        mode: The global mode.
        defaults: Effect per risk level when no policy matches, in ENFORCE mode.
        fail_closed_at: From this risk level up, a policy that fails counts as FORBID.
    """
    found: list[Match] = []
    counted: list[tuple[Match, bool]] = []  # (match, enforced)
    for policy in sorted(policies, key=lambda p: p.policy_id):
        policy_mode = policy.mode or mode
        try:
            if not policy_applies(policy, request):
                continue
        except ConditionError as exc:
            closed = request.risk_level >= fail_closed_at
            reason = f"policy {policy.policy_id} v{policy.version} failed to evaluate ({exc}); " + (
                f"counted as forbid at {request.risk_level.label} risk (fail closed)"
                if closed
                else "ignored below the fail-closed risk level"
            )
            failed = Match(
                policy.policy_id,
                policy.version,
                Effect.FORBID if closed else policy.effect,
                policy_mode,
                reason,
                failed=True,
            )
            found.append(failed)
            if closed:
                counted.append((failed, policy_mode is Mode.ENFORCE))
            continue
        match = Match(
            policy.policy_id,
            policy.version,
            policy.effect,
            policy_mode,
            _describe(policy, policy_mode),
        )
        found.append(match)
        counted.append((match, policy_mode is Mode.ENFORCE))

    default_effect = defaults.get(request.risk_level, Effect.FORBID)
    default_reason = (
        f"no policy matched: default for {request.risk_level.label} risk is {default_effect.value}"
    )
    all_effect = _combine(m.effect for m, _ in counted)
    evaluated = _VERDICT_OF[all_effect or default_effect]
    enforced_effect = _combine(m.effect for m, enforced in counted if enforced)
    if enforced_effect is not None:
        verdict = _VERDICT_OF[enforced_effect]
    elif mode is Mode.ENFORCE:
        verdict = _VERDICT_OF[default_effect]
    else:
        verdict = Verdict.ALLOW

    ordered = sorted(counted, key=lambda item: _PRECEDENCE.index(item[0].effect))
    reasons = [m.reason for m, _ in ordered]
    if all_effect is None or (enforced_effect is None and mode is Mode.ENFORCE):
        reasons.append(default_reason)
    if verdict is not evaluated:
        reasons.append(f"log_only: enforcing would have given {evaluated.value}")
    return Evaluation(
        verdict=verdict,
        evaluated_verdict=evaluated,
        policy_ids=tuple(dict.fromkeys(m.policy_id for m, _ in ordered)),
        reasons=tuple(reasons),
        matches=tuple(found),
    )
