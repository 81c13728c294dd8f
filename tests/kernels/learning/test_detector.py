"""The learning kernel's detectors: no pattern from data without dependence, and the
planted ones found with their evidence."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.kernels.learning.detector import (
    DEGRADATION,
    FAILURE,
    HOUR,
    IN_FLIGHT,
    INPUT_SIZE,
    LATENCY,
    RETRIES,
    WEEKDAY,
    Aggregates,
    DetectorSettings,
    Outcome,
    detect,
    two_proportion_z,
    wilson,
)

SETTINGS = DetectorSettings()


def outcome(**fields: object) -> Outcome:
    base: dict[str, object] = {"domain": "ai", "action": "generate", "success": True}
    base.update(fields)
    return Outcome(latency_ms=float(base.pop("latency_ms", 10.0)), **base)  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(
    calls_per_cell=st.integers(min_value=1, max_value=12),
    failures_per_cell=st.integers(min_value=0, max_value=12),
    latency=st.floats(min_value=0.1, max_value=5000),
    sizes=st.lists(st.integers(min_value=0, max_value=1 << 20), min_size=1, max_size=4),
    retry_success=st.booleans(),
)
def test_data_with_the_same_rates_everywhere_yields_no_pattern(
    calls_per_cell: int,
    failures_per_cell: int,
    latency: float,
    sizes: list[int],
    retry_success: bool,
) -> None:
    failures_per_cell = min(failures_per_cell, calls_per_cell)
    aggregates = Aggregates()
    # Every (hour, weekday, size) cell has the same calls, failures and latency.
    for hour in range(24):
        for weekday in range(7):
            for size in sizes:
                for i in range(calls_per_cell):
                    aggregates.add(
                        outcome(
                            success=i >= failures_per_cell,
                            latency_ms=latency,
                            hour=hour,
                            weekday=weekday,
                            input_size=size,
                            attempt=1,
                        )
                    )
    assert detect(aggregates, SETTINGS) == []


@settings(max_examples=40, deadline=None)
@given(
    spike_hour=st.integers(min_value=0, max_value=23),
    base_failures=st.integers(min_value=0, max_value=2),
    calls=st.integers(min_value=40, max_value=80),
)
def test_a_planted_hour_of_day_failure_spike_is_found(
    spike_hour: int, base_failures: int, calls: int
) -> None:
    aggregates = Aggregates()
    for hour in range(24):
        failures = calls // 2 if hour == spike_hour else base_failures
        for i in range(calls):
            aggregates.add(outcome(success=i >= failures, hour=hour))
    patterns = [p for p in detect(aggregates, SETTINGS) if p.kind == FAILURE]
    label = f"{spike_hour:02d}:00-{spike_hour:02d}:59 UTC"
    assert [(p.factor, p.bucket) for p in patterns] == [(HOUR, label)]
    evidence = patterns[0].evidence
    assert evidence["in_bucket"] == {
        "calls": calls,
        "failures": calls // 2,
        "failure_rate": round((calls // 2) / calls, 6),
        "wilson95": evidence["in_bucket"]["wilson95"],
    }
    assert evidence["z"] >= SETTINGS.z_threshold
    assert patterns[0].contribution_type == "failed_patterns"


def test_slow_tuesdays_are_a_latency_pattern_and_an_insight() -> None:
    aggregates = Aggregates()
    for day in range(7):
        for i in range(100):
            slow = day == 1
            aggregates.add(outcome(weekday=day, latency_ms=(200 if slow else 50) + i % 7))
    (pattern,) = detect(aggregates, SETTINGS)
    assert (pattern.kind, pattern.factor, pattern.bucket) == (LATENCY, WEEKDAY, "Tuesday")
    assert pattern.contribution_type == "insight"
    assert pattern.evidence["in_bucket"]["mean_ms"] > 200


def test_failures_of_large_inputs_and_under_load_are_found() -> None:
    aggregates = Aggregates()
    for i in range(400):
        big = i % 4 == 0
        aggregates.add(
            outcome(input_size=100_000 if big else 100, success=not (big and i % 8 == 0))
        )
    for i in range(400):
        busy = i % 4 == 0
        aggregates.add(
            outcome(action="store", in_flight=40 if busy else 1, success=not (busy and i % 3 == 0))
        )
    found = {(p.action, p.kind, p.factor) for p in detect(aggregates, SETTINGS)}
    assert ("generate", FAILURE, INPUT_SIZE) in found
    assert ("store", FAILURE, IN_FLIGHT) in found


def test_failing_after_a_hundred_requests_is_degradation_with_its_threshold() -> None:
    aggregates = Aggregates()
    for n in range(1, 301):
        aggregates.add(outcome(sequence=n, success=n < 128 or n % 2 == 0))
    degradation = [p for p in detect(aggregates, SETTINGS) if p.kind == DEGRADATION]
    assert len(degradation) == 1
    assert degradation[0].evidence["after_n_requests"] == 128
    assert degradation[0].evidence["before"]["failures"] == 0


def test_retries_that_rarely_succeed_are_an_optimization() -> None:
    aggregates = Aggregates()
    for i in range(60):
        aggregates.add(outcome(attempt=2, success=i == 0))
        aggregates.add(outcome(attempt=1, success=True))
    (pattern,) = [p for p in detect(aggregates, SETTINGS) if p.kind == RETRIES]
    assert pattern.contribution_type == "optimization"
    assert pattern.evidence["retries"] == 60
    assert pattern.evidence["retry_successes"] == 1
    assert pattern.evidence["wilson95"][1] < 0.2


def test_retries_that_often_succeed_are_no_pattern() -> None:
    aggregates = Aggregates()
    for i in range(60):
        aggregates.add(outcome(attempt=2, success=i % 2 == 0))
    assert [p for p in detect(aggregates, SETTINGS) if p.kind == RETRIES] == []


def test_too_few_calls_are_no_evidence() -> None:
    aggregates = Aggregates()
    for hour in range(24):
        for _ in range(5):
            aggregates.add(outcome(hour=hour, success=hour != 3))
    assert detect(aggregates, SETTINGS) == []


def test_the_same_pattern_found_again_keeps_its_id() -> None:
    def found() -> str:
        aggregates = Aggregates()
        for hour in range(24):
            for i in range(50):
                aggregates.add(outcome(hour=hour, success=not (hour == 9 and i % 2 == 0)))
        return detect(aggregates, SETTINGS)[0].id

    assert found() == found()


def test_aggregates_stop_at_their_bound_and_count_what_they_drop() -> None:
    aggregates = Aggregates(max_actions=2)
    for action in ("a", "b", "c"):
        aggregates.add(outcome(action=action))
    assert set(aggregates.actions) == {("ai", "a"), ("ai", "b")}
    assert (aggregates.outcomes, aggregates.dropped) == (2, 1)


@given(st.integers(min_value=0, max_value=500), st.integers(min_value=1, max_value=500))
def test_the_wilson_interval_holds_the_observed_rate(x: int, n: int) -> None:
    x = min(x, n)
    low, high = wilson(x, n)
    assert 0 <= low <= x / n <= high <= 1


def test_the_z_of_equal_rates_is_zero_and_grows_with_the_difference() -> None:
    assert two_proportion_z(10, 100, 10, 100) == 0
    assert two_proportion_z(30, 100, 10, 100) > two_proportion_z(20, 100, 10, 100) > 0


def test_a_latency_difference_too_small_to_matter_is_no_pattern() -> None:
    aggregates = Aggregates()
    for size in (100, 100_000):
        for i in range(200):
            fast = 0.01 if size == 100 else 0.03
            aggregates.add(outcome(input_size=size, latency_ms=fast + (i % 3) * 0.001))
    assert detect(aggregates, SETTINGS) == []
