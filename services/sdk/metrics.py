"""What a domain measures about itself and reports with every heartbeat.

- load: calls in flight (running or waiting for a slot) divided by the domain's maximum
  concurrency, clamped to [0, 1];
- latency: an exponentially weighted moving average of action latency in milliseconds,
  `ewma = alpha * sample + (1 - alpha) * ewma` with alpha 0.2, seeded by the first sample;
- success rate: the fraction of the last 100 finished calls that succeeded (1 before any).

Calls refused for the caller's fault (bad input, unknown action) are counted in neither
latency nor success: they say nothing about the domain's health.

The same calls are also tallied per heartbeat interval (`tallies`), with their callers: the
domain's `ImmuneReporter` sends their mean latency, error count and error rate, and per
caller the calls, errors and latency histogram (the collaboration graph's CALL edges), to
the immune kernel (see `services.common.call_metrics`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from grace.registry.v1 import registry_pb2
from services.common.call_metrics import CallTallies

EWMA_ALPHA = 0.2
SUCCESS_WINDOW = 100


@dataclass(frozen=True)
class MetricsSnapshot:
    """Metrics at one instant, as sent in a heartbeat."""

    load: float
    latency_ms: float
    success_rate: float
    in_flight: int
    calls: int

    def to_proto(self) -> registry_pb2.DomainMetrics:
        """The heartbeat form of these metrics."""
        return registry_pb2.DomainMetrics(
            load=self.load, latency_ms=self.latency_ms, success_rate=self.success_rate
        )


class CallMetrics:
    """Running measurements of a domain's calls.

    Args:
        max_concurrency: The domain's concurrency limit; load is relative to it.
        component: Name the interval tallies are kept under (the domain id).
    """

    def __init__(self, max_concurrency: int, component: str = "") -> None:
        self.max_concurrency = max_concurrency
        self.component = component
        self.tallies = CallTallies()
        self.in_flight = 0
        self.calls = 0
        self._latency_ms: float | None = None
        self._outcomes: deque[bool] = deque(maxlen=SUCCESS_WINDOW)

    def started(self) -> None:
        """A call arrived."""
        self.in_flight += 1

    def finished(self, latency_s: float, *, success: bool | None, caller: str = "") -> None:
        """A call ended; `success` None means it is not counted (caller's fault). `caller`
        is who made it (see `call_metrics.caller_of`)."""
        self.in_flight -= 1
        if success is None:
            return
        self.calls += 1
        self.tallies.record(self.component, latency_s, error=not success, caller=caller)
        sample = latency_s * 1000.0
        if self._latency_ms is None:
            self._latency_ms = sample
        else:
            self._latency_ms = EWMA_ALPHA * sample + (1 - EWMA_ALPHA) * self._latency_ms
        self._outcomes.append(success)

    def snapshot(self) -> MetricsSnapshot:
        """The current figures."""
        rate = sum(self._outcomes) / len(self._outcomes) if self._outcomes else 1.0
        return MetricsSnapshot(
            load=min(1.0, self.in_flight / self.max_concurrency),
            latency_ms=self._latency_ms or 0.0,
            success_rate=rate,
            in_flight=self.in_flight,
            calls=self.calls,
        )
