"""An upstream that holds a request for approval is answered 202 with how to retry it."""

from __future__ import annotations

from gateway.approvals import UPSTREAM_RETRY_HEADER, upstream_pending
from gateway.errors import HttpError


def _error(status: str, reason: str, metadata: dict[str, str]) -> HttpError:
    return HttpError(
        400,
        "governance: heal:restart_component on component:alpha waits for approval a1",
        status=status,
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "grace",
                "metadata": metadata,
            }
        ],
    )


def test_an_upstream_approval_becomes_a_202_naming_the_decision_to_send_back() -> None:
    pending = upstream_pending(
        _error(
            "FAILED_PRECONDITION", "APPROVAL_PENDING", {"approval_id": "a1", "decision_id": "d1"}
        )
    )
    assert pending is not None
    assert pending.http_status == 202
    body = pending.body()
    assert (body["approval_id"], body["retry_token"]) == ("a1", "d1")
    assert body["retry_header"] == UPSTREAM_RETRY_HEADER
    assert pending.headers == {"X-Approval-Id": "a1"}


def test_other_failed_preconditions_stay_errors() -> None:
    assert upstream_pending(_error("FAILED_PRECONDITION", "DECISION_REDEEMED", {})) is None
    assert upstream_pending(_error("FAILED_PRECONDITION", "APPROVAL_PENDING", {})) is None
    assert (
        upstream_pending(_error("PERMISSION_DENIED", "APPROVAL_PENDING", {"approval_id": "a"}))
        is None
    )
