"""Pattern detection over action outcomes, with plain, explainable statistics.

Outcomes are folded into counters (`Aggregates`): for every (domain, action) and every
factor (hour of day, weekday, input size, requests in flight, requests since start), the
number of calls, failures and the sum and sum of squares of latency per bucket. Detection
reads only these counters, so memory is bounded by the number of buckets, not of outcomes.

Tests (see docs/learning.md):

- Failure depends on a factor: for each bucket with at least `min_count` calls, the
  failure rate in the bucket is compared with the rate in all other buckets of the same
  factor by a two-proportion z-test (pooled standard error). A pattern needs
  z >= `z_threshold` (default 4: with some 50 buckets per action, the chance of one false
  pattern from data with no dependence is about 0.2%) and a rate at least `min_effect`
  above the rest. The evidence carries both rates with their 95% Wilson intervals.
- Latency depends on a factor: Welch's z on the mean latency in the bucket against the
  rest, with the same threshold, and a mean at least `min_latency_ratio` times the rest's
  and `min_latency_delta_ms` above it (a 0.03 ms call against a 0.01 ms one is no pattern).
- Degradation after N requests: the same failure test on the "requests since start"
  factor, split at each bucket boundary N (before N against from N on); the split with the
  largest z is reported as "fails after N requests".
- Retries rarely succeed: among calls with attempt > 1 (at least `min_count`), the upper
  bound of the 95% Wilson interval of their success rate is below `max_retry_success`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

# Factors an outcome is bucketed by, and their bucket labels.
HOUR = "hour_of_day"
WEEKDAY = "weekday"
INPUT_SIZE = "input_size"
IN_FLIGHT = "in_flight"
SEQUENCE = "requests_since_start"
FACTORS = (HOUR, WEEKDAY, INPUT_SIZE, IN_FLIGHT, SEQUENCE)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# Z of a two-sided 95% interval.
Z95 = 1.959964

# Pattern kinds, and the shared-memory contribution type each becomes.
FAILURE = "failure"
LATENCY = "latency"
DEGRADATION = "degradation"
RETRIES = "retries"
CONTRIBUTION_TYPES = {
    FAILURE: "failed_patterns",
    DEGRADATION: "failed_patterns",
    RETRIES: "optimization",
    LATENCY: "insight",
}


@dataclass(frozen=True)
class Outcome:
    """One finished call of an action, as the SDK records it.

    Attributes:
        domain: Domain that ran it.
        action: Action name.
        success: Whether it succeeded.
        latency_ms: How long it ran.
        input_size: Size of its input in bytes (JSON).
        hour: Hour of day (0-23, UTC) it started.
        weekday: Day of week (0 Monday - 6 Sunday, UTC).
        attempt: 1 for a first call, more for a retry.
        in_flight: Calls of the domain in flight when it started (itself included).
        sequence: Calls of the domain since its process started (itself included).
    """

    domain: str
    action: str
    success: bool
    latency_ms: float
    input_size: int = 0
    hour: int = 0
    weekday: int = 0
    attempt: int = 1
    in_flight: int = 1
    sequence: int = 1


def size_bucket(value: int) -> int:
    """Power-of-two bucket: 0 for 0, else the number of bits (1, 2-3, 4-7, ...)."""
    return max(0, int(value)).bit_length()


def bucket_label(factor: str, bucket: int) -> str:
    """A readable name of a bucket."""
    if factor == HOUR:
        return f"{bucket:02d}:00-{bucket:02d}:59 UTC"
    if factor == WEEKDAY:
        return WEEKDAYS[bucket % 7]
    if bucket == 0:
        return "0"
    low, high = 1 << (bucket - 1), (1 << bucket) - 1
    unit = " bytes" if factor == INPUT_SIZE else ""
    return f"{low}-{high}{unit}"


def buckets_of(outcome: Outcome) -> tuple[tuple[str, int], ...]:
    """The (factor, bucket) pairs an outcome counts in."""
    return (
        (HOUR, outcome.hour % 24),
        (WEEKDAY, outcome.weekday % 7),
        (INPUT_SIZE, size_bucket(outcome.input_size)),
        (IN_FLIGHT, size_bucket(outcome.in_flight)),
        (SEQUENCE, size_bucket(outcome.sequence)),
    )


@dataclass
class Cell:
    """Counters of one bucket."""

    n: int = 0
    failures: int = 0
    latency_sum: float = 0.0
    latency_sq: float = 0.0

    def add(self, success: bool, latency_ms: float) -> None:
        self.n += 1
        self.failures += 0 if success else 1
        self.latency_sum += latency_ms
        self.latency_sq += latency_ms * latency_ms

    def plus(self, other: Cell) -> Cell:
        return Cell(
            self.n + other.n,
            self.failures + other.failures,
            self.latency_sum + other.latency_sum,
            self.latency_sq + other.latency_sq,
        )

    def minus(self, other: Cell) -> Cell:
        return Cell(
            self.n - other.n,
            self.failures - other.failures,
            self.latency_sum - other.latency_sum,
            self.latency_sq - other.latency_sq,
        )

    @property
    def mean_ms(self) -> float:
        return self.latency_sum / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        if self.n < 2:
            return 0.0
        return max(0.0, (self.latency_sq - self.latency_sum**2 / self.n) / (self.n - 1))


@dataclass
class ActionStats:
    """Counters of one (domain, action)."""

    total: Cell = field(default_factory=Cell)
    factors: dict[str, dict[int, Cell]] = field(
        default_factory=lambda: {factor: {} for factor in FACTORS}
    )
    retries: int = 0
    retry_successes: int = 0


class Aggregates:
    """Outcome counters per (domain, action); bounded by `max_actions` pairs (outcomes of
    new pairs beyond it are counted in `dropped`)."""

    def __init__(self, max_actions: int = 10_000) -> None:
        self.max_actions = max_actions
        self.actions: dict[tuple[str, str], ActionStats] = {}
        self.outcomes = 0
        self.dropped = 0

    def add(self, outcome: Outcome) -> bool:
        """Counts one outcome; False when it was dropped (too many actions)."""
        key = (outcome.domain, outcome.action)
        stats = self.actions.get(key)
        if stats is None:
            if len(self.actions) >= self.max_actions:
                self.dropped += 1
                return False
            stats = self.actions[key] = ActionStats()
        success, latency = outcome.success, outcome.latency_ms
        stats.total.add(success, latency)
        factors = stats.factors
        for factor, bucket in buckets_of(outcome):
            cells = factors[factor]
            cell = cells.get(bucket)
            if cell is None:
                cell = cells[bucket] = Cell()
            cell.add(success, latency)
        if outcome.attempt > 1:
            stats.retries += 1
            stats.retry_successes += 1 if success else 0
        self.outcomes += 1
        return True

    def add_all(self, outcomes: Iterable[Outcome]) -> int:
        """Counts outcomes; returns how many were accepted."""
        return sum(1 for o in outcomes if self.add(o))


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (0, 1 when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # The interval always holds p (floating-point rounding can put an end a hair past it).
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def two_proportion_z(x1: int, n1: int, x2: int, n2: int) -> float:
    """z of the difference p1 - p2 with the pooled standard error (0 when undefined)."""
    if n1 <= 0 or n2 <= 0:
        return 0.0
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0
    return (x1 / n1 - x2 / n2) / se


def welch_z(a: Cell, b: Cell) -> float:
    """z of the difference of mean latency a - b with Welch's standard error."""
    if a.n < 2 or b.n < 2:
        return 0.0
    se = math.sqrt(a.variance / a.n + b.variance / b.n)
    diff = a.mean_ms - b.mean_ms
    if se == 0:
        return math.inf if diff > 0 else 0.0
    return diff / se


