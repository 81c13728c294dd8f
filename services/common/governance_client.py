"""How any Grace component asks governance before it acts.

`GovernanceClient.check` evaluates a request with a deadline and answers a `GateDecision`.
When it gets no decision, the client decides locally, by its configured fallback mode, and
says so. Two cases are told apart:

- governance is unavailable (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED,
  RESOURCE_EXHAUSTED: down, too slow or overloaded; `source == "fallback"`):
  `log_only` (the default, as seed 004 rolls out) allows; `enforce` denies requests at or
  above `fail_closed_at` (default `high`) and allows the rest;
- governance answered, but not with a decision (any other status, such as the
  INVALID_ARGUMENT a caller can provoke with an oversized context, or a reply without a
  verdict; `source == "error"`): `log_only` allows; `enforce` denies everything above low
  risk. An error is never a reason to let a request through that a decision would stop.

Every local decision is recorded (a warning in the log, the bounded `fallback_records`
whose `kind` says "unavailable" or "error", and the `on_fallback` callback).

Callers that gate work take the `GovernanceGate` protocol, so a test passes any object with
a `check` method. Where each component asks (seed 004 phases 3 and 4):

- gateway: before forwarding a mutating request (`gateway_request`: POST/PUT/PATCH/DELETE,
  actor from `X-Actor`, action `METHOD:path`, health routes skipped); a DENY answers 403
  with the reasons, PENDING_APPROVAL 403 with the approval id;
- orchestrator: before each step, actor `workflow:<id>`, action `<domain>.<action>`, risk
  from the step;
- Guardian and the immune kernel: before healing, stopping, starting or restarting a
  component (by any RPC or route), action `heal:<operation>`, resource `component:<name>`,
  risk `HEAL_RISK[operation]` (see `services.guardian.consent`). A caller that already
  holds a decision for exactly that heal (the immune kernel) passes its id as
  `x-governance-decision` metadata; Guardian then `confirm`s it (a read, not a second
  decision).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from google.protobuf import struct_pb2
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from grace.kernels.governance.v1 import governance_pb2 as pb
from grace.kernels.governance.v1 import governance_pb2_grpc
from services.common.channels import channel

log = logging.getLogger(__name__)

RISK_LEVELS = ("low", "medium", "high", "critical")
_RISK_TO_PROTO = {
    "low": pb.RISK_LEVEL_LOW,
    "medium": pb.RISK_LEVEL_MEDIUM,
    "high": pb.RISK_LEVEL_HIGH,
    "critical": pb.RISK_LEVEL_CRITICAL,
}
_VERDICTS = {
    pb.VERDICT_ALLOW: "allow",
    pb.VERDICT_DENY: "deny",
    pb.VERDICT_PENDING_APPROVAL: "pending_approval",
}
_SETTLED = {
    pb.APPROVAL_STATUS_APPROVED: "approved",
    pb.APPROVAL_STATUS_REJECTED: "rejected",
    pb.APPROVAL_STATUS_EXPIRED: "expired",
}
# Risk declared for each operation on a component's running state (`heal:<operation>`), by
# Guardian and by the immune kernel alike: diagnosing changes nothing; a restart (or
# clearing a stale process Guardian itself started, then restarting) interrupts one
# component briefly, as starting a stopped one changes little; moving a component to another
# port changes how every peer reaches it, and stopping one leaves it down until started.
HEAL_RISK: Mapping[str, str] = {
    "diagnose_network": "low",
    "restart_component": "medium",
    "clear_port": "medium",
    "start_component": "medium",
    "rebind_port": "high",
    "stop_component": "high",
}
# Status codes that mean governance could not be reached in time; any other is an error.
UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
UNAVAILABLE = "unavailable"
ERROR = "error"
# Metadata carrying the id of a governance decision the caller already obtained.
DECISION_METADATA = "x-governance-decision"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HEALTH_PATHS = ("/health", "/metrics", "/favicon.ico", "/domains/system/health")


@dataclass(frozen=True)
class GateDecision:
    """Governance's answer as a caller needs it.

    Attributes:
        allowed: True when the caller may proceed.
        verdict: "allow", "deny" or "pending_approval".
        decision_id: Id of the recorded decision; empty for a local fallback decision.
        policy_ids: Policies that matched.
        reasons: Why, in words.
        approval_id: For "pending_approval": the request to settle or wait on.
        source: "governance"; "fallback" when governance could not be reached; "error"
            when it answered without a decision (see the module docstring).
        error_reason: For a refused redemption, governance's reason (`DECISION_REDEEMED`,
            `APPROVAL_PENDING`, `DECISION_MISMATCH`, ...) or the status code's name.
    """

    allowed: bool
    verdict: str
    decision_id: str = ""
    policy_ids: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()
    approval_id: str = ""
    source: str = "governance"
    error_reason: str = ""


@dataclass(frozen=True)
class FallbackRecord:
    """A request decided locally because governance gave no decision.

    `kind` is "unavailable" (governance could not be reached) or "error" (it answered with
    an error or without a verdict).
    """

    time: float
    actor: str
    action: str
    resource: str
    risk_level: str
    allowed: bool
    error: str
    context: Mapping[str, Any] = field(default_factory=dict)
    kind: str = UNAVAILABLE


@dataclass(frozen=True)
class GateRequest:
    """What to ask governance about an incoming HTTP request."""

    actor: str
    action: str
    resource: str
    context: Mapping[str, Any]


class GovernanceGate(Protocol):
    """Anything that can decide whether an action may proceed."""

    async def check(
        self,
        actor: str,
        action: str,
        resource: str = "",
        *,
        risk_level: str = "medium",
        context: Mapping[str, Any] | None = None,
        request_id: str = "",
    ) -> GateDecision:
        """Decides on one request."""


def error_info(error: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """The `ErrorInfo` reason and metadata a Grace server attached to a failed call, or
    ("", {}) if none."""
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return "", {}
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return str(info.reason), dict(info.metadata)
    return "", {}


class ApprovalGate(GovernanceGate, Protocol):
    """A gate that can also wait for an approval and redeem an approved decision."""

    async def wait_for_approval(self, approval_id: str, timeout_s: float) -> str:
        """Follows an approval until settled; "approved", "rejected", "expired", "pending"."""

    async def redeem(
        self, decision_id: str, actor: str, action: str, resource: str, request_sha256: str
    ) -> GateDecision:
        """Redeems a decision once for the request it was made for."""


def heal_risk(playbook: str) -> str:
    """The risk level of a healing playbook (an unknown one is "high")."""
    return HEAL_RISK.get(playbook, "high")


def gateway_request(method: str, path: str, headers: Mapping[str, str]) -> GateRequest | None:
    """The governance question for an HTTP request, or None when the gateway forwards it
    without asking (reads and health routes). Header names are matched case-insensitively."""
    method = method.upper()
    if method not in MUTATING_METHODS or path.rstrip("/") in HEALTH_PATHS:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    return GateRequest(
        actor=lowered.get("x-actor") or "anonymous",
        action=f"{method}:{path}",
        resource=path,
        context={"method": method, "path": path},
    )


class GovernanceClient:
    """Asks the governance kernel, with a deadline and a documented fallback.

    Args:
        target: `host:port` of governance.
        fallback_mode: "log_only" or "enforce": what to do when governance cannot answer.
        deadline_s: Longest wait for an answer.
        fail_closed_at: In enforce fallback, the lowest risk level denied.
        on_fallback: Called with each local fallback decision (record it durably there).
        history: How many fallback records to keep in memory.
    """

    def __init__(
        self,
        target: str,
        *,
        fallback_mode: str = "log_only",
        deadline_s: float = 2.0,
        fail_closed_at: str = "high",
        on_fallback: Callable[[FallbackRecord], None] | None = None,
        history: int = 1000,
    ) -> None:
        if fallback_mode not in ("log_only", "enforce"):
            raise ValueError(f"fallback_mode {fallback_mode!r}: expected log_only or enforce")
        if fail_closed_at not in RISK_LEVELS:
            raise ValueError(f"fail_closed_at {fail_closed_at!r}: expected one of {RISK_LEVELS}")
        self.target = target
        self.fallback_mode = fallback_mode
        self.deadline_s = deadline_s
        self.fail_closed_at = fail_closed_at
        self.on_fallback = on_fallback
        self.fallback_records: collections.deque[FallbackRecord] = collections.deque(maxlen=history)
        self._channel: grpc.aio.Channel | None = None
        self._stub_: governance_pb2_grpc.GovernanceServiceAsyncStub | None = None

    @property
    def _stub(self) -> governance_pb2_grpc.GovernanceServiceAsyncStub:
        # Opened on first use: a grpc.aio channel binds to the running loop, and the client
        # may be built before it runs.
        if self._stub_ is None:
            self._channel = channel(self.target)
            self._stub_ = governance_pb2_grpc.GovernanceServiceStub(self._channel)
        return self._stub_

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub_ = None

    async def check(
        self,
        actor: str,
        action: str,
        resource: str = "",
        *,
        risk_level: str = "medium",
        context: Mapping[str, Any] | None = None,
        request_id: str = "",
    ) -> GateDecision:
        """Asks governance; decides locally by the fallback mode when it cannot answer."""
        if risk_level not in _RISK_TO_PROTO:
            raise ValueError(f"risk_level {risk_level!r}: expected one of {RISK_LEVELS}")
        ctx = struct_pb2.Struct()
        ctx.update(dict(context or {}))
        try:
            response = await self._stub.Evaluate(
                pb.EvaluateRequest(
                    actor=actor,
                    action=action,
                    resource=resource,
                    context=ctx,
                    risk_level=_RISK_TO_PROTO[risk_level],
                    request_id=request_id,
                ),
                timeout=self.deadline_s,
            )
        except grpc.aio.AioRpcError as exc:
            return self._fallback(
                actor,
                action,
                resource,
                risk_level,
                context,
                f"{exc.code().name}: {exc.details()}",
                kind=UNAVAILABLE if exc.code() in UNAVAILABLE_CODES else ERROR,
            )
        decision = response.decision
        if decision.verdict not in _VERDICTS:
            return self._fallback(
                actor,
                action,
                resource,
                risk_level,
                context,
                "the answer carries no verdict",
                kind=ERROR,
            )
        return GateDecision(
            allowed=response.allowed,
            verdict=_VERDICTS.get(decision.verdict, "deny"),
            decision_id=decision.decision_id,
            policy_ids=tuple(decision.policy_ids),
            reasons=tuple(decision.reasons),
            approval_id=decision.approval_id,
        )

    async def confirm(
        self, decision_id: str, action: str, resource: str, *, max_age_s: float = 600.0
    ) -> GateDecision:
        """Confirms a decision the caller already holds instead of asking again: allowed
        when governance recorded it, less than `max_age_s` ago, for exactly `action` on
        `resource`, with verdict ALLOW (or PENDING_APPROVAL since approved). An unknown or
        non-matching decision is denied. When governance cannot answer, the fallback
        applies as for `check` (at risk `heal_risk` of the action's playbook for `heal:`
        actions, else medium)."""
        try:
            found = await self._stub.GetDecision(
                pb.GetDecisionRequest(decision_id=decision_id), timeout=self.deadline_s
            )
            decision = found.decision
            approved = False
            if decision.verdict == pb.VERDICT_PENDING_APPROVAL and decision.approval_id:
                approval = await self._stub.GetApproval(
                    pb.GetApprovalRequest(approval_id=decision.approval_id),
                    timeout=self.deadline_s,
                )
                approved = approval.approval.status == pb.APPROVAL_STATUS_APPROVED
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return GateDecision(
                    allowed=False,
                    verdict="deny",
                    decision_id=decision_id,
                    reasons=(f"governance decision {decision_id!r} is unknown",),
                )
            playbook = action.removeprefix("heal:")
            risk = heal_risk(playbook) if playbook != action else "medium"
            return self._fallback(
                "",
                action,
                resource,
                risk,
                {"decision_id": decision_id},
                f"{exc.code().name}: {exc.details()}",
                kind=UNAVAILABLE if exc.code() in UNAVAILABLE_CODES else ERROR,
            )
        age = time.time() - decision.time.ToSeconds() if decision.HasField("time") else 0.0
        problem = ""
        if (decision.action, decision.resource) != (action, resource):
            problem = f"it was made for {decision.action} on {decision.resource}"
        elif decision.verdict != pb.VERDICT_ALLOW and not approved:
            problem = f"its verdict is {_VERDICTS.get(decision.verdict, 'deny')}"
        elif age > max_age_s:
            problem = f"it is {age:.0f}s old (at most {max_age_s:.0f}s)"
        return GateDecision(
            allowed=not problem,
            verdict="deny" if problem else "allow",
            decision_id=decision.decision_id,
            policy_ids=tuple(decision.policy_ids),
            reasons=(
                (
                    f"governance decision {decision_id} does not allow {action} on {resource}: "
                    f"{problem}",
                )
                if problem
                else tuple(decision.reasons)
            ),
            approval_id=decision.approval_id,
        )

    async def redeem(
        self, decision_id: str, actor: str, action: str, resource: str, request_sha256: str
    ) -> GateDecision:
        """Redeems a decision once for the request it was made for (the gateway's retry of
        an approved request). Allowed only when governance redeemed it now; a decision that
        is pending, rejected, denied, made for another request or already redeemed is not.
        When governance cannot answer, nothing is redeemed and the request is refused: an
        approval cannot be proven spent without governance."""
        try:
            response = await self._stub.RedeemDecision(
                pb.RedeemDecisionRequest(
                    decision_id=decision_id,
                    actor=actor,
                    action=action,
                    resource=resource,
                    request_sha256=request_sha256,
                ),
                timeout=self.deadline_s,
            )
        except grpc.aio.AioRpcError as exc:
            reason, metadata = error_info(exc)
            return GateDecision(
                allowed=False,
                verdict="pending_approval" if reason == "APPROVAL_PENDING" else "deny",
                decision_id=decision_id,
                approval_id=metadata.get("approval_id", ""),
                reasons=(exc.details() or exc.code().name,),
                source="governance" if reason else "fallback",
                error_reason=reason or exc.code().name,
            )
        decision = response.decision
        return GateDecision(
            allowed=True,
            verdict="allow",
            decision_id=decision.decision_id,
            policy_ids=tuple(decision.policy_ids),
            reasons=tuple(decision.reasons),
            approval_id=decision.approval_id,
        )

    async def wait_for_approval(self, approval_id: str, timeout_s: float) -> str:
        """Follows an approval request until it is settled or `timeout_s` passes; returns
        "approved", "rejected", "expired", or "pending" on timeout. Raises
        grpc.aio.AioRpcError when governance cannot be reached."""
        call = self._stub.WatchApproval(
            pb.WatchApprovalRequest(approval_id=approval_id), timeout=timeout_s
        )
        try:
            async for message in call:
                settled = _SETTLED.get(message.approval.status)
                if settled:
                    return settled
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                return "pending"
            raise
        finally:
            call.cancel()
        return "pending"

    def _fallback(
        self,
        actor: str,
        action: str,
        resource: str,
        risk_level: str,
        context: Mapping[str, Any] | None,
        error: str,
        *,
        kind: str = UNAVAILABLE,
    ) -> GateDecision:
        # An error answer fails closed above low risk; unavailability at fail_closed_at.
        threshold = "medium" if kind == ERROR else self.fail_closed_at
        closed = self.fallback_mode == "enforce" and RISK_LEVELS.index(
            risk_level
        ) >= RISK_LEVELS.index(threshold)
        record = FallbackRecord(
            time=time.time(),
            actor=actor,
            action=action,
            resource=resource,
            risk_level=risk_level,
            allowed=not closed,
            error=error,
            context=dict(context or {}),
            kind=kind,
        )
        self.fallback_records.append(record)
        log.warning(
            "governance at %s gave no decision (%s: %s): %s %s on %r by %r (fallback %s)",
            self.target,
            kind,
            error,
            "denied" if closed else "allowed",
            action,
            resource,
            actor,
            self.fallback_mode,
        )
        if self.on_fallback is not None:
            self.on_fallback(record)
        what = "unavailable" if kind == UNAVAILABLE else "answered with an error"
        reason = f"governance {what} ({error}); fallback {self.fallback_mode}: " + (
            f"{risk_level} risk is denied (fail closed at {threshold})"
            if closed
            else "allowed and recorded locally"
        )
        return GateDecision(
            allowed=not closed,
            verdict="deny" if closed else "allow",
            reasons=(reason,),
            source="fallback" if kind == UNAVAILABLE else ERROR,
        )


async def check_with_approval(
    gate: GovernanceClient,
    actor: str,
    action: str,
    resource: str = "",
    *,
    risk_level: str = "medium",
    context: Mapping[str, Any] | None = None,
    approval_wait_s: float = 0.0,
) -> GateDecision:
    """`check`, then, for PENDING_APPROVAL, wait up to `approval_wait_s` for a person:
    allowed when approved; still pending or settled otherwise is not allowed."""
    decision = await gate.check(actor, action, resource, risk_level=risk_level, context=context)
    if decision.verdict != "pending_approval" or approval_wait_s <= 0:
        return decision
    try:
        outcome = await gate.wait_for_approval(decision.approval_id, approval_wait_s)
    except (TimeoutError, grpc.aio.AioRpcError) as exc:
        outcome = f"unknown ({exc})"
    return GateDecision(
        allowed=outcome == "approved",
        verdict="allow" if outcome == "approved" else "pending_approval",
        decision_id=decision.decision_id,
        policy_ids=decision.policy_ids,
        reasons=(*decision.reasons, f"approval {decision.approval_id}: {outcome}"),
        approval_id=decision.approval_id,
    )
