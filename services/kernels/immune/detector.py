"""Anomaly detection: a robust baseline per series and a debounced threshold.

Each series (component, metric) keeps its last `window` values. Once it holds `min_points`
values, each new value x is scored against them with the robust z-score

    score = 0.6745 * (x - median) / max(MAD, mad_floor_fraction * |median|, mad_floor)

where MAD is the median absolute deviation from the median (0.6745 makes the score
comparable to a standard z-score for normal data; Iglewicz and Hoaglin's threshold is
3.5). The floor keeps a flat series (MAD = 0) from turning every wobble into an infinite
score. A point is *beyond* when |score| > threshold (and its direction is watched) and it
is also `min_ratio` times the median or more (a spike) or at most the median divided by it
(a drop): a steady series scores a 30% rise far beyond 3.5, but a service 30% slower under
load is not broken, and what answers an anomaly may be a restart. The default ratio, 3, is
seed 004's latency spike (`current_latency > baseline * 3`); 1 judges by the score alone.
A series whose median is 0 (errors of a healthy service) passes the ratio with any rise.

An anomaly is raised when `consecutive` points in a row are beyond on the same side: one
spike of a noisy series raises nothing. The series then stays *open*: no new anomaly until
`consecutive` points in a row are back within the threshold (hysteresis, so a series
hovering around the threshold does not flap). Every value joins the window, anomalous or
not: median and MAD ignore a minority of outliers, and a lasting level shift becomes the
new baseline after about window / 2 points instead of alarming for ever.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from services.kernels.immune.model import EvidencePoint

CONSISTENCY = 0.6745


@dataclass(frozen=True)
class DetectorSettings:
    """Detection parameters (see the module docstring).

    Attributes:
        window: Values kept per series.
        min_points: Values needed before points are judged.
        threshold: Robust z-score beyond which a point counts.
        consecutive: Points in a row needed to raise (and to clear) an anomaly.
        mad_floor_fraction: MAD floor relative to |median|.
        mad_floor: Absolute MAD floor.
        direction: "both", "up" (only spikes) or "down" (only drops).
        min_ratio: How many times the median a spike must reach (and a drop go under, as
            a divisor) to count; 1 for the score alone.
        max_series: Series tracked at most.
    """

    window: int = 60
    min_points: int = 20
    threshold: float = 3.5
    consecutive: int = 3
    mad_floor_fraction: float = 0.05
    mad_floor: float = 1e-3
    direction: str = "both"
    min_ratio: float = 3.0
    max_series: int = 10_000


@dataclass(frozen=True)
class Detection:
    """A series crossed the threshold for long enough."""

    kind: str
    median: float
    mad: float
    evidence: tuple[EvidencePoint, ...]


@dataclass
class Series:
    """The state of one series."""

    metric: str
    values: deque[float]
    run: list[EvidencePoint] = field(default_factory=list)
    run_sign: int = 0
    open: bool = False
    calm: int = 0
    last_median: float = 0.0
    last_mad: float = 0.0

    def baseline(self) -> tuple[float, float]:
        """Median and MAD of the window."""
        median = statistics.median(self.values)
        mad = statistics.median(abs(v - median) for v in self.values)
        return median, mad


def _far_enough(value: float, median: float, ratio: float) -> bool:
    """True when `value` is at least `ratio` times `median` away from it, as a spike
    (value >= median * ratio) or a drop (value <= median / ratio), for either sign."""
    change = abs(value - median)
    if value > median:
        return change >= (ratio - 1) * abs(median)
    return change >= (1 - 1 / ratio) * abs(median)


def robust_score(value: float, median: float, mad: float, settings: DetectorSettings) -> float:
    """The robust z-score of `value`, with the MAD floor applied."""
    floor = max(mad, settings.mad_floor_fraction * abs(median), settings.mad_floor)
    return CONSISTENCY * (value - median) / floor


class Detector:
    """Baselines of every series and the anomaly rule.

    Args:
        settings: Detection parameters.
    """

    def __init__(self, settings: DetectorSettings) -> None:
        self.settings = settings
        self.series: dict[tuple[str, str], Series] = {}
        self.points = 0

    def observe(self, component: str, metric: str, value: float, when: float) -> Detection | None:
        """Scores a value, adds it to its series, and returns a detection when this value
        completes a run of `consecutive` points beyond the threshold."""
        if not math.isfinite(value):
            raise ValueError(f"value {value!r} is not finite")
        key = (component, metric)
        series = self.series.get(key)
        if series is None:
            if len(self.series) >= self.settings.max_series:
                raise OverflowError(f"at most {self.settings.max_series} series are tracked")
            series = Series(metric, deque(maxlen=self.settings.window))
            self.series[key] = series
        self.points += 1
        detection = None
        if len(series.values) >= self.settings.min_points:
            median, mad = series.baseline()
            series.last_median, series.last_mad = median, mad
            detection = self._judge(series, value, when, median, mad)
        series.values.append(value)
        return detection

    def _watched(self, score: float, value: float, median: float) -> bool:
        if abs(score) <= self.settings.threshold:
            return False
        direction = self.settings.direction
        if (direction == "up" and score < 0) or (direction == "down" and score > 0):
            return False
        return _far_enough(value, median, self.settings.min_ratio)

    def _judge(
        self, series: Series, value: float, when: float, median: float, mad: float
    ) -> Detection | None:
        score = robust_score(value, median, mad, self.settings)
        beyond = self._watched(score, value, median)
        needed = self.settings.consecutive
        if series.open:
            series.calm = 0 if beyond else series.calm + 1
            if series.calm >= needed:
                series.open = False
                series.calm = 0
            return None
        if not beyond:
            series.run, series.run_sign = [], 0
            return None
        sign = 1 if score > 0 else -1
        if sign != series.run_sign:
            series.run, series.run_sign = [], sign
        series.run.append(EvidencePoint(value, score, when))
        if len(series.run) < needed:
            return None
        evidence = tuple(series.run)
        series.run, series.run_sign, series.open, series.calm = [], 0, True, 0
        suffix = "spike" if sign > 0 else "drop"
        floor = max(mad, self.settings.mad_floor_fraction * abs(median), self.settings.mad_floor)
        return Detection(f"{series.metric}_{suffix}", median, floor, evidence)
