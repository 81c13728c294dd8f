"""governance_domain: seed 001's Governance Domain (port 8203), over the governance kernel.

The seeds' workflows end with a governance step: `governance_domain.verify` ("Governance
verifies safety") and `governance_domain.verify_compliance`. This domain asks the
governance kernel (`GRACE_GOVERNANCE_ADDR`) about what the earlier steps produced, so the
policies an operator wrote decide, and every answer is a recorded decision.

Actions:
- `verify` {"action"?, "resource"?, "risk_level"?, and whatever the earlier steps passed
  along} -> {"verdict", "allowed", "decision_id", "policy_ids", "reasons", "subject"}: asks
  governance about `content.verify` (or the given action) on the subject (the document,
  contribution or workflow the input names), actor `governance_domain`, risk `low` unless
  given. A DENY fails the step (PERMISSION_DENIED), so the workflow rolls back; a request
  held for approval fails with UNAVAILABLE naming the approval, and the orchestrator's
  retries ask again under the same request id until a person decides.
- `verify_compliance`: the same about `compliance.verify`.

Events published: `governance.content.verified` (signed by this domain, like everything it
publishes), with the decision id.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from services.common.config import peer_address
from services.common.governance_client import RISK_LEVELS, GovernanceClient
from services.sdk import Context, Domain, InvalidArgument, PermissionDenied, Unavailable, field

ACTOR = "governance_domain"
# Input fields that name what is being verified, most specific first.
SUBJECT_FIELDS = ("contribution_id", "document_id", "execution_id")

domain = Domain(
    "governance_domain",
    capabilities=["governance", "compliance", "verification_of_content"],
    version="1.0.0",
    description="Verifies results against governance policies (seed 001's Governance Domain)",
    port=8203,
)


@functools.cache
def _governance() -> GovernanceClient:
    """One client (one channel) for the life of the process, opened on first use."""
    return GovernanceClient(
        peer_address(os.environ, "governance"), fallback_mode="enforce", deadline_s=5.0
    )


def _subject(ctx: Context, data: dict[str, Any]) -> str:
    for name in SUBJECT_FIELDS:
        value = data.get(name)
        if isinstance(value, str) and value:
            return f"{name.removesuffix('_id')}:{value}"
    return f"workflow:{ctx.workflow_id}" if ctx.workflow_id else "request"


async def _verify(ctx: Context, data: dict[str, Any], default_action: str) -> dict[str, Any]:
    action = field(data, "action", str, default_action) or default_action
    risk = field(data, "risk_level", str, "low").lower()
    if risk not in RISK_LEVELS:
        raise InvalidArgument("input.risk_level", f"must be one of {', '.join(RISK_LEVELS)}")
    subject = field(data, "resource", str, "") or _subject(ctx, data)
    context: dict[str, Any] = {"step_id": ctx.step_id, "workflow_id": ctx.workflow_id}
    sentiment = data.get("sentiment")
    if isinstance(sentiment, dict) and isinstance(sentiment.get("label"), str):
        context["sentiment"] = sentiment["label"]
    decision = await _governance().check(
        ACTOR,
        action,
        subject,
        risk_level=risk,
        context=context,
        request_id=(ctx.idempotency_key or "")[:128],
    )
    if decision.verdict == "pending_approval":
        raise Unavailable(f"{action} on {subject} waits for approval {decision.approval_id}")
    if not decision.allowed:
        raise PermissionDenied(
            f"governance denied {action} on {subject}: " + "; ".join(decision.reasons)
        )
    result = {
        "verdict": decision.verdict,
        "allowed": decision.allowed,
        "decision_id": decision.decision_id,
        "policy_ids": list(decision.policy_ids),
        "reasons": list(decision.reasons),
        "subject": subject,
        "action": action,
        "source": decision.source,
    }
    await ctx.publish(
        "governance.content.verified",
        {"subject": subject, "action": action, "decision_id": decision.decision_id},
        subject=subject,
    )
    return result


@domain.action("verify", description="Asks governance whether the earlier steps' result is safe")
async def verify(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    return await _verify(ctx, data, "content.verify")


@domain.action(
    "verify_compliance", description="Asks governance whether the earlier steps' result complies"
)
async def verify_compliance(ctx: Context, data: dict[str, Any]) -> dict[str, Any]:
    return await _verify(ctx, data, "compliance.verify")


if __name__ == "__main__":
    raise SystemExit(domain.run())
