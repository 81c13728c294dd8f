"""Test doubles of the immune kernel's peers: Guardian and governance."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.common.governance_client import GateDecision
from services.kernels.immune.remediation import HealResult


class ScriptedHealer:
    """Knows a set of components; each playbook succeeds or fails as scripted."""

    def __init__(self, components: set[str], works: Mapping[str, bool] | None = None) -> None:
        self.components = components
        self.works = dict(works or {})
        self.calls: list[tuple[str, str]] = []
        self.decisions: list[str] = []

    async def known(self, component: str) -> bool:
        return component in self.components

    async def heal(self, component: str, playbook: str, decision_id: str = "") -> HealResult:
        self.calls.append((component, playbook))
        self.decisions.append(decision_id)
        ok = self.works.get(playbook, True)
        return HealResult(ok, f"{playbook} {'worked' if ok else 'did not help'}")


class ScriptedGate:
    """Allows everything unless an action is listed as denied; records what it was asked."""

    def __init__(self, denied: set[str] | None = None) -> None:
        self.denied = denied or set()
        self.asked: list[dict[str, Any]] = []

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
        self.asked.append(
            {"actor": actor, "action": action, "resource": resource, "risk_level": risk_level}
        )
        if action in self.denied:
            return GateDecision(False, "deny", "d-1", ("no-heal",), ("policy no-heal",))
        return GateDecision(True, "allow", "d-2")
