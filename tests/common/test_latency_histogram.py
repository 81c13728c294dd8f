"""The shared latency histogram: bucket placement, merging, and the quantile it reads.

The reference is the nearest-rank quantile of the raw latencies, computed directly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.latency_histogram import BOUNDS_MS, BUCKETS, LatencyHistogram

latencies = st.lists(
    st.floats(min_value=0, max_value=200_000, allow_nan=False, allow_infinity=False), max_size=200
)
quantiles = st.floats(min_value=0.01, max_value=1.0)


def histogram_of(values: list[float]) -> LatencyHistogram:
    h = LatencyHistogram()
    for v in values:
        h.add(v)
    return h


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def bound_above(value: float) -> float:
    return next((b for b in BOUNDS_MS if value <= b), math.inf)


def test_a_latency_lands_in_the_bucket_whose_upper_bound_is_the_first_not_below_it() -> None:
    h = histogram_of([0.1, 0.25, 0.26, 3.0, 1e9])
    assert h.counts[0] == 2  # 0.1 and 0.25: up to the first bound inclusive
    assert h.counts[1] == 1  # 0.26: (0.25, 0.5]
    assert h.counts[BOUNDS_MS.index(4.0)] == 1  # 3.0: (2, 4]
    assert h.counts[-1] == 1  # above the last bound
    assert len(h.counts) == BUCKETS


def test_the_p99_of_a_hundred_calls_is_the_bucket_of_the_slowest_but_one() -> None:
    h = histogram_of([1.0] * 98 + [30.0, 900.0])
    assert h.quantile_ms(0.99) == 32.0  # the 99th value, 30 ms, is in (16, 32]
    assert h.quantile_ms(1.0) == 900.0  # the maximum bounds the last bucket read
    assert h.mean_ms == pytest.approx((98 + 30 + 900) / 100)


def test_an_empty_histogram_answers_zero() -> None:
    assert LatencyHistogram().quantile_ms(0.99) == 0.0
    assert LatencyHistogram().mean_ms == 0.0


@pytest.mark.parametrize(
    ("counts", "sum_ms", "max_ms"),
    [
        ([0] * (BUCKETS - 1), 0.0, 0.0),
        ([-1] + [0] * (BUCKETS - 1), 0.0, 0.0),
        ([0] * BUCKETS, math.nan, 0.0),
    ],
)
def test_a_reported_histogram_that_cannot_be_one_is_refused(
    counts: list[int], sum_ms: float, max_ms: float
) -> None:
    with pytest.raises(ValueError, match="must"):
        LatencyHistogram.of(counts, sum_ms, max_ms)


@given(latencies, quantiles)
def test_the_quantile_read_is_never_below_the_true_one_nor_above_its_bucket_bound(
    values: list[float], q: float
) -> None:
    if not values:
        return
    true = nearest_rank(values, q)
    read = histogram_of(values).quantile_ms(q)
    assert read >= true
    assert read <= min(bound_above(true), max(values))


@given(latencies, latencies, latencies)
def test_merging_is_associative_and_equals_counting_everything_at_once(
    a: list[float], b: list[float], c: list[float]
) -> None:
    left = histogram_of(a)
    left.merge(histogram_of(b))
    left.merge(histogram_of(c))
    bc = histogram_of(b)
    bc.merge(histogram_of(c))
    right = histogram_of(a)
    right.merge(bc)
    everything = histogram_of(a + b + c)
    assert left.counts == right.counts == everything.counts
    assert left.max_ms == right.max_ms == everything.max_ms
    assert left.sum_ms == pytest.approx(everything.sum_ms)
    assert right.sum_ms == pytest.approx(everything.sum_ms)


@given(
    st.floats(min_value=-5, max_value=200_000, allow_nan=False, allow_infinity=False),
    st.integers(min_value=1, max_value=50),
)
def test_adding_a_latency_n_times_at_once_equals_adding_it_n_times(ms: float, times: int) -> None:
    at_once = LatencyHistogram()
    at_once.add(ms, times)
    one_by_one = histogram_of([ms] * times)
    assert at_once.counts == one_by_one.counts
    assert at_once.sum_ms == pytest.approx(one_by_one.sum_ms)
    assert at_once.max_ms == one_by_one.max_ms
