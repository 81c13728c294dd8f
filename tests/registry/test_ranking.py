"""Properties of the routing score."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from services.registry import ranking
from services.registry.model import DomainRecord, DomainStatus, Metrics

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=1e6)


def record(
    status: DomainStatus, metrics: Metrics, capabilities: int = 1, name: str = "d"
) -> DomainRecord:
    return DomainRecord(
        domain_id=name,
        host="h",
        port=1,
        capabilities=tuple(f"c{i}" for i in range(capabilities)),
        version="",
        metadata={},
        public_key=b"",
        lease_ttl_s=30,
        status=status,
        metrics=metrics,
        registered_at=0,
        last_heartbeat_at=0,
        lease_expires_at=30,
        revision=1,
    )


@given(st.sampled_from(list(DomainStatus)), finite, st.floats(0, 1e6), finite, st.integers(0, 64))
def test_score_is_always_between_zero_and_one(
    status: DomainStatus, load: float, latency: float, success: float, caps: int
) -> None:
    value = ranking.score(record(status, Metrics(load, latency, success), caps))
    assert 0.0 <= value <= 1.0


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1e4), st.floats(0, 1e4))
def test_less_load_and_less_latency_never_score_lower(
    load_a: float, load_b: float, lat_a: float, lat_b: float
) -> None:
    best = record(DomainStatus.HEALTHY, Metrics(min(load_a, load_b), min(lat_a, lat_b), 1))
    worst = record(DomainStatus.HEALTHY, Metrics(max(load_a, load_b), max(lat_a, lat_b), 1))
    assert ranking.score(best) >= ranking.score(worst)


def test_the_seed_weights_add_up() -> None:
    perfect = record(DomainStatus.HEALTHY, Metrics(0, 0, 1), capabilities=1)
    assert abs(ranking.score(perfect) - 1.0) < 1e-9
    degraded = record(DomainStatus.DEGRADED, Metrics(0, 0, 1), capabilities=1)
    assert abs(ranking.score(degraded) - 0.85) < 1e-9
    assert ranking.normalized_latency(100) == 0.5


def test_rank_drops_unhealthy_and_breaks_ties_by_id() -> None:
    metrics = Metrics(0.1, 1, 1)
    ranked = ranking.rank(
        [
            record(DomainStatus.HEALTHY, metrics, name="b"),
            record(DomainStatus.HEALTHY, metrics, name="a"),
            record(DomainStatus.UNHEALTHY, metrics, name="c"),
        ]
    )
    assert [r.domain_id for r, _ in ranked] == ["a", "b"]
