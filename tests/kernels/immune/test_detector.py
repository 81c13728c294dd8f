"""Detection on synthetic series: spikes are found, noise is not, nothing flaps."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from services.kernels.immune.detector import Detection, Detector, DetectorSettings

SETTINGS = DetectorSettings(window=60, min_points=20, threshold=3.5, consecutive=3)


def feed(detector: Detector, values: list[float], metric: str = "latency_ms") -> list[Detection]:
    found = []
    for i, v in enumerate(values):
        detection = detector.observe("ai_domain", metric, v, float(i))
        if detection is not None:
            found.append(detection)
    return found


def noisy(n: int, seed: int, center: float = 100.0, spread: float = 5.0) -> list[float]:
    rng = random.Random(seed)
    return [center + rng.uniform(-spread, spread) for _ in range(n)]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.floats(1.0, 1e6), st.floats(0.01, 0.5))
def test_bounded_noise_never_raises_an_anomaly(seed: int, center: float, rel: float) -> None:
    assert feed(Detector(SETTINGS), noisy(300, seed, center, center * rel)) == []


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32), st.floats(5.0, 50.0))
def test_a_sustained_latency_spike_is_detected_with_its_evidence(seed: int, factor: float) -> None:
    values = noisy(40, seed) + [100.0 * factor] * 3
    found = feed(Detector(SETTINGS), values)
    assert len(found) == 1
    assert found[0].kind == "latency_ms_spike"
    assert len(found[0].evidence) == 3
    assert all(e.score > SETTINGS.threshold for e in found[0].evidence)
    assert 95 <= found[0].median <= 105


def test_isolated_spikes_do_not_raise_anything() -> None:
    values = noisy(40, 1)
    for i in (25, 30, 35):
        values[i] = 1000.0
    values[31] = 1000.0  # two in a row is still short of three
    assert feed(Detector(SETTINGS), values) == []


def test_an_open_anomaly_does_not_flap_until_the_series_calms_down() -> None:
    detector = Detector(SETTINGS)
    base = noisy(40, 2)
    spike = [1000.0] * 3
    wobble = [1000.0, 100.0, 1000.0, 100.0, 1000.0]  # never three calm points in a row
    calm = noisy(3, 3)
    found = feed(detector, base + spike + wobble + spike + calm + spike)
    assert len(found) == 2  # the first spike, then only the one after the calm run


def test_a_drop_is_its_own_kind_and_direction_can_ignore_it() -> None:
    values = noisy(40, 4) + [1.0] * 3
    assert [d.kind for d in feed(Detector(SETTINGS), values)] == ["latency_ms_drop"]
    up_only = DetectorSettings(direction="up")
    assert feed(Detector(up_only), values) == []


def test_a_flat_series_tolerates_small_wobbles_thanks_to_the_mad_floor() -> None:
    values = [50.0] * 30 + [51.0, 52.0, 51.0] + [160.0] * 3
    found = feed(Detector(SETTINGS), values)
    assert [d.kind for d in found] == ["latency_ms_spike"]
    assert found[0].evidence[0].value == 160.0


def test_a_steady_rise_short_of_three_times_the_median_is_no_anomaly() -> None:
    # Far beyond the score threshold on so steady a series, but 50% slower is a busy
    # service, not a broken one: what answers an anomaly may be a restart.
    values = [100.0] * 30 + [150.0, 160.0, 170.0, 180.0, 190.0, 200.0]
    assert feed(Detector(SETTINGS), values) == []
    by_score_alone = DetectorSettings(window=60, min_points=20, min_ratio=1.0)
    assert [d.kind for d in feed(Detector(by_score_alone), values)] == ["latency_ms_spike"]
    three_times = values + [300.0] * 3
    assert [d.kind for d in feed(Detector(SETTINGS), three_times)] == ["latency_ms_spike"]


def test_errors_rising_from_none_are_an_anomaly_at_once() -> None:
    # A median of 0 (a healthy service's errors) has no ratio to reach.
    values = [0.0] * 30 + [2.0, 1.0, 3.0]
    found = feed(Detector(SETTINGS), values, metric="errors")
    assert [d.kind for d in found] == ["errors_spike"]


def test_a_lasting_level_shift_becomes_the_new_baseline() -> None:
    detector = Detector(SETTINGS)
    found = feed(detector, noisy(60, 5) + noisy(120, 6, center=400.0))
    assert len(found) == 1
    median, _ = detector.series[("ai_domain", "latency_ms")].baseline()
    assert 390 <= median <= 410
    assert not detector.series[("ai_domain", "latency_ms")].open


def test_nothing_is_judged_before_the_window_has_enough_points() -> None:
    assert feed(Detector(SETTINGS), [1.0] * 5 + [1e9] * 10) == []
