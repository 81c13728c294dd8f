"""Lifeguard's shrinking suspicion timeout, as a pure function of the confirmations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.observers import suspicion_timeout

counts = st.integers(min_value=-2, max_value=40)
expectations = st.integers(min_value=-1, max_value=20)
seconds = st.floats(min_value=0.0, max_value=600.0, allow_nan=False)


@given(n=counts, k=expectations, low=seconds, high=seconds)
def test_the_timeout_stays_between_the_minimum_and_the_maximum(
    n: int, k: int, low: float, high: float
) -> None:
    timeout = suspicion_timeout(n, k, low, high)
    assert low <= timeout <= max(low, high)


@given(n=counts, k=expectations, low=seconds, high=seconds)
def test_one_more_confirmation_never_lengthens_the_timeout(
    n: int, k: int, low: float, high: float
) -> None:
    assert suspicion_timeout(n + 1, k, low, high) <= suspicion_timeout(n, k, low, high)


@given(k=st.integers(min_value=1, max_value=20), low=seconds, high=seconds)
def test_a_lone_suspicion_waits_longest_and_a_shared_one_shortest(
    k: int, low: float, high: float
) -> None:
    assert suspicion_timeout(0, k, low, high) == max(low, high)
    assert suspicion_timeout(k, k, low, high) == pytest.approx(low)
    assert suspicion_timeout(k + 5, k, low, high) == pytest.approx(low)


def test_the_timeout_shrinks_on_a_log_scale_as_in_memberlist() -> None:
    # memberlist: max - (max - min) * log(n + 1) / log(k + 1)
    assert suspicion_timeout(1, 2, 2.0, 6.0) == pytest.approx(6.0 - 4.0 * math.log(2) / math.log(3))
    # The first confirmation counts most: with 3 expected it takes half the way.
    assert suspicion_timeout(1, 3, 0.0, 10.0) == pytest.approx(5.0)


def test_with_no_other_observer_nothing_can_shorten_the_wait() -> None:
    assert suspicion_timeout(0, 0, 2.0, 6.0) == 6.0
    assert suspicion_timeout(3, 0, 2.0, 6.0) == 6.0
