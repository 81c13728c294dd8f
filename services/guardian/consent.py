"""Guardian asks governance before it heals, stops, starts or restarts (seed 004, phase 4).

Every request that changes a component's running state, whichever RPC or route carries it,
is one governed action named `heal:<operation>` on resource `component:<name>`:

| RPC (REST route)                                            | action                    |
|-------------------------------------------------------------|---------------------------|
| `Heal` (`POST /network-healer/heal`), playbook P            | `heal:P`                  |
| `RestartComponent` (`POST /guardian/components/X/restart`)  | `heal:restart_component`  |
| `StopComponent` (`POST /guardian/components/X/stop`)        | `heal:stop_component`     |
| `StartComponent` (`POST /guardian/components/X/start`)      | `heal:start_component`    |

So a restart is the same action whether it comes as the `restart_component` playbook or
as `RestartComponent`, and one `heal:*` FORBID freezes them all. Guardian asks itself, so a
client calling its gRPC port directly is governed as much as one going through the gateway.
The actor is the caller's `x-actor` metadata ("operator" without one), the risk
`HEAL_RISK[operation]` (the definition the immune kernel uses too). A caller that already
holds a decision for this very operation sends its id as `x-governance-decision`; Guardian
then confirms it (governance recorded it, for this action and resource, allowed, recent)
instead of asking a second time. A DENY is PERMISSION_DENIED with the reasons, a
PENDING_APPROVAL is FAILED_PRECONDITION naming the approval to settle; both are logged and
recorded as a `healing.denied` decision. When governance cannot answer, the client's
fallback mode decides (Guardian's default: log_only, allow and record locally).

The supervisor's own restarts after a crash or failed probes (the backoff loop) never ask,
so liveness never depends on governance: they keep the system alive and were allowed
once, when the topology was written.
"""

from __future__ import annotations

from typing import Protocol

from services.common.errors import FailedPrecondition, PermissionDenied
from services.common.governance_client import GateDecision, GovernanceGate, heal_risk
from services.guardian.journal import Journal

DEFAULT_ACTOR = "operator"


class HealGate(GovernanceGate, Protocol):
    """Governance as Guardian needs it: ask, or confirm a decision the caller holds."""

    async def confirm(
        self, decision_id: str, action: str, resource: str, *, max_age_s: float = 600.0
    ) -> GateDecision:
        """Whether an existing decision allows exactly this action on this resource."""


class HealConsent:
    """Obtains governance's consent for one heal, or refuses it.

    Args:
        gate: Governance (a `GovernanceClient` in production).
        journal: Where refusals are logged and recorded.
    """

    def __init__(self, gate: HealGate, journal: Journal) -> None:
        self.gate = gate
        self.journal = journal

    async def require(
        self, component: str, playbook: str, *, actor: str = "", decision_id: str = ""
    ) -> GateDecision:
        """Returns the allowing decision for operation `playbook` (a playbook, or one of
        `stop_component` and `start_component`) on `component`.

        Raises:
            PermissionDenied: Governance denied the heal (or the decision id given does not
                allow it).
            FailedPrecondition: The heal waits for an approval (named in the message).
        """
        actor = actor or DEFAULT_ACTOR
        action = f"heal:{playbook}"
        resource = f"component:{component}"
        if decision_id:
            decision = await self.gate.confirm(decision_id, action, resource)
        else:
            decision = await self.gate.check(
                actor,
                action,
                resource,
                risk_level=heal_risk(playbook),
                context={"component": component, "playbook": playbook, "asked_by": "guardian"},
            )
        if decision.allowed:
            return decision
        reasons = "; ".join(decision.reasons) or "no reason given"
        await self.journal.decide(
            "healing.denied",
            component,
            playbook=playbook,
            actor=actor,
            verdict=decision.verdict,
            decision_id=decision.decision_id,
            approval_id=decision.approval_id,
            reasons=reasons,
        )
        if decision.verdict == "pending_approval":
            raise FailedPrecondition(
                f"governance: {action} on {resource} by {actor} waits for approval "
                f"{decision.approval_id}: {reasons}",
                reason="APPROVAL_PENDING",
                metadata={"approval_id": decision.approval_id, "decision_id": decision.decision_id},
            )
        raise PermissionDenied(
            f"governance denied {action} on {resource} by {actor}: {reasons}",
            reason="GOVERNANCE_DENIED",
            metadata={"decision_id": decision.decision_id},
        )
