"""The governance forward gate: the gateway asks governance before forwarding a mutating
request (seed 004, phase 3).

The actor is the `X-Actor` header ("anonymous" without one), the action `METHOD:path`
(`POST:/domains/workflows/create`), the resource the path, where the path is the canonical,
percent-decoded one (`gateway.paths`: `/domains/invoke/%64ata_domain/ingest` is asked about
as `/domains/invoke/data_domain/ingest`, and paths with no single meaning never get here),
the risk level the one set for the gateway (`medium` by default). Health routes are never
asked about. A DENY answers 403 PERMISSION_DENIED with the policy's reasons;
PENDING_APPROVAL answers 403 too, naming the approval request to settle (then retry). When
governance cannot answer, the client's fallback applies
(`services.common.governance_client`): log_only lets the request through and records it
locally, enforce refuses high-risk requests; an error answer from governance is a deny
above low risk in enforce mode.

Settings (read from the gateway's environment): `GRACE_GATEWAY_GOVERNANCE` (on | off,
default on), `GRACE_GATEWAY_GOVERNANCE_FALLBACK` (log_only | enforce, default log_only),
`GRACE_GATEWAY_GOVERNANCE_RISK` (low | medium | high | critical, default medium),
`GRACE_GATEWAY_GOVERNANCE_DEADLINE_S` (2), `GRACE_GOVERNANCE_ADDR`.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.app import ForwardGate, ForwardRequest
from gateway.errors import HttpError
from services.common.config import EnvReader, peer_address
from services.common.governance_client import (
    RISK_LEVELS,
    GovernanceClient,
    GovernanceGate,
    gateway_request,
)


class GovernanceForwardGate:
    """A `ForwardGate` that asks governance.

    Args:
        gate: Governance (a `GovernanceClient` in production).
        risk_level: Risk level declared for every forwarded mutating request.
    """

    def __init__(self, gate: GovernanceGate, risk_level: str = "medium") -> None:
        self.gate = gate
        self.risk_level = risk_level

    async def check(self, request: ForwardRequest) -> None:
        path = request.path or request.route.template.text
        question = gateway_request(request.route.http_method, path, dict(request.metadata))
        if question is None:
            return
        decision = await self.gate.check(
            question.actor,
            question.action,
            question.resource,
            risk_level=self.risk_level,
            context={**question.context, "grpc_method": request.route.grpc_path},
        )
        if decision.allowed:
            return
        reasons = "; ".join(decision.reasons) or "no reason given"
        if decision.verdict == "pending_approval":
            message = (
                f"governance: {question.action} by {question.actor} waits for approval "
                f"{decision.approval_id}: {reasons}"
            )
        else:
            message = f"governance denied {question.action} by {question.actor}: {reasons}"
        raise HttpError(
            403,
            message,
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "GOVERNANCE_DENIED"
                    if decision.verdict != "pending_approval"
                    else "APPROVAL_PENDING",
                    "domain": "grace",
                    "metadata": {
                        "decision_id": decision.decision_id,
                        "approval_id": decision.approval_id,
                        "policy_ids": ",".join(decision.policy_ids),
                    },
                }
            ],
        )


def governance_gate(env: Mapping[str, str]) -> ForwardGate | None:
    """The gate the gateway's environment asks for, or None when governance is off."""
    reader = EnvReader(env)
    if reader.choice("GRACE_GATEWAY_GOVERNANCE", "on", ["on", "off"]) == "off":
        return None
    client = GovernanceClient(
        peer_address(env, "governance"),
        fallback_mode=reader.choice(
            "GRACE_GATEWAY_GOVERNANCE_FALLBACK", "log_only", ["log_only", "enforce"]
        ),
        deadline_s=reader.number(
            "GRACE_GATEWAY_GOVERNANCE_DEADLINE_S", 2.0, minimum=0.05, maximum=60
        ),
    )
    return GovernanceForwardGate(
        client, reader.choice("GRACE_GATEWAY_GOVERNANCE_RISK", "medium", list(RISK_LEVELS))
    )
