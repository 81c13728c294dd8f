"""Call latency and errors, and who talks to whom, reported to the immune kernel.

Components that serve or forward calls (the SDK's domains, the gateway) tally each call in
a `CallTallies` (per component: calls, errors, summed latency; cheap, no I/O) and run an
`ImmuneReporter`, which every `interval_s` drains the tallies and sends one
`ReportMetrics` with, per component that had calls in the interval, three points:

- `<prefix>latency_ms`: mean latency of the interval's calls;
- `<prefix>errors`: how many of them failed;
- `<prefix>error_rate`: errors / calls.

The same request carries the interval's traffic tallies: per edge (kind, source, target)
the count, the errors and a latency histogram with the bucket bounds every reporter shares
(`services.common.latency_histogram`). A domain records the calls it serves with their
caller (`TrafficKind.CALL`), the orchestrator its workflow steps (`STEP`), the event bus
publishes and deliveries (`PUBLISH`, `DELIVERY`). The immune kernel adds them up into the
cross-domain telemetry and the collaboration graph (`services.kernels.immune.telemetry`).

So the immune kernel gets one small request per interval, never one per call. An interval
without calls reports nothing (no sample is not a zero). The reporter never blocks or fails
its component: the request has a short deadline, and when the kernel is down the
interval's figures are dropped (logged once until it answers again), not queued.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field

import grpc

from grace.kernels.immune.v1 import immune_pb2, immune_pb2_grpc
from services.common.access import DOMAIN_PREFIX, Principal
from services.common.channels import channel
from services.common.latency_histogram import LatencyHistogram
from services.common.timestamps import to_timestamp

log = logging.getLogger(__name__)

# Distinct edges kept per interval; the proto's limit per report. A flood of distinct
# callers or event types beyond it is counted in `dropped`, not reported.
MAX_TRAFFIC_PER_REPORT = 1000
_COMPONENT_PREFIX = "component:"
PERSON_PREFIX = "user:"
WORKFLOW_PREFIX = "workflow:"


class TrafficKind(enum.Enum):
    """What a traffic tally counts (values are `immune_pb2.TrafficKind`'s)."""

    CALL = immune_pb2.TRAFFIC_KIND_CALL
    PUBLISH = immune_pb2.TRAFFIC_KIND_PUBLISH
    DELIVERY = immune_pb2.TRAFFIC_KIND_DELIVERY
    STEP = immune_pb2.TRAFFIC_KIND_STEP


def caller_of(principal: Principal | None) -> str:
    """The graph's name for the authenticated caller of a call: its domain or component id,
    `user:<name>` for a person, "" when the server runs without security."""
    if principal is None:
        return ""
    domains = sorted(principal.domains)
    if domains:
        return domains[0]
    if principal.name.startswith(_COMPONENT_PREFIX):
        return principal.name[len(_COMPONENT_PREFIX) :]
    if principal.name.startswith(DOMAIN_PREFIX):
        return principal.name[len(DOMAIN_PREFIX) :]
    return PERSON_PREFIX + principal.name


@dataclass
class EdgeTally:
    """Traffic of one edge since the last drain."""

    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @property
    def count(self) -> int:
        """Calls, events or deliveries counted."""
        return self.latency.count


TrafficKey = tuple[TrafficKind, str, str]
"""(kind, source, target) of an edge."""


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
        self._traffic: dict[TrafficKey, EdgeTally] = {}
        self.dropped = 0

    def record(
        self, component: str, latency_s: float, *, error: bool, caller: str | None = None
    ) -> None:
        """Counts one finished call; with `caller`, also as a CALL edge caller -> component."""
        tally = self._tallies.get(component)
        if tally is None:
            tally = self._tallies[component] = CallTally()
        tally.calls += 1
        tally.errors += int(error)
        tally.latency_ms_sum += latency_s * 1000.0
        if caller is not None:
            self.record_edge(TrafficKind.CALL, caller, component, latency_s, error=error)

    def record_edge(
        self,
        kind: TrafficKind,
        source: str,
        target: str,
        latency_s: float,
        *,
        error: bool,
        times: int = 1,
    ) -> None:
        """Counts one call, publish or delivery on the edge source -> target (`times` of
        them with the same latency and outcome, e.g. the events of one stored batch)."""
        key = (kind, source, target)
        tally = self._traffic.get(key)
        if tally is None:
            if len(self._traffic) >= MAX_TRAFFIC_PER_REPORT:
                self.dropped += times
                return
            tally = self._traffic[key] = EdgeTally()
        if error:
            tally.errors += times
        tally.latency.add(latency_s * 1000.0, times)

    def drain(self) -> dict[str, CallTally]:
        """The per-component tallies so far; counting starts again from zero."""
        tallies, self._tallies = self._tallies, {}
        return tallies

    def drain_traffic(self) -> dict[TrafficKey, EdgeTally]:
        """The edge tallies so far; counting starts again from zero."""
        traffic, self._traffic = self._traffic, {}
        return traffic


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


def traffic_tallies(traffic: dict[TrafficKey, EdgeTally]) -> list[immune_pb2.TrafficTally]:
    """The wire form of drained edge tallies (edges without traffic skipped)."""
    return [
        immune_pb2.TrafficTally(
            kind=kind.value,
            source=source,
            target=target,
            errors=tally.errors,
            latency=immune_pb2.LatencyHistogram(
                counts=tally.latency.counts,
                sum_ms=tally.latency.sum_ms,
                max_ms=tally.latency.max_ms,
            ),
        )
        for (kind, source, target), tally in sorted(
            traffic.items(), key=lambda item: (item[0][0].value, item[0][1], item[0][2])
        )
        if tally.count
    ]


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
        """Drains the tallies and reports them; returns the number of points and traffic
        tallies sent (0 when there was nothing to report or the kernel did not answer)."""
        points = metric_points(self.tallies.drain(), prefix=self.prefix)
        traffic = traffic_tallies(self.tallies.drain_traffic())
        if not points and not traffic:
            return 0
        if self._stub is None:
            self._channel = channel(self.target)
            self._stub = immune_pb2_grpc.ImmuneServiceStub(self._channel)
        try:
            await self._stub.ReportMetrics(
                immune_pb2.ReportMetricsRequest(points=points, traffic=traffic),
                timeout=self.timeout_s,
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
        return len(points) + len(traffic)

    async def close(self) -> None:
        """Closes the channel."""
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None
