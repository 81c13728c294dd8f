"""The confidence model: a Beta posterior seeded by the author's initial confidence.

A contribution starts with an initial confidence `c0` in [0, 1], worth `PRIOR_WEIGHT`
observations: a Beta(a, b) prior with `a = PRIOR_WEIGHT * c0` and
`b = PRIOR_WEIGHT * (1 - c0)`. Verifications and successful applications are positive
evidence, disputes and failed applications negative, each worth one observation. The
confidence is the posterior mean:

    confidence = (PRIOR_WEIGHT * c0 + positive) / (PRIOR_WEIGHT + positive + negative)

It is deterministic, always in [0, 1], never lowered by positive evidence nor raised by
negative evidence, and it converges to the observed success rate as evidence accumulates
(the prior's pull shrinks as 1 / (PRIOR_WEIGHT + n)). With no evidence it equals `c0`.
"""

from __future__ import annotations

from dataclasses import dataclass

# How many observations the author's initial confidence is worth. Two is the weight of
# the uniform Beta(1, 1) prior behind the classic reputation score (r + 1) / (r + s + 2):
# with c0 = 0.5 this model is exactly that score.
PRIOR_WEIGHT = 2.0


@dataclass(frozen=True)
class Evidence:
    """What is known about a contribution beyond its initial confidence.

    Attributes:
        verifications: Domains that vouch for it.
        disputes: Domains that dispute it.
        successes: Applications that worked.
        failures: Applications that did not.
    """

    verifications: int = 0
    disputes: int = 0
    successes: int = 0
    failures: int = 0

    @property
    def positive(self) -> int:
        """Observations in favour."""
        return self.verifications + self.successes

    @property
    def negative(self) -> int:
        """Observations against."""
        return self.disputes + self.failures


def confidence(initial: float, evidence: Evidence) -> float:
    """The posterior mean confidence given the initial confidence and the evidence.

    Args:
        initial: The author's confidence in [0, 1] (values outside are clamped).
        evidence: Counts of verifications, disputes, successes and failures (>= 0).
    """
    c0 = min(1.0, max(0.0, initial))
    positive = max(0, evidence.positive)
    negative = max(0, evidence.negative)
    value = (PRIOR_WEIGHT * c0 + positive) / (PRIOR_WEIGHT + positive + negative)
    # Guard the float rounding at the edges so the documented range holds exactly.
    return min(1.0, max(0.0, value))
