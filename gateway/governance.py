"""The governance forward gate: the gateway asks governance before forwarding a mutating
request (seed 004, phase 3).

The actor is the `X-Actor` header ("anonymous" without one), the action `METHOD:path`
(`POST:/domains/workflows/create`), the resource the path, where the path is the canonical,
percent-decoded one (`gateway.paths`: `/domains/invoke/%64ata_domain/ingest` is asked about
as `/domains/invoke/data_domain/ingest`, and paths with no single meaning never get here),
the risk level the one set for the gateway (`medium` by default). Health routes are never
asked about. A DENY answers 403 PERMISSION_DENIED with the policy's reasons. When
governance cannot answer, the client's fallback applies
(`services.common.governance_client`): log_only lets the request through and records it
locally, enforce refuses high-risk requests; an error answer from governance is a deny
above low risk in enforce mode.

Approvals. A request held by a REQUIRE_APPROVAL policy is answered `202 Accepted` with the
approval id and a retry token (`PENDING_APPROVAL`): once a person approves, the client sends
the same request again with the header `X-Retry-Token: <token>`, and governance redeems the
approved decision for it, once. The decision is bound to the request it was made for: the
actor, `METHOD:path` and the SHA-256 of the built gRPC request (`request_sha256` in the
decision's context), so a token cannot carry another body, and a second retry with the same
token is refused (409 `DECISION_REDEEMED`); a new request asks anew. A client that prefers
to wait sends `Prefer: wait=<seconds>` (RFC 7240, at most 300): the gateway follows the
approval and forwards the request as soon as it is approved (redeeming it the same way), or
answers 403 when it is rejected or expires, or 202 when the wait ends first. The decision is
redeemed only once the request can be sent (its upstream connected): an upstream that is
down answers 503 and leaves the token good for the next retry.

Settings (read from the gateway's environment): `GRACE_GATEWAY_GOVERNANCE` (on | off,
default on), `GRACE_GATEWAY_GOVERNANCE_FALLBACK` (log_only | enforce, default log_only),
`GRACE_GATEWAY_GOVERNANCE_RISK` (low | medium | high | critical, default medium),
`GRACE_GATEWAY_GOVERNANCE_DEADLINE_S` (2), `GRACE_GOVERNANCE_ADDR`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

import grpc

from gateway.app import ForwardGate, ForwardRequest
from gateway.approvals import GATEWAY_RETRY_HEADER, PendingApproval
from gateway.errors import HttpError
from services.common.config import EnvReader, peer_address
from services.common.governance_client import (
    RISK_LEVELS,
    ApprovalGate,
    GateDecision,
    GateRequest,
    GovernanceClient,
    gateway_request,
)

RETRY_TOKEN_HEADER = "x-retry-token"
PREFER_HEADER = "prefer"
MAX_APPROVAL_WAIT_S = 300.0
MAX_TOKEN_LENGTH = 64
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([0-9]{1,6}(?:\.[0-9]+)?)", re.IGNORECASE)


def request_digest(request: ForwardRequest) -> str:
    """SHA-256 of what the request asks for: method, path and the built gRPC request
    (deterministic serialization), so a retry with another body has another digest."""
    hasher = hashlib.sha256()
    hasher.update(f"{request.route.http_method}\n{request.path}\n".encode())
    hasher.update(request.message.SerializeToString(deterministic=True))
    return hasher.hexdigest()


def preferred_wait_s(headers: Mapping[str, str]) -> float:
    """Seconds the client prefers to wait for an approval (`Prefer: wait=N`), capped."""
    match = _PREFER_WAIT.search(headers.get(PREFER_HEADER, ""))
    return min(float(match.group(1)), MAX_APPROVAL_WAIT_S) if match else 0.0


def _pending(question: GateRequest, decision: GateDecision) -> PendingApproval:
    return PendingApproval(
        f"{question.action} by {question.actor}",
        decision.approval_id,
        decision.decision_id,
        GATEWAY_RETRY_HEADER,
        decision.reasons,
        decision.policy_ids,
    )


def _refusal(http_status: int, message: str, reason: str, decision: GateDecision) -> HttpError:
    return HttpError(
        http_status,
        message,
        details=[
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "grace",
                "metadata": {
                    "decision_id": decision.decision_id,
                    "approval_id": decision.approval_id,
                    "policy_ids": ",".join(decision.policy_ids),
                },
            }
        ],
    )


# How a refused redemption is answered: HTTP status by governance's reason.
_REDEEM_STATUS = {"DECISION_REDEEMED": 409, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 503}


class GovernanceForwardGate:
    """A `ForwardGate` that asks governance.

    Args:
        gate: Governance (a `GovernanceClient` in production).
        risk_level: Risk level declared for every forwarded mutating request.
    """

    def __init__(self, gate: ApprovalGate, risk_level: str = "medium") -> None:
        self.gate = gate
        self.risk_level = risk_level

    async def check(self, request: ForwardRequest) -> None:
        path = request.path or request.route.template.text
        question = gateway_request(request.route.http_method, path, dict(request.metadata))
        if question is None:
            return
        digest = request_digest(request)
        token = request.headers.get(RETRY_TOKEN_HEADER, "").strip()
        if token:
            await self._redeem(request, question, token, digest)
            return
        decision = await self.gate.check(
            question.actor,
            question.action,
            question.resource,
            risk_level=self.risk_level,
            context={
                **question.context,
                "grpc_method": request.route.grpc_path,
                "request_sha256": digest,
            },
        )
        if decision.allowed:
            return
        if decision.verdict != "pending_approval" or not decision.approval_id:
            reasons = "; ".join(decision.reasons) or "no reason given"
            raise _refusal(
                403,
                f"governance denied {question.action} by {question.actor}: {reasons}",
                "GOVERNANCE_DENIED",
                decision,
            )
        wait_s = preferred_wait_s(request.headers)
        if wait_s > 0:
            try:
                settled = await self.gate.wait_for_approval(decision.approval_id, wait_s)
            except grpc.aio.AioRpcError as exc:
                raise HttpError(
                    503,
                    f"governance cannot be followed for approval {decision.approval_id}: "
                    f"{exc.code().name}; send the request again with the header "
                    f"{GATEWAY_RETRY_HEADER}: {decision.decision_id} once it is approved",
                ) from None
            if settled == "approved":
                await self._redeem(request, question, decision.decision_id, digest)
                return
            if settled in ("rejected", "expired"):
                raise _refusal(
                    403,
                    f"governance: approval {decision.approval_id} of {question.action} "
                    f"was {settled}",
                    f"APPROVAL_{settled.upper()}",
                    decision,
                )
        raise _pending(question, decision)

    async def _redeem(
        self, request: ForwardRequest, question: GateRequest, token: str, digest: str
    ) -> None:
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise HttpError(400, "X-Retry-Token: is not a token the gateway issued")
        # A decision redeems once: spend it only on a request that can be sent now.
        await request.reachable()
        redeemed = await self.gate.redeem(
            token, question.actor, question.action, question.resource, digest
        )
        if redeemed.allowed:
            return
        if redeemed.verdict == "pending_approval":
            raise _pending(question, redeemed)
        raise _refusal(
            _REDEEM_STATUS.get(redeemed.error_reason, 403),
            f"governance: X-Retry-Token {token} cannot be redeemed for {question.action} by "
            f"{question.actor}: " + "; ".join(redeemed.reasons),
            redeemed.error_reason or "GOVERNANCE_DENIED",
            redeemed,
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
