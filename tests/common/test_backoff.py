"""The shared backoff value: growth, ceiling, jitter and its validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.backoff import Backoff, Retries
from services.orchestrator.model import RetryPolicy


def test_delays_grow_by_the_factor_up_to_the_ceiling() -> None:
    backoff = Backoff(initial_s=0.5, factor=2.0, max_s=3.0)
    assert [backoff.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_jitter_only_ever_shortens_a_delay() -> None:
    backoff = Backoff(initial_s=10.0, factor=1.0, max_s=10.0, jitter=0.25)
    assert backoff.delay(1, rand=lambda: 0.0) == 10.0
    assert backoff.delay(1, rand=lambda: 0.999999) == pytest.approx(7.5, abs=1e-4)


def test_a_huge_failure_count_stays_at_the_ceiling() -> None:
    assert Backoff(initial_s=1.0, factor=10.0, max_s=60.0).delay(10_000) == 60.0


@pytest.mark.parametrize(
    "kwargs",
    [{"initial_s": -1.0}, {"initial_s": 1.0, "factor": 0.5}, {"initial_s": 1.0, "jitter": 2.0}],
)
def test_nonsense_values_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)


@given(
    initial=st.floats(0, 100),
    factor=st.floats(1, 10),
    ceiling=st.floats(0, 1000),
    jitter=st.floats(0, 1),
    failures=st.integers(1, 100_000),
)
def test_every_delay_is_between_zero_and_the_ceiling(
    initial: float, factor: float, ceiling: float, jitter: float, failures: int
) -> None:
    delay = Backoff(initial, factor, ceiling, jitter).delay(failures)
    assert 0 <= delay <= max(ceiling, 0)


def test_the_default_step_retry_rides_out_ten_seconds_of_unavailability() -> None:
    policy = RetryPolicy()
    elapsed, attempt = 0.0, 1
    while policy.allows_another(attempt, unreachable=True, elapsed_s=elapsed):
        elapsed += policy.delay_after(attempt)
        attempt += 1
    assert elapsed >= 10.0
    assert attempt > policy.max_attempts


def test_errors_a_domain_answered_stop_at_max_attempts() -> None:
    policy = RetryPolicy()
    assert policy.allows_another(2, unreachable=False, elapsed_s=0.6)
    assert not policy.allows_another(3, unreachable=False, elapsed_s=0.6)


def test_retries_grow_with_each_failure_and_start_over_after_a_success() -> None:
    retries = Retries(Backoff(initial_s=0.5, max_s=3.0))
    assert [retries.failed() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    retries.succeeded()
    assert retries.failed() == 0.5
