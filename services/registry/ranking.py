"""The routing score of seed 001 ("smart request routing"), made precise.

    score = 0.3 * health + 0.2 * (1 - load) + 0.2 * (1 - latency)
          + 0.2 * success_rate + 0.1 * specialization

- health: 1 for HEALTHY, 0.5 for DEGRADED (UNHEALTHY domains are never candidates);
- load and success_rate: as reported, clamped to [0, 1];
- latency: latency_ms / (latency_ms + 100), so 0 ms -> 0, 100 ms -> 0.5, and it never
  reaches 1 however slow the domain is;
- specialization: 1 / number of capabilities, so a specialist outranks a generalist.

The score is in [0, 1]. Ties are broken by domain id so rankings are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.registry.model import DomainRecord, DomainStatus

WEIGHT_HEALTH = 0.3
WEIGHT_LOAD = 0.2
WEIGHT_LATENCY = 0.2
WEIGHT_SUCCESS = 0.2
WEIGHT_SPECIALIZATION = 0.1
LATENCY_HALF_POINT_MS = 100.0

_HEALTH = {DomainStatus.HEALTHY: 1.0, DomainStatus.DEGRADED: 0.5, DomainStatus.UNHEALTHY: 0.0}


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, value))


def normalized_latency(latency_ms: float) -> float:
    """Maps a latency in ms onto [0, 1)."""
    latency_ms = max(0.0, latency_ms)
    return latency_ms / (latency_ms + LATENCY_HALF_POINT_MS)


def score(record: DomainRecord) -> float:
    """The routing score of one domain, in [0, 1]."""
    specialization = 1.0 / len(record.capabilities) if record.capabilities else 0.0
    metrics = record.metrics
    value = (
        WEIGHT_HEALTH * _HEALTH[record.status]
        + WEIGHT_LOAD * (1.0 - _clamp(metrics.load))
        + WEIGHT_LATENCY * (1.0 - normalized_latency(metrics.latency_ms))
        + WEIGHT_SUCCESS * _clamp(metrics.success_rate)
        + WEIGHT_SPECIALIZATION * specialization
    )
    return _clamp(value)


def rank(records: Iterable[DomainRecord]) -> list[tuple[DomainRecord, float]]:
    """Live records with their scores, best first, ties by domain id."""
    scored = [(record, score(record)) for record in records if record.status.is_live]
    scored.sort(key=lambda pair: (-pair[1], pair[0].domain_id))
    return scored
