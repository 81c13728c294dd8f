"""gRPC adapter of governance: proto in, core call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from grace.kernels.governance.v1 import governance_pb2 as pb
from grace.kernels.governance.v1 import governance_pb2_grpc
from services.common.auth import current_principal
from services.common.errors import InvalidArgument, PermissionDenied
from services.common.pagination import encoded_size
from services.common.timestamps import from_timestamp, to_timestamp
from services.common.validation import require_struct_size
from services.kernels.governance.governance import Governance
from services.kernels.governance.model import ApprovalStatus, Verdict
from services.kernels.governance.policy import validate_pattern
from services.kernels.governance.store import DecisionFilter
from services.kernels.governance.wire import (
    EFFECT_TO_PROTO,
    MODE_FROM_PROTO,
    MODE_TO_PROTO,
    RISK_FROM_PROTO,
    RISK_TO_PROTO,
    STATUS_FROM_PROTO,
    STATUS_TO_PROTO,
    VERDICT_FROM_PROTO,
    VERDICT_TO_PROTO,
    approval_to_proto,
    context_from_proto,
    decision_to_proto,
    policy_from_proto,
    policy_to_proto,
)

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
MAX_CONTEXT_BYTES = 64 * 1024


class GovernanceServicer(governance_pb2_grpc.GovernanceServiceServicer):
    """Serves `grace.kernels.governance.v1.GovernanceService` over a `Governance` core."""

    def __init__(self, governance: Governance) -> None:
        self._gov = governance

    async def Evaluate(self, request: pb.EvaluateRequest, context: Context) -> pb.EvaluateResponse:
        require_struct_size("context", request.context, max_bytes=MAX_CONTEXT_BYTES)
        decision, replayed = await self._gov.evaluate(
            request.actor,
            request.action,
            request.resource,
            context_from_proto(request.context),
            RISK_FROM_PROTO.get(request.risk_level),
            request.request_id,
        )
        return pb.EvaluateResponse(
            decision=decision_to_proto(decision),
            allowed=decision.verdict is Verdict.ALLOW,
            replayed=replayed,
        )

    async def CreatePolicy(
        self, request: pb.CreatePolicyRequest, context: Context
    ) -> pb.CreatePolicyResponse:
        policy = await self._gov.create_policy(policy_from_proto(request.policy))
        return pb.CreatePolicyResponse(policy=policy_to_proto(policy))

    async def GetPolicy(
        self, request: pb.GetPolicyRequest, context: Context
    ) -> pb.GetPolicyResponse:
        return pb.GetPolicyResponse(policy=policy_to_proto(self._gov.get_policy(request.policy_id)))

    async def ListPolicies(
        self, request: pb.ListPoliciesRequest, context: Context
    ) -> pb.ListPoliciesResponse:
        page, token = self._gov.list_policies(
            request.page_size,
            request.page_token,
            size_of=lambda policy: encoded_size(policy_to_proto(policy)),
        )
        return pb.ListPoliciesResponse(
            policies=[policy_to_proto(p) for p in page], next_page_token=token
        )

    async def UpdatePolicy(
        self, request: pb.UpdatePolicyRequest, context: Context
    ) -> pb.UpdatePolicyResponse:
        policy = await self._gov.update_policy(
            policy_from_proto(request.policy), request.expected_version
        )
        return pb.UpdatePolicyResponse(policy=policy_to_proto(policy))

    async def DeletePolicy(
        self, request: pb.DeletePolicyRequest, context: Context
    ) -> pb.DeletePolicyResponse:
        return pb.DeletePolicyResponse(version=await self._gov.delete_policy(request.policy_id))

    async def GetMode(self, request: pb.GetModeRequest, context: Context) -> pb.GetModeResponse:
        return pb.GetModeResponse(
            mode=MODE_TO_PROTO[self._gov.mode],
            defaults=[
                pb.RiskDefault(risk_level=RISK_TO_PROTO[level], effect=EFFECT_TO_PROTO[effect])
                for level, effect in sorted(self._gov.settings.defaults.items())
            ],
        )

    async def SetMode(self, request: pb.SetModeRequest, context: Context) -> pb.SetModeResponse:
        mode = MODE_FROM_PROTO.get(request.mode)
        if mode is None:
            raise InvalidArgument("mode", "must be MODE_LOG_ONLY or MODE_ENFORCE")
        return pb.SetModeResponse(mode=MODE_TO_PROTO[await self._gov.set_mode(mode)])

    async def GetDecision(
        self, request: pb.GetDecisionRequest, context: Context
    ) -> pb.GetDecisionResponse:
        decision = await self._gov.get_decision(request.decision_id)
        return pb.GetDecisionResponse(decision=decision_to_proto(decision))

    async def RedeemDecision(
        self, request: pb.RedeemDecisionRequest, context: Context
    ) -> pb.RedeemDecisionResponse:
        decision, redeemed_at = await self._gov.redeem(
            request.decision_id,
            request.actor,
            request.action,
            request.resource,
            request.request_sha256,
        )
        return pb.RedeemDecisionResponse(
            decision=decision_to_proto(decision), redeemed_at=to_timestamp(redeemed_at)
        )

    async def ListDecisions(
        self, request: pb.ListDecisionsRequest, context: Context
    ) -> pb.ListDecisionsResponse:
        where = DecisionFilter(
            actor=request.actor,
            action_like=validate_pattern("action", request.action) if request.action else "",
            verdict=VERDICT_FROM_PROTO.get(request.verdict),
            policy_id=request.policy_id,
            since=from_timestamp(request.since),
            until=from_timestamp(request.until),
        )
        page, token = await self._gov.list_decisions(
            where,
            request.page_size,
            request.page_token,
            size_of=lambda decision: encoded_size(decision_to_proto(decision)),
        )
        return pb.ListDecisionsResponse(
            decisions=[decision_to_proto(d) for d in page], next_page_token=token
        )

    async def ListApprovals(
        self, request: pb.ListApprovalsRequest, context: Context
    ) -> pb.ListApprovalsResponse:
        page, token = await self._gov.approvals.list(
            STATUS_FROM_PROTO.get(request.status),
            request.page_size,
            request.page_token,
            size_of=lambda approval: encoded_size(approval_to_proto(approval)),
        )
        return pb.ListApprovalsResponse(
            approvals=[approval_to_proto(a) for a in page], next_page_token=token
        )

    async def GetApproval(
        self, request: pb.GetApprovalRequest, context: Context
    ) -> pb.GetApprovalResponse:
        approval = await self._gov.approvals.get(request.approval_id)
        return pb.GetApprovalResponse(approval=approval_to_proto(approval))

    async def Approve(self, request: pb.ApproveRequest, context: Context) -> pb.ApproveResponse:
        approval = await self._gov.approvals.approve(
            request.approval_id, _approver(request.approver), request.reason
        )
        return pb.ApproveResponse(approval=approval_to_proto(approval))

    async def Reject(self, request: pb.RejectRequest, context: Context) -> pb.RejectResponse:
        approval = await self._gov.approvals.reject(
            request.approval_id, _approver(request.approver), request.reason
        )
        return pb.RejectResponse(approval=approval_to_proto(approval))

    async def WatchApproval(
        self, request: pb.WatchApprovalRequest, context: Context
    ) -> AsyncIterator[pb.WatchApprovalResponse]:
        async for approval in self._gov.approvals.watch(request.approval_id):
            yield pb.WatchApprovalResponse(approval=approval_to_proto(approval))

    async def GetGovernanceStats(
        self, request: pb.GetGovernanceStatsRequest, context: Context
    ) -> pb.GetGovernanceStatsResponse:
        stats = await self._gov.stats()
        return pb.GetGovernanceStatsResponse(
            mode=MODE_TO_PROTO[stats.mode],
            policies=stats.policies,
            decisions=sum(stats.decisions_by_verdict.values()),
            decisions_by_verdict={
                pb.Verdict.Name(VERDICT_TO_PROTO[Verdict(v)]): n
                for v, n in stats.decisions_by_verdict.items()
            },
            would_have_blocked=stats.would_have_blocked,
            approvals_by_status={
                pb.ApprovalStatus.Name(STATUS_TO_PROTO[ApprovalStatus(s)]): n
                for s, n in stats.approvals_by_status.items()
            },
            log_backlog=stats.log_backlog,
        )


def _approver(claimed: str) -> str:
    """Who settles an approval: the authenticated caller, never a name the caller chose,
    except that a Grace component (the tasks kernel settling an approval for the operator
    it authenticated) or an administrator may name the person it acts for.

    With security off (no principal) the request's `approver` is taken as given.
    """
    principal = current_principal()
    if principal is None:
        return claimed
    if claimed and (principal.is_component or principal.is_admin):
        return claimed
    if claimed and claimed != principal.name:
        raise PermissionDenied(
            f"approver={claimed!r}: must be empty or the authenticated caller ({principal.name})"
        )
    return principal.name
