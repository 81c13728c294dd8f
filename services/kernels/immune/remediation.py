"""Remediation: from an anomaly to a healed component, safely.

For each anomaly, in order, stopping at the first rule that says no:

1. the target must be named (never act on an empty target);
2. the component must not be cooling down (`cooldown_s` since the last action on it);
3. the global rate limit must allow it (`max_actions` per `rate_window_s`);
4. Guardian must know the component (never act on an unknown target);
5. the best-scoring playbook for the anomaly's kind is chosen (see `playbooks`);
6. governance must allow `heal:<playbook>` on `component:<name>` (actor `immune`);
7. in dry-run mode, stop here and record what would have run;
8. Guardian runs the playbook (`Heal`), and its success or failure is recorded as
   experience for the kind, so the next choice is better informed.

Rules 1-4 end as SKIPPED, 6 as DENIED, 7 as DRY_RUN, 8 as SUCCEEDED or FAILED. Cooldown
and rate limit count every remediation that reached step 7 or 8.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from services.common.governance_client import HEAL_RISK, GateDecision, GovernanceGate
from services.kernels.immune.model import Anomaly, Outcome, PlaybookScore, Remediation
from services.kernels.immune.playbooks import (
    DEFAULT_PLAYBOOKS,
    Experience,
    candidates_for,
    rank,
)

log = logging.getLogger(__name__)

ACTOR = "immune"


@dataclass(frozen=True)
class HealResult:
    """What a playbook run achieved."""

    success: bool
    message: str


class Healer(Protocol):
    """Who runs playbooks: Guardian in production."""

    async def known(self, component: str) -> bool:
        """True when the component exists and can be healed."""

    async def heal(self, component: str, playbook: str, decision_id: str = "") -> HealResult:
        """Runs a playbook on a component; `decision_id` is governance's decision that
        allowed it (Guardian confirms it instead of asking again)."""


@dataclass(frozen=True)
class RemediationSettings:
    """Safety and choice settings.

    Attributes:
        dry_run: Choose and ask governance, but never run anything.
        cooldown_s: Least time between two actions on one component.
        max_actions: Actions allowed per `rate_window_s`, over all components.
        rate_window_s: Window of the global rate limit.
        playbooks: Kind pattern -> candidate playbooks, first match wins.
        risk: Risk level to declare to governance per playbook (default: the shared
            `HEAL_RISK`, which Guardian uses too; "high" for a playbook it lacks).
        approval_wait_s: How long to wait for a governance approval before giving up.
    """

    dry_run: bool = False
    cooldown_s: float = 300.0
    max_actions: int = 5
    rate_window_s: float = 600.0
    playbooks: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_PLAYBOOKS
    risk: Mapping[str, str] = field(default_factory=lambda: dict(HEAL_RISK))
    approval_wait_s: float = 0.0


class Remediator:
    """Runs the remediation steps for one anomaly at a time.

    Args:
        settings: Safety and choice settings.
        healer: Runs playbooks.
        gate: Governance.
        experience: Playbook outcomes.
        clock: Epoch seconds.
        wait_for_approval: Waits on a governance approval (approval id, timeout) and
            returns "approved" or another status; None never waits.
    """

    def __init__(
        self,
        settings: RemediationSettings,
        healer: Healer,
        gate: GovernanceGate,
        experience: Experience,
        clock: Callable[[], float] = time.time,
        wait_for_approval: Callable[[str, float], Awaitable[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.healer = healer
        self.gate = gate
        self.experience = experience
        self.clock = clock
        self.wait_for_approval = wait_for_approval
        self.last_action: dict[str, float] = {}
        self.recent: deque[float] = deque()

    def restore(self, actions: list[tuple[str, float]]) -> None:
        """Resumes cooldowns and the rate limit from recorded actions (oldest first)."""
        for component, started in actions:
            self.last_action[component] = started
            self.recent.append(started)

    def _skip(self, anomaly: Anomaly, started: float, rid: str, reason: str) -> Remediation:
        return Remediation(
            rid,
            anomaly.anomaly_id,
            anomaly.component,
            anomaly.kind,
            Outcome.SKIPPED,
            reason,
            started,
        )

    async def remediate(self, anomaly: Anomaly, remediation_id: str) -> Remediation:
        """Runs the steps for one anomaly and returns the finished remediation."""
        started = self.clock()
        result = await self._run(anomaly, remediation_id, started)
        return replace(result, finished_at=self.clock())

    async def _run(self, anomaly: Anomaly, rid: str, now: float) -> Remediation:
        component = anomaly.component.strip()
        if not component:
            return self._skip(anomaly, now, rid, "empty target: nothing to heal")
        last = self.last_action.get(component)
        if last is not None and now - last < self.settings.cooldown_s:
            return self._skip(
                anomaly,
                now,
                rid,
                f"cooldown: {component} was acted on {now - last:.0f}s ago "
                f"(cooldown {self.settings.cooldown_s:.0f}s)",
            )
        while self.recent and now - self.recent[0] >= self.settings.rate_window_s:
            self.recent.popleft()
        if len(self.recent) >= self.settings.max_actions:
            return self._skip(
                anomaly,
                now,
                rid,
                f"rate limit: {len(self.recent)} actions in the last "
                f"{self.settings.rate_window_s:.0f}s (max {self.settings.max_actions})",
            )
        try:
            known = await self.healer.known(component)
        except Exception as exc:
            return self._skip(anomaly, now, rid, f"cannot check target {component}: {exc}")
        if not known:
            return self._skip(anomaly, now, rid, f"unknown target: {component} is not supervised")
        names = candidates_for(anomaly.kind, self.settings.playbooks)
        if not names:
            return self._skip(anomaly, now, rid, f"no playbook configured for {anomaly.kind}")
        ranked = rank(names, await self.experience.outcomes(anomaly.kind, names))
        best = ranked[0]
        decision = await self._ask(anomaly, best, rid)
        chosen = Remediation(
            rid,
            anomaly.anomaly_id,
            component,
            anomaly.kind,
            Outcome.RUNNING,
            "",
            now,
            playbook=best.playbook,
            candidates=ranked,
            governance_decision_id=decision.decision_id,
        )
        if not decision.allowed:
            return replace(
                chosen,
                outcome=Outcome.DENIED,
                reason=f"governance {decision.verdict}: " + "; ".join(decision.reasons),
            )
        self.last_action[component] = now
        self.recent.append(now)
        if self.settings.dry_run:
            return replace(
                chosen,
                outcome=Outcome.DRY_RUN,
                reason=f"dry run: would run {best.playbook} on {component} "
                f"(score {best.score:.2f})",
            )
        try:
            healed = await self.healer.heal(component, best.playbook, decision.decision_id)
        except Exception as exc:
            healed = HealResult(False, f"healer error: {exc}")
        await self.experience.record(anomaly.kind, best.playbook, healed.success, healed.message)
        log.info(
            "immune: %s on %s for %s: %s (%s)",
            best.playbook,
            component,
            anomaly.kind,
            "succeeded" if healed.success else "failed",
            healed.message,
        )
        return replace(
            chosen,
            outcome=Outcome.SUCCEEDED if healed.success else Outcome.FAILED,
            reason=healed.message,
        )

    async def _ask(self, anomaly: Anomaly, best: PlaybookScore, rid: str) -> GateDecision:
        peak = max((abs(e.score) for e in anomaly.evidence), default=0.0)
        decision = await self.gate.check(
            ACTOR,
            f"heal:{best.playbook}",
            f"component:{anomaly.component}",
            risk_level=self.settings.risk.get(best.playbook, "high"),
            context={
                "anomaly_id": anomaly.anomaly_id,
                "kind": anomaly.kind,
                "metric": anomaly.metric,
                "score": round(peak, 3),
                "playbook_score": round(best.score, 3),
                "dry_run": self.settings.dry_run,
            },
            request_id=f"remediation:{rid}",
        )
        if (
            decision.verdict == "pending_approval"
            and self.wait_for_approval is not None
            and self.settings.approval_wait_s > 0
        ):
            outcome = await self.wait_for_approval(
                decision.approval_id, self.settings.approval_wait_s
            )
            if outcome == "approved":
                return replace(decision, allowed=True, verdict="allow")
        return decision
