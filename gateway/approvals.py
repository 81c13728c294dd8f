"""The gateway's 202 answer for a request that waits for a person's approval.

Two places hold a request for approval: the gateway's own governance gate (the request
as a whole, `METHOD:path`), and an upstream that asks governance itself and answers
FAILED_PRECONDITION with reason `APPROVAL_PENDING` (Guardian before a heal). Both are
answered `202 Accepted` with the same body: the approval to settle, the decision it
settles, and how to send the request again once it is approved (the retry token and the
header that carries it: `X-Retry-Token` for the gateway's gate, `X-Governance-Decision` for
an upstream, which redeems the decision once itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.errors import HttpError

GATEWAY_RETRY_HEADER = "X-Retry-Token"
UPSTREAM_RETRY_HEADER = "X-Governance-Decision"
APPROVAL_PENDING = "APPROVAL_PENDING"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


class PendingApproval(HttpError):
    """202: the request waits for an approval; send it again with the token once approved.

    Args:
        what: The request held, in words (`POST:/domains/register by user:alice`).
        approval_id: The approval request to settle.
        decision_id: The decision it settles; the retry token.
        retry_header: The header that carries the token on the retry.
        reasons: Why governance holds it.
        policy_ids: The policies that asked for approval.
    """

    def __init__(
        self,
        what: str,
        approval_id: str,
        decision_id: str,
        retry_header: str,
        reasons: Sequence[str] = (),
        policy_ids: Sequence[str] = (),
    ) -> None:
        why = "; ".join(reasons) or "no reason given"
        super().__init__(
            202,
            f"governance: {what} waits for approval {approval_id}: {why}; approve it, then "
            f"send the same request again with the header {retry_header}: {decision_id}",
            status="PENDING_APPROVAL",
            headers={"X-Approval-Id": approval_id},
        )
        self.approval_id = approval_id
        self.decision_id = decision_id
        self.retry_header = retry_header
        self.reasons = list(reasons)
        self.policy_ids = list(policy_ids)
        self.what = what

    def body(self) -> dict[str, Any]:
        return {
            "status": "PENDING_APPROVAL",
            "message": self.message,
            "approval_id": self.approval_id,
            "decision_id": self.decision_id,
            "retry_token": self.decision_id,
            "retry_header": self.retry_header,
            "request": self.what,
            "policy_ids": self.policy_ids,
            "reasons": self.reasons,
        }


def upstream_pending(error: HttpError) -> PendingApproval | None:
    """The 202 for an upstream's FAILED_PRECONDITION `APPROVAL_PENDING` that names its
    approval and decision, or None for any other error."""
    if error.status != "FAILED_PRECONDITION":
        return None
    for detail in error.details:
        if detail.get("@type") != _ERROR_INFO or detail.get("reason") != APPROVAL_PENDING:
            continue
        metadata = detail.get("metadata") or {}
        approval_id = str(metadata.get("approval_id", ""))
        decision_id = str(metadata.get("decision_id", ""))
        if approval_id and decision_id:
            return PendingApproval(
                "the request", approval_id, decision_id, UPSTREAM_RETRY_HEADER, [error.message]
            )
    return None
