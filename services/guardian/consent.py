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
then redeems it (governance recorded it for this actor, action and resource, allowed or
approved since, and it was not redeemed before: each decision acts once) instead of asking
a second time. So a heal held for approval goes through after the approval: send it again
with the decision id named in the refusal. A DENY is PERMISSION_DENIED with the reasons, a
PENDING_APPROVAL is FAILED_PRECONDITION (reason APPROVAL_PENDING, with the approval and
decision ids) naming the approval to settle; both are logged and recorded as a
`healing.denied` decision. When governance cannot answer, the client's fallback mode
decides (Guardian's default: log_only, allow and record locally).

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
    """Governance as Guardian needs it: ask, or redeem a decision the caller holds."""

    async def redeem(
        self, decision_id: str, actor: str, action: str, resource: str, request_sha256: str
    ) -> GateDecision:
        """Spends an allowing (or approved) decision once, for exactly this request."""


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
        decision = None
        if decision_id:
            decision = await self.gate.redeem(decision_id, actor, action, resource, "")
            if decision.source == "fallback":
                decision = None  # governance cannot answer: ask, so the fallback mode decides
        if decision is None:
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
