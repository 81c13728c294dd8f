"""The trust score: a documented composite of certifications and behaviour, in [0, 1].

    score = 0                                   if the domain has no active key
    score = sum(w_i * v_i) / sum(w_i)           over the *available* components

Components (weights configurable, defaults below):

- `certifications` (0.4): Beta reputation over valid incoming certifications,
  `(r + 1) / (r + s + 2)` with r = (number of FULL) + 0.5 * (number of PARTIAL) and
  s = number of NONE (explicit distrust). 0.5 with no certifications; always available.
- `lease_reliability` (0.3): the registry's view of the domain's lease: HEALTHY 1.0,
  DEGRADED 0.5, UNHEALTHY 0.0 (a lapsed lease). Read with RegistryService.GetDomain.
- `step_success` (0.3): the success rate of the domain's actions, as the domain reports it
  with each heartbeat (`DomainMetrics.success_rate`, kept by the registry). The
  orchestrator exposes no per-domain step statistics, so this is the registry's figure.

When the registry is unreachable or does not know the domain, both behaviour components are
shown with `available = false` and a detail saying why, and the score is renormalized over
what is left (the certifications): a peer being down never fails the call.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from services.kernels.trust.model import Level


@dataclass(frozen=True)
class Component:
    """One input of the score."""

    name: str
    value: float
    weight: float
    available: bool
    detail: str


@dataclass(frozen=True)
class Behaviour:
    """What the registry knows about a domain."""

    status: str  # "HEALTHY", "DEGRADED" or "UNHEALTHY"
    success_rate: float


class BehaviourUnavailable(Exception):
    """The behaviour source could not be read; the message says why."""


class BehaviourSource(Protocol):
    """Where behaviour comes from (the registry in production)."""

    async def observe(self, domain_id: str) -> Behaviour | None:
        """The domain's behaviour; None when the source does not know it.

        Raises:
            BehaviourUnavailable: the source is down.
        """
        ...


@dataclass(frozen=True)
class Weights:
    """Weights of the components."""

    certifications: float = 0.4
    lease_reliability: float = 0.3
    step_success: float = 0.3


_LEASE = {"HEALTHY": 1.0, "DEGRADED": 0.5, "UNHEALTHY": 0.0}


def certification_component(levels: Iterable[Level], weight: float) -> Component:
    """Beta reputation over incoming certification levels."""
    full = partial = none = 0
    for level in levels:
        if level is Level.FULL:
            full += 1
        elif level is Level.PARTIAL:
            partial += 1
        else:
            none += 1
    r, s = full + 0.5 * partial, float(none)
    value = (r + 1) / (r + s + 2)
    detail = f"(r+1)/(r+s+2), r = {full} full + 0.5 x {partial} partial, s = {none} none"
    return Component("certifications", value, weight, True, detail)


def behaviour_components(
    behaviour: Behaviour | None, problem: str, weights: Weights
) -> list[Component]:
    """The lease and step-success components from the registry's answer (or its absence)."""
    if behaviour is None:
        why = problem or "the registry does not know this domain"
        return [
            Component("lease_reliability", 0.0, weights.lease_reliability, False, why),
            Component("step_success", 0.0, weights.step_success, False, why),
        ]
    lease = _LEASE.get(behaviour.status, 0.0)
    success = min(1.0, max(0.0, behaviour.success_rate))
    return [
        Component(
            "lease_reliability",
            lease,
            weights.lease_reliability,
            True,
            f"registry status {behaviour.status} (HEALTHY 1, DEGRADED 0.5, UNHEALTHY 0)",
        ),
        Component(
            "step_success",
            success,
            weights.step_success,
            True,
            "success_rate the domain reports in its registry heartbeats",
        ),
    ]


def composite(components: Iterable[Component], has_active_key: bool) -> float:
    """The weighted mean of the available components, 0 without an active key."""
    if not has_active_key:
        return 0.0
    parts = [c for c in components if c.available and c.weight > 0]
    total = sum(c.weight for c in parts)
    if total <= 0:
        return 0.0
    return min(1.0, max(0.0, sum(c.weight * c.value for c in parts) / total))
