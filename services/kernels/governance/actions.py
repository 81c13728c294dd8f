"""Governance as a domain: the `verify` action workflows call as a step.

Input (every field optional): `actor`, `action`, `resource`, `risk_level` ("low" ...
"critical"), `context` (object), `approval_wait_s` (how long to wait for an approval,
default 0, at most 300). Without an actor the step is evaluated for "workflow", without an
action as "workflow.verify".

Output: `verdict` ("allow"), `allowed`, `decision_id`, `policy_ids`, `reasons`,
`approval_id`. A DENY (or a rejected or expired approval) fails the step with
PERMISSION_DENIED carrying the reasons, so the workflow rolls back with the denial in its
record. A request still waiting for approval fails with UNAVAILABLE, which the
orchestrator retries: the step's idempotency key is the evaluation's request id, so a retry
finds the same decision and checks the approval again instead of asking anew.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from services.common.errors import InvalidArgument, PermissionDenied, Unavailable
from services.kernels.domain import KernelAction
from services.kernels.governance.governance import Governance
from services.kernels.governance.model import ApprovalStatus, Decision, RiskLevel, Verdict

MAX_APPROVAL_WAIT_S = 300.0


def _risk(value: Any) -> RiskLevel | None:
    if value in (None, ""):
        return None
    text = str(value).lower().removeprefix("risk_level_")
    try:
        return RiskLevel.parse(text)
    except ValueError:
        raise InvalidArgument("input.risk_level", "must be low, medium, high or critical") from None


def _output(decision: Decision, verdict: Verdict) -> dict[str, Any]:
    return {
        "verdict": verdict.value,
        "allowed": verdict is Verdict.ALLOW,
        "decision_id": decision.decision_id,
        "policy_ids": list(decision.evaluation.policy_ids),
        "reasons": list(decision.evaluation.reasons),
        "approval_id": decision.approval_id,
    }


def _denied(decision: Decision, why: str) -> PermissionDenied:
    reasons = "; ".join(decision.evaluation.reasons)
    return PermissionDenied(
        f"governance {why} {decision.request.action!r} by {decision.request.actor!r}: {reasons}",
        reason="GOVERNANCE_DENIED",
        metadata={"decision_id": decision.decision_id, "approval_id": decision.approval_id},
    )


def verify_action(governance: Governance) -> KernelAction:
    """The `verify` action over a governance core."""

    async def verify(data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        context = data.get("context") or {}
        if not isinstance(context, dict):
            raise InvalidArgument("input.context", "must be an object")
        wait = data.get("approval_wait_s") or 0
        if not isinstance(wait, int | float) or not 0 <= wait <= MAX_APPROVAL_WAIT_S:
            raise InvalidArgument("input.approval_wait_s", f"must be 0-{MAX_APPROVAL_WAIT_S:g}")
        decision, _ = await governance.evaluate(
            actor=str(data.get("actor") or "workflow"),
            action=str(data.get("action") or "workflow.verify"),
            resource=str(data.get("resource") or ""),
            context={**context, "idempotency_key": idempotency_key},
            risk_level=_risk(data.get("risk_level")),
            request_id=idempotency_key[:128],
        )
        if decision.verdict is Verdict.ALLOW:
            return _output(decision, Verdict.ALLOW)
        if decision.verdict is Verdict.DENY:
            raise _denied(decision, "denied")
        approval = await governance.approvals.get(decision.approval_id)
        if not approval.status.settled and wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(float(wait)):
                    async for approval in governance.approvals.watch(decision.approval_id):
                        if approval.status.settled:
                            break
        if approval.status is ApprovalStatus.APPROVED:
            return _output(decision, Verdict.ALLOW)
        if approval.status.settled:
            raise _denied(decision, f"approval {approval.status.value} for")
        raise Unavailable(
            f"approval {decision.approval_id} is pending; retry to check it again",
            reason="APPROVAL_PENDING",
            metadata={"approval_id": decision.approval_id},
        )

    return KernelAction(verify, "Evaluates a request against governance policies")


def actions(governance: Governance) -> dict[str, KernelAction]:
    """Every action governance offers: `verify` and its seed alias `verify_compliance`."""
    verify = verify_action(governance)
    return {
        "verify": verify,
        "verify_compliance": KernelAction(verify.handler, "Alias of verify (seed 001)"),
    }
