"""Conversions between the governance model and its protobuf messages."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import json_format, struct_pb2

from grace.kernels.governance.v1 import governance_pb2 as pb
from services.common.errors import InvalidArgument
from services.common.timestamps import to_timestamp
from services.kernels.domain import dict_to_struct, struct_to_dict
from services.kernels.governance.model import (
    Approval,
    ApprovalStatus,
    Condition,
    Decision,
    Effect,
    Match,
    Mode,
    Operator,
    Policy,
    RiskLevel,
    Verdict,
)

RISK_TO_PROTO = {
    RiskLevel.LOW: pb.RISK_LEVEL_LOW,
    RiskLevel.MEDIUM: pb.RISK_LEVEL_MEDIUM,
    RiskLevel.HIGH: pb.RISK_LEVEL_HIGH,
    RiskLevel.CRITICAL: pb.RISK_LEVEL_CRITICAL,
}
RISK_FROM_PROTO = {v: k for k, v in RISK_TO_PROTO.items()}
EFFECT_TO_PROTO = {
    Effect.PERMIT: pb.EFFECT_PERMIT,
    Effect.FORBID: pb.EFFECT_FORBID,
    Effect.REQUIRE_APPROVAL: pb.EFFECT_REQUIRE_APPROVAL,
}
EFFECT_FROM_PROTO = {v: k for k, v in EFFECT_TO_PROTO.items()}
MODE_TO_PROTO = {Mode.LOG_ONLY: pb.MODE_LOG_ONLY, Mode.ENFORCE: pb.MODE_ENFORCE}
MODE_FROM_PROTO = {v: k for k, v in MODE_TO_PROTO.items()}
VERDICT_TO_PROTO = {
    Verdict.ALLOW: pb.VERDICT_ALLOW,
    Verdict.DENY: pb.VERDICT_DENY,
    Verdict.PENDING_APPROVAL: pb.VERDICT_PENDING_APPROVAL,
}
VERDICT_FROM_PROTO = {v: k for k, v in VERDICT_TO_PROTO.items()}
OPERATOR_TO_PROTO = {
    op: pb.ConditionOperator.Value(f"CONDITION_OPERATOR_{op.name}") for op in Operator
}
OPERATOR_FROM_PROTO = {v: k for k, v in OPERATOR_TO_PROTO.items()}
STATUS_TO_PROTO = {
    status: pb.ApprovalStatus.Value(f"APPROVAL_STATUS_{status.name}") for status in ApprovalStatus
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}


def _value_to_python(value: struct_pb2.Value) -> Any:
    if value.WhichOneof("kind") is None:
        return None
    return json.loads(json_format.MessageToJson(value))


def _python_to_value(value: Any) -> struct_pb2.Value:
    return json_format.ParseDict(value, struct_pb2.Value())


def policy_from_proto(message: pb.Policy, field: str = "policy") -> Policy:
    """A policy from the wire (not yet validated)."""
    if message.effect not in EFFECT_FROM_PROTO:
        raise InvalidArgument(f"{field}.effect", "is required: PERMIT, FORBID or REQUIRE_APPROVAL")
    conditions = []
    for i, c in enumerate(message.conditions):
        if c.operator not in OPERATOR_FROM_PROTO:
            raise InvalidArgument(f"{field}.conditions[{i}].operator", "is required")
        conditions.append(
            Condition(c.attribute, OPERATOR_FROM_PROTO[c.operator], _value_to_python(c.value))
        )
    return Policy(
        policy_id=message.policy_id,
        effect=EFFECT_FROM_PROTO[message.effect],
        description=message.description,
        principal=message.principal or "*",
        action=message.action or "*",
        resource=message.resource or "*",
        conditions=tuple(conditions),
        min_risk_level=RISK_FROM_PROTO.get(message.min_risk_level),
        mode=MODE_FROM_PROTO.get(message.mode),
    )


def policy_to_proto(policy: Policy) -> pb.Policy:
    """The wire form of a policy."""
    return pb.Policy(
        policy_id=policy.policy_id,
        description=policy.description,
        principal=policy.principal,
        action=policy.action,
        resource=policy.resource,
        conditions=[
            pb.Condition(
                attribute=c.attribute,
                operator=OPERATOR_TO_PROTO[c.operator],
                value=_python_to_value(c.value),
            )
            for c in policy.conditions
        ],
        min_risk_level=(
            RISK_TO_PROTO[policy.min_risk_level]
            if policy.min_risk_level
            else pb.RISK_LEVEL_UNSPECIFIED
        ),
        effect=EFFECT_TO_PROTO[policy.effect],
        mode=MODE_TO_PROTO[policy.mode] if policy.mode else pb.MODE_UNSPECIFIED,
        version=policy.version,
        created_at=to_timestamp(policy.created_at),
        updated_at=to_timestamp(policy.updated_at),
    )


def _match_to_proto(match: Match) -> pb.PolicyMatch:
    return pb.PolicyMatch(
        policy_id=match.policy_id,
        version=match.version,
        effect=EFFECT_TO_PROTO[match.effect],
        mode=MODE_TO_PROTO[match.mode],
        reason=match.reason,
        failed=match.failed,
    )


def decision_to_proto(decision: Decision) -> pb.Decision:
    """The wire form of a decision."""
    request, evaluation = decision.request, decision.evaluation
    return pb.Decision(
        decision_id=decision.decision_id,
        actor=request.actor,
        action=request.action,
        resource=request.resource,
        context=dict_to_struct(request.context),
        risk_level=RISK_TO_PROTO[request.risk_level],
        verdict=VERDICT_TO_PROTO[evaluation.verdict],
        evaluated_verdict=VERDICT_TO_PROTO[evaluation.evaluated_verdict],
        mode=MODE_TO_PROTO[decision.mode],
        policy_ids=evaluation.policy_ids,
        reasons=evaluation.reasons,
        matches=[_match_to_proto(m) for m in evaluation.matches],
        approval_id=decision.approval_id,
        time=to_timestamp(decision.time),
        request_id=decision.request_id,
    )


def approval_to_proto(approval: Approval) -> pb.Approval:
    """The wire form of an approval request."""
    request = approval.request
    return pb.Approval(
        approval_id=approval.approval_id,
        decision_id=approval.decision_id,
        actor=request.actor,
        action=request.action,
        resource=request.resource,
        risk_level=RISK_TO_PROTO[request.risk_level],
        context=dict_to_struct(request.context),
        policy_ids=approval.policy_ids,
        reasons=approval.reasons,
        status=STATUS_TO_PROTO[approval.status],
        decided_by=approval.decided_by,
        decision_reason=approval.decision_reason,
        created_at=to_timestamp(approval.created_at),
        decided_at=to_timestamp(approval.decided_at),
        expires_at=to_timestamp(approval.expires_at),
    )


def context_from_proto(value: struct_pb2.Struct) -> dict[str, Any]:
    """A request context as plain Python."""
    return struct_to_dict(value)