@dataclass(frozen=True)
class DetectorSettings:
    """Thresholds of the tests (see the module docs)."""

    min_count: int = 30
    z_threshold: float = 4.0
    min_effect: float = 0.1
    min_latency_ratio: float = 1.5
    min_latency_delta_ms: float = 5.0
    max_retry_success: float = 0.2


@dataclass(frozen=True)
class Pattern:
    """A pattern found, with its evidence.

    Attributes:
        id: Stable id of (domain, action, kind, factor, bucket).
        domain: Domain of the action.
        action: The action.
        kind: failure | latency | degradation | retries.
        factor: The factor it depends on ("" for retries).
        bucket: The bucket's label (or the N of a degradation).
        summary: One sentence a person reads.
        recommendation: What to do about it.
        evidence: The counts, rates, intervals and test statistic.
    """

    id: str
    domain: str
    action: str
    kind: str
    factor: str
    bucket: str
    summary: str
    recommendation: str
    evidence: dict[str, Any]

    @property
    def contribution_type(self) -> str:
        """The shared-memory contribution type of this pattern."""
        return CONTRIBUTION_TYPES[self.kind]

    @property
    def strength(self) -> float:
        """The test statistic (or, for retries, 1 minus the upper bound)."""
        return float(self.evidence.get("z", 0.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "domain": self.domain,
            "action": self.action,
            "kind": self.kind,
            "factor": self.factor,
            "bucket": self.bucket,
            "summary": self.summary,
            "recommendation": self.recommendation,
            "evidence": self.evidence,
            "contribution_type": self.contribution_type,
        }


def pattern_id(domain: str, action: str, kind: str, factor: str, bucket: str) -> str:
    """Stable id: the same pattern found again keeps its id."""
    text = "\x1f".join((domain, action, kind, factor, bucket))
    return "pat-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _rate(failures: int, n: int) -> dict[str, Any]:
    low, high = wilson(failures, n)
    return {
        "calls": n,
        "failures": failures,
        "failure_rate": round(failures / n, 6) if n else 0.0,
        "wilson95": [round(low, 6), round(high, 6)],
    }


_RECOMMEND = {
    HOUR: "schedule around this hour or add capacity for it",
    WEEKDAY: "schedule around this day or add capacity for it",
    INPUT_SIZE: "split inputs of this size or raise the limits they hit",
    IN_FLIGHT: "lower the action's concurrency (rate limit) below this level",
    SEQUENCE: "recycle or rate-limit the domain before this many requests",
}


def detect(aggregates: Aggregates, settings: DetectorSettings) -> list[Pattern]:
    """Every pattern the counters show, strongest first."""
    found: list[Pattern] = []
    for (domain, action), stats in aggregates.actions.items():
        found.extend(_failures(domain, action, stats, settings))
        found.extend(_latency(domain, action, stats, settings))
        degradation = _degradation(domain, action, stats, settings)
        if degradation is not None:
            found.append(degradation)
        retries = _retries(domain, action, stats, settings)
        if retries is not None:
            found.append(retries)
    found.sort(key=lambda p: -p.strength)
    return found


def _failures(
    domain: str, action: str, stats: ActionStats, settings: DetectorSettings
) -> list[Pattern]:
    found = []
    for factor in (HOUR, WEEKDAY, INPUT_SIZE, IN_FLIGHT):
        for bucket, cell in stats.factors[factor].items():
            rest = stats.total.minus(cell)
            if cell.n < settings.min_count or rest.n < settings.min_count:
                continue
            z = two_proportion_z(cell.failures, cell.n, rest.failures, rest.n)
            effect = cell.failures / cell.n - rest.failures / rest.n
            if z < settings.z_threshold or effect < settings.min_effect:
                continue
            label = bucket_label(factor, bucket)
            found.append(
                Pattern(
                    pattern_id(domain, action, FAILURE, factor, label),
                    domain,
                    action,
                    FAILURE,
                    factor,
                    label,
                    f"{domain}.{action} fails {cell.failures / cell.n:.0%} of the time when "
                    f"{factor.replace('_', ' ')} is {label}, against "
                    f"{rest.failures / rest.n:.0%} otherwise",
                    _RECOMMEND[factor],
                    {
                        "test": "two-proportion z-test",
                        "z": round(z, 3),
                        "in_bucket": _rate(cell.failures, cell.n),
                        "elsewhere": _rate(rest.failures, rest.n),
                    },
                )
            )
    return found


def _latency(
    domain: str, action: str, stats: ActionStats, settings: DetectorSettings
) -> list[Pattern]:
    found = []
    for factor in (HOUR, WEEKDAY, INPUT_SIZE, IN_FLIGHT):
        for bucket, cell in stats.factors[factor].items():
            rest = stats.total.minus(cell)
            if cell.n < settings.min_count or rest.n < settings.min_count:
                continue
            slower = cell.mean_ms - rest.mean_ms
            if (
                cell.mean_ms < settings.min_latency_ratio * rest.mean_ms
                or slower < settings.min_latency_delta_ms
            ):
                continue
            z = welch_z(cell, rest)
            if z < settings.z_threshold:
                continue
            label = bucket_label(factor, bucket)
            z_value = round(z, 3) if math.isfinite(z) else 1e9
            found.append(
                Pattern(
                    pattern_id(domain, action, LATENCY, factor, label),
                    domain,
                    action,
                    LATENCY,
                    factor,
                    label,
                    f"{domain}.{action} takes {cell.mean_ms:.1f} ms on average when "
                    f"{factor.replace('_', ' ')} is {label}, against {rest.mean_ms:.1f} ms "
                    "otherwise",
                    _RECOMMEND[factor],
                    {
                        "test": "Welch z-test on mean latency",
                        "z": z_value,
                        "in_bucket": {"calls": cell.n, "mean_ms": round(cell.mean_ms, 3)},
                        "elsewhere": {"calls": rest.n, "mean_ms": round(rest.mean_ms, 3)},
                    },
                )
            )
    return found


def _degradation(
    domain: str, action: str, stats: ActionStats, settings: DetectorSettings
) -> Pattern | None:
    cells = stats.factors[SEQUENCE]
    best: tuple[float, int, Cell, Cell] | None = None
    before = Cell()
    for bucket in sorted(cells)[:-1]:
        before = before.plus(cells[bucket])
        after = stats.total.minus(before)
        if before.n < settings.min_count or after.n < settings.min_count:
            continue
        z = two_proportion_z(after.failures, after.n, before.failures, before.n)
        effect = after.failures / after.n - before.failures / before.n
        significant = z >= settings.z_threshold and effect >= settings.min_effect
        if significant and (best is None or z > best[0]):
            best = (z, 1 << bucket, before, after)
    if best is None:
        return None
    z, threshold, before, after = best
    label = str(threshold)
    return Pattern(
        pattern_id(domain, action, DEGRADATION, SEQUENCE, label),
        domain,
        action,
        DEGRADATION,
        SEQUENCE,
        label,
        f"{domain}.{action} fails {after.failures / after.n:.0%} of the time after "
        f"{threshold} requests, against {before.failures / before.n:.0%} before",
        _RECOMMEND[SEQUENCE],
        {
            "test": "two-proportion z-test",
            "z": round(z, 3),
            "after_n_requests": threshold,
            "before": _rate(before.failures, before.n),
            "after": _rate(after.failures, after.n),
        },
    )


def _retries(
    domain: str, action: str, stats: ActionStats, settings: DetectorSettings
) -> Pattern | None:
    if stats.retries < settings.min_count:
        return None
    low, high = wilson(stats.retry_successes, stats.retries)
    if high >= settings.max_retry_success:
        return None
    return Pattern(
        pattern_id(domain, action, RETRIES, "", "attempt>1"),
        domain,
        action,
        RETRIES,
        "attempt",
        "attempt>1",
        f"retries of {domain}.{action} succeed {stats.retry_successes}/{stats.retries} "
        f"times (at most {high:.0%} at 95% confidence)",
        "stop retrying this action (fail fast) or fix the cause before retrying",
        {
            "test": "Wilson score interval",
            "z": round(1.0 - high, 6),
            "retries": stats.retries,
            "retry_successes": stats.retry_successes,
            "wilson95": [round(low, 6), round(high, 6)],
        },
    )
