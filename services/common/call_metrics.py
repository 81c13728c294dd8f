"""Call latency and errors, reported to the immune kernel automatically (issue 9).

Components that serve or forward calls (the SDK's domains, the gateway) tally each call in
a `CallTallies` (per component: calls, errors, summed latency; cheap, no I/O) and run an
`ImmuneReporter`, which every `interval_s` drains the tallies and sends, per component
that had calls in the interval, one `ReportMetrics` with three points:

- `<prefix>latency_ms`: mean latency of the interval's calls;
- `<prefix>errors`: how many of them failed;
- `<prefix>error_rate`: errors / calls.

So the immune kernel gets one small request per interval, never one per call. An interval
without calls reports nothing (no sample is not a zero). The reporter never blocks or fails
its component: the request has a short deadline, and when the kernel is down the
interval's figures are dropped (logged once until it answers again), not queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from grace.kernels.immune.v1 import immune_pb2, immune_pb2_grpc
from services.common.channels import channel
from services.common.timestamps import to_timestamp

log = logging.getLogger(__name__)


@dataclass
class CallTally:
    """Calls of one component since the last drain."""

    calls: int = 0
    errors: int = 0
    latency_ms_sum: float = 0.0

    @property
    def mean_latency_ms(self) -> float:
        """Mean latency of the tallied calls (0 without calls)."""
        return self.latency_ms_sum / self.calls if self.calls else 0.0


class CallTallies:
    """Per-component tallies of calls since the last `drain`."""

    def __init__(self) -> None:
        self._tallies: dict[str, CallTally] = {}

    def record(self, component: str, latency_s: float, *, error: bool) -> None:
        """Counts one finished call."""
        tally = self._tallies.get(component)
        if tally is None:
            tally = self._tallies[component] = CallTally()
        tally.calls += 1
        tally.errors += int(error)
        tally.latency_ms_sum += latency_s * 1000.0

    def drain(self) -> dict[str, CallTally]:
        """The tallies so far; counting starts again from zero."""
        tallies, self._tallies = self._tallies, {}
        return tallies


def metric_points(
    tallies: dict[str, CallTally], *, prefix: str = "", at: float | None = None
) -> list[immune_pb2.MetricPoint]:
    """The points reported for drained tallies (components without calls skipped)."""
    when = to_timestamp(time.time() if at is None else at)
    points: list[immune_pb2.MetricPoint] = []
    for component, tally in sorted(tallies.items()):
        if not tally.calls:
            continue
        for metric, value in (
            ("latency_ms", tally.mean_latency_ms),
            ("errors", float(tally.errors)),
            ("error_rate", tally.errors / tally.calls),
        ):
            points.append(
                immune_pb2.MetricPoint(
                    component=component, metric=prefix + metric, value=value, time=when
                )
            )
    return points


class ImmuneReporter:
    """Sends the tallies to the immune kernel every interval.

    Args:
        target: The immune kernel's `host:port`.
        tallies: What to drain and report.
        interval_s: Time between reports.
        prefix: Put before each metric name (the gateway's `gateway_`), so series measured
            at different places stay apart.
        timeout_s: Deadline of one report.
    """

    def __init__(
        self,
        target: str,
        tallies: CallTallies,
        *,
        interval_s: float,
        prefix: str = "",
        timeout_s: float = 2.0,
    ) -> None:
        self.target = target
        self.tallies = tallies
        self.interval_s = interval_s
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.reports = 0
        self.failures = 0
        self._channel: grpc.aio.Channel | None = None
        self._stub: immune_pb2_grpc.ImmuneServiceAsyncStub | None = None
        self._down = False

    async def run(self) -> None:
        """Reports every interval until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.report_once()

    async def report_once(self) -> int:
        """Drains the tallies and reports them; returns the number of points accepted
        (0 when there was nothing to report or the kernel did not answer)."""
        points = metric_points(self.tallies.drain(), prefix=self.prefix)
        if not points:
            return 0
        if self._stub is None:
            self._channel = channel(self.target)
            self._stub = immune_pb2_grpc.ImmuneServiceStub(self._channel)
        try:
            await self._stub.ReportMetrics(
                immune_pb2.ReportMetricsRequest(points=points), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            self.failures += 1
            if not self._down:
                log.warning(
                    "immune kernel at %s did not take call metrics (%s); dropping them "
                    "until it answers",
                    self.target,
                    exc.code().name,
                )
            self._down = True
            return 0
        if self._down:
            log.info("immune kernel at %s takes call metrics again", self.target)
        self._down = False
        self.reports += 1
        return len(points)

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
