"""Policy semantics: patterns, precedence, defaults, fail closed and modes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import InvalidArgument
from services.common.patterns import matches
from services.kernels.governance.model import (
    Condition,
    Effect,
    Mode,
    Operator,
    Policy,
    Request,
    RiskLevel,
    Verdict,
)
from services.kernels.governance.policy import (
    DEFAULT_EFFECTS,
    evaluate,
    policy_applies,
    validate_policy,
)

words = st.text(alphabet="abcxyz.:/_", min_size=1, max_size=12)
risks = st.sampled_from(list(RiskLevel))
effects = st.sampled_from(list(Effect))
modes = st.sampled_from(list(Mode))


def request(risk: RiskLevel = RiskLevel.MEDIUM, **context: object) -> Request:
    return Request("user:alice", "POST:/domains/workflows/create", "wf", risk, context)


def policy(pid: str, effect: Effect, **kwargs: object) -> Policy:
    return Policy(policy_id=pid, effect=effect, version=1, **kwargs)  # type: ignore[arg-type]


@st.composite
def matching_policies(draw: st.DrawFn) -> list[Policy]:
    """Policies that all match every request (pattern '*', no conditions)."""
    chosen = draw(st.lists(st.tuples(effects, st.none() | modes), min_size=1, max_size=6))
    return [policy(f"p{i}", e, mode=m) for i, (e, m) in enumerate(chosen)]


@given(matching_policies(), risks)
def test_forbid_overrides_every_other_effect_when_enforced(
    policies: list[Policy], risk: RiskLevel
) -> None:
    policies.append(policy("zz-forbid", Effect.FORBID, mode=Mode.ENFORCE))
    result = evaluate(policies, request(risk), mode=Mode.ENFORCE)
    assert result.verdict is Verdict.DENY
    assert result.evaluated_verdict is Verdict.DENY
    assert result.policy_ids[0] in {p.policy_id for p in policies if p.effect is Effect.FORBID}


@given(matching_policies(), risks)
def test_require_approval_overrides_permit_without_forbid(
    policies: list[Policy], risk: RiskLevel
) -> None:
    policies = [p for p in policies if p.effect is not Effect.FORBID]
    policies.append(policy("approve", Effect.REQUIRE_APPROVAL))
    result = evaluate(policies, request(risk), mode=Mode.ENFORCE)
    assert result.verdict is Verdict.PENDING_APPROVAL


@given(matching_policies(), risks)
def test_global_log_only_allows_unless_a_policy_enforces(
    policies: list[Policy], risk: RiskLevel
) -> None:
    result = evaluate(policies, request(risk), mode=Mode.LOG_ONLY)
    enforced = [p for p in policies if p.mode is Mode.ENFORCE]
    if not enforced:
        assert result.verdict is Verdict.ALLOW
    # evaluated_verdict never depends on modes
    all_enforced = evaluate(
        [Policy(p.policy_id, p.effect, version=1) for p in policies],
        request(risk),
        mode=Mode.ENFORCE,
    )
    assert result.evaluated_verdict is all_enforced.verdict


@given(risks, st.dictionaries(risks, effects))
def test_no_match_applies_the_default_of_the_risk_level_in_enforce_mode(
    risk: RiskLevel, overrides: dict[RiskLevel, Effect]
) -> None:
    defaults = {**DEFAULT_EFFECTS, **overrides}
    unrelated = policy("other", Effect.FORBID, action="DELETE:*")
    result = evaluate([unrelated], request(risk), mode=Mode.ENFORCE, defaults=defaults)
    expected = {
        Effect.PERMIT: Verdict.ALLOW,
        Effect.FORBID: Verdict.DENY,
        Effect.REQUIRE_APPROVAL: Verdict.PENDING_APPROVAL,
    }[defaults[risk]]
    assert result.verdict is expected
    assert result.policy_ids == ()
    assert "no policy matched" in result.reasons[-1]


def test_built_in_defaults_allow_low_and_deny_high_risk() -> None:
    assert evaluate([], request(RiskLevel.LOW), mode=Mode.ENFORCE).verdict is Verdict.ALLOW
    assert evaluate([], request(RiskLevel.HIGH), mode=Mode.ENFORCE).verdict is Verdict.DENY
    assert evaluate([], request(RiskLevel.HIGH), mode=Mode.LOG_ONLY).verdict is Verdict.ALLOW
    logged = evaluate([], request(RiskLevel.HIGH), mode=Mode.LOG_ONLY)
    assert logged.evaluated_verdict is Verdict.DENY
    assert any("would have given deny" in r for r in logged.reasons)


def test_a_permit_policy_lets_a_high_risk_request_through_the_default_deny() -> None:
    allow = policy("deploys", Effect.PERMIT, action="POST:/domains/workflows/*")
    assert evaluate([allow], request(RiskLevel.HIGH), mode=Mode.ENFORCE).verdict is Verdict.ALLOW


@given(words, words)
def test_policy_patterns_follow_the_seed_wildcard_semantics(pattern: str, action: str) -> None:
    p = policy("p", Effect.FORBID, action=pattern)
    req = Request("a", action, "r", RiskLevel.LOW)
    assert policy_applies(p, req) == matches(pattern, action)


def test_per_policy_enforce_blocks_while_the_rest_only_logs() -> None:
    critical = policy("no-deletes", Effect.FORBID, action="POST:*", mode=Mode.ENFORCE)
    noisy = policy("everything", Effect.FORBID)
    result = evaluate([critical, noisy], request(), mode=Mode.LOG_ONLY)
    assert result.verdict is Verdict.DENY
    only_logged = evaluate([noisy], request(), mode=Mode.LOG_ONLY)
    assert only_logged.verdict is Verdict.ALLOW
    assert only_logged.evaluated_verdict is Verdict.DENY


def test_a_log_only_policy_does_not_shape_the_verdict_in_enforce_mode() -> None:
    trial = policy("trial", Effect.FORBID, mode=Mode.LOG_ONLY)
    result = evaluate([trial], request(RiskLevel.LOW), mode=Mode.ENFORCE)
    assert result.verdict is Verdict.ALLOW
    assert result.evaluated_verdict is Verdict.DENY
    assert result.policy_ids == ("trial",)


def test_conditions_compare_numbers_strings_lists_and_risk_levels() -> None:
    big = policy(
        "big",
        Effect.REQUIRE_APPROVAL,
        conditions=(Condition("amount", Operator.GT, 1000), Condition("env", Operator.EQ, "prod")),
    )
    assert evaluate([big], request(amount=5000, env="prod"), mode=Mode.ENFORCE).verdict is (
        Verdict.PENDING_APPROVAL
    )
    assert evaluate([big], request(amount=10, env="prod"), mode=Mode.ENFORCE).verdict is (
        Verdict.ALLOW
    )
    risky = policy(
        "risky", Effect.FORBID, conditions=(Condition("risk_level", Operator.GE, "high"),)
    )
    assert policy_applies(risky, request(RiskLevel.CRITICAL))
    assert not policy_applies(risky, request(RiskLevel.MEDIUM))
    regions = policy(
        "regions", Effect.FORBID, conditions=(Condition("region", Operator.IN, ["eu", "us"]),)
    )
    assert policy_applies(regions, request(region="eu"))
    assert not policy_applies(regions, request(region="ap"))
    nested = policy("nested", Effect.FORBID, conditions=(Condition("target.tier", Operator.EQ, 1),))
    assert policy_applies(nested, request(target={"tier": 1.0}))


def test_a_missing_attribute_makes_a_condition_false_but_not_an_error() -> None:
    p = policy("p", Effect.FORBID, conditions=(Condition("amount", Operator.GT, 5),))
    result = evaluate([p], request(RiskLevel.HIGH), mode=Mode.ENFORCE)
    assert not any(m.failed for m in result.matches)
    exists = policy("e", Effect.FORBID, conditions=(Condition("amount", Operator.EXISTS),))
    assert not policy_applies(exists, request())
    assert policy_applies(exists, request(amount=1))


@given(st.sampled_from([RiskLevel.HIGH, RiskLevel.CRITICAL]), st.sampled_from(list(Effect)))
def test_a_policy_that_fails_to_evaluate_forbids_high_risk_requests(
    risk: RiskLevel, effect: Effect
) -> None:
    broken = policy("broken", effect, conditions=(Condition("amount", Operator.GT, 5),))
    allow = policy("allow", Effect.PERMIT)
    result = evaluate([broken, allow], request(risk, amount="lots"), mode=Mode.ENFORCE)
    assert result.verdict is Verdict.DENY
    assert [m.failed for m in result.matches if m.policy_id == "broken"] == [True]
    assert "fail closed" in result.reasons[0]


def test_a_policy_that_fails_to_evaluate_is_ignored_at_low_risk() -> None:
    broken = policy("broken", Effect.FORBID, conditions=(Condition("amount", Operator.GT, 5),))
    result = evaluate([broken], request(RiskLevel.LOW, amount="lots"), mode=Mode.ENFORCE)
    assert result.verdict is Verdict.ALLOW
    assert result.matches[0].failed


def test_min_risk_level_limits_a_policy_to_risky_requests() -> None:
    p = policy("p", Effect.REQUIRE_APPROVAL, min_risk_level=RiskLevel.HIGH)
    assert not policy_applies(p, request(RiskLevel.MEDIUM))
    assert policy_applies(p, request(RiskLevel.HIGH))


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (Policy("", Effect.PERMIT), "policy.policy_id"),
        (Policy("p", Effect.PERMIT, action="has space"), "policy.action"),
        (
            Policy("p", Effect.PERMIT, conditions=(Condition("x", Operator.IN, 3),)),
            "policy.conditions[0].value",
        ),
        (
            Policy("p", Effect.PERMIT, conditions=(Condition("1x", Operator.EQ, 3),)),
            "policy.conditions[0].attribute",
        ),
        (
            Policy("p", Effect.PERMIT, conditions=(Condition("x", Operator.GT, True),)),
            "policy.conditions[0].value",
        ),
    ],
)
def test_invalid_policies_are_rejected_naming_the_field(bad: Policy, field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_policy(bad)
    assert caught.value.field == field


def test_empty_patterns_mean_everything() -> None:
    p = validate_policy(Policy("p", Effect.FORBID, principal="", action="", resource=""))
    assert (p.principal, p.action, p.resource) == ("*", "*", "*")
