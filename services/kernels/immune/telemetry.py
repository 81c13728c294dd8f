"""Unified telemetry: the traffic every component reports, added up over a window.

Reporters send, once per interval, their traffic tallies: per edge (kind, source, target)
a count, errors and a latency histogram (see `services.common.call_metrics`). The kernel
adds each report into the time slot it arrived in (`slot_s`, 10 s by default; the slots are
kept compactly by `services.kernels.immune.slots`), so what is stored grows with the number
of edges and the retention, never with the number of calls or reports. A window is the sum
of the slots it covers, bucket by bucket, which is why the p99 of a window is exact up to
its bucket (see `services.common.latency_histogram`), where averaging the p99s of
intervals would be wrong.

From a window's traffic:

- the cross-domain figures (`summarize`): calls served by every domain, their errors,
  mean and p99 latency; events published and delivered; the collaboration rate, the share
  of calls and deliveries that cross domains (a call made by another domain or component,
  a person's call is not collaboration; a delivery to a subscriber that is not the
  publisher); and per domain its figures and health;
- the collaboration graph (`graph`): every edge with its count, errors and latency.

Everything here is plain Python over traffic maps; the kernel (`Immune`) persists the slots
it touches.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.common.call_metrics import (
    PERSON_PREFIX,
    WORKFLOW_PREFIX,
    EdgeTally,
    TrafficKey,
    TrafficKind,
)
from services.common.latency_histogram import LatencyHistogram

# Failure share from which a domain is degraded, and failing.
DEGRADED_FAILURE_SHARE = 0.05
FAILING_FAILURE_SHARE = 0.5


class DomainHealth(enum.Enum):
    """A domain's health as its traffic shows it (values are the proto enum's names)."""

    HEALTHY = "DOMAIN_HEALTH_HEALTHY"
    DEGRADED = "DOMAIN_HEALTH_DEGRADED"
    FAILING = "DOMAIN_HEALTH_FAILING"


@dataclass(frozen=True)
class TelemetrySettings:
    """How traffic is kept.

    Attributes:
        slot_s: Width of a storage slot; windows start on a slot boundary.
        retention_s: How long slots are kept; the longest window.
        default_window_s: The window when a request names none.
        max_edges_per_slot: Distinct edges kept per slot; more are dropped and counted.
    """

    slot_s: float = 10.0
    retention_s: float = 3600.0
    default_window_s: float = 300.0
    max_edges_per_slot: int = 5000


def crosses_domains(kind: TrafficKind, source: str, target: str) -> bool:
    """True for traffic between two different domains or components: a call made by
    another domain or component (not a person, not an unknown caller), a delivery to a
    subscriber other than the publisher. Publishes and workflow steps are not pairs of
    domains."""
    if kind is TrafficKind.CALL:
        return bool(source) and not source.startswith(PERSON_PREFIX) and source != target
    if kind is TrafficKind.DELIVERY:
        return bool(source) and source != target
    return False


def copy_tally(tally: EdgeTally) -> EdgeTally:
    """An independent copy (merging into it leaves the original alone)."""
    latency = LatencyHistogram(
        list(tally.latency.counts), tally.latency.sum_ms, tally.latency.max_ms
    )
    return EdgeTally(tally.errors, latency)


def merge_into(total: dict[TrafficKey, EdgeTally], part: Mapping[TrafficKey, EdgeTally]) -> None:
    """Adds `part`'s tallies into `total`, edge by edge."""
    for key, tally in part.items():
        mine = total.get(key)
        if mine is None:
            total[key] = copy_tally(tally)
        else:
            mine.errors += tally.errors
            mine.latency.merge(tally.latency)


def merged(parts: Iterable[Mapping[TrafficKey, EdgeTally]]) -> dict[TrafficKey, EdgeTally]:
    """The sum of several traffic maps."""
    total: dict[TrafficKey, EdgeTally] = {}
    for part in parts:
        merge_into(total, part)
    return total


@dataclass(frozen=True)
class DomainFigures:
    """One domain's figures over a window (see `GetTelemetryResponse.domains`)."""

    domain_id: str
    requests: int
    errors: int
    error_rate: float
    avg_latency_ms: float
    p99_latency_ms: float
    calls_made: int
    events_published: int
    events_received: int
    deliveries_failed: int
    health: DomainHealth
    open_anomalies: tuple[str, ...]


@dataclass(frozen=True)
class Telemetry:
    """The cross-domain figures of a window (see `GetTelemetryResponse`)."""

    window_start: float
    window_end: float
    total_requests: int
    errors: int
    error_rate: float
    avg_latency_ms: float
    p99_latency_ms: float
    collaboration_rate: float
    cross_domain_calls: int
    events_published: int
    events_delivered: int
    cross_domain_deliveries: int
    workflow_steps: int
    system_health: float
    domains: tuple[DomainFigures, ...]


@dataclass(frozen=True)
class Edge:
    """One edge of the collaboration graph."""

    kind: TrafficKind
    source: str
    target: str
    count: int
    errors: int
    avg_latency_ms: float
    p99_latency_ms: float


@dataclass(frozen=True)
class Graph:
    """The collaboration graph of a window."""

    window_start: float
    window_end: float
    nodes: tuple[str, ...]
    edges: tuple[Edge, ...]


def _is_domain(name: str) -> bool:
    return bool(name) and not name.startswith((PERSON_PREFIX, WORKFLOW_PREFIX))


def health_of(failures: int, attempts: int, anomalies: Sequence[str]) -> DomainHealth:
    """Failing from half of the calls and deliveries failed; degraded from 5% or with a
    series in anomaly; healthy otherwise."""
    share = failures / attempts if attempts else 0.0
    if share >= FAILING_FAILURE_SHARE:
        return DomainHealth.FAILING
    if share >= DEGRADED_FAILURE_SHARE or anomalies:
        return DomainHealth.DEGRADED
    return DomainHealth.HEALTHY


@dataclass
class _DomainCounts:
    served: LatencyHistogram
    errors: int = 0
    calls_made: int = 0
    published: int = 0
    received: int = 0
    deliveries_failed: int = 0


def summarize(
    traffic: Mapping[TrafficKey, EdgeTally],
    open_anomalies: Mapping[str, Sequence[str]],
    window_start: float,
    window_end: float,
) -> Telemetry:
    """The cross-domain figures of a window's traffic.

    Args:
        traffic: The window's tallies, merged.
        open_anomalies: Per component, its series in anomaly now.
        window_start: Start of the window (epoch seconds).
        window_end: End of the window.
    """
    served = LatencyHistogram()
    errors = cross_calls = published = delivered = cross_deliveries = steps = 0
    delivery_errors = 0
    domains: dict[str, _DomainCounts] = {}

    def domain(name: str) -> _DomainCounts:
        counts = domains.get(name)
        if counts is None:
            counts = domains[name] = _DomainCounts(LatencyHistogram())
        return counts

    for (kind, source, target), tally in traffic.items():
        count = tally.count
        if kind is TrafficKind.CALL:
            served.merge(tally.latency)
            errors += tally.errors
            callee = domain(target)
            callee.served.merge(tally.latency)
            callee.errors += tally.errors
            if crosses_domains(kind, source, target):
                cross_calls += count
                domain(source).calls_made += count
        elif kind is TrafficKind.PUBLISH:
            published += count
            if _is_domain(source):
                domain(source).published += count
        elif kind is TrafficKind.DELIVERY:
            delivered += count
            delivery_errors += tally.errors
            if crosses_domains(kind, source, target):
                cross_deliveries += count
            subscriber = domain(target)
            subscriber.received += count
            subscriber.deliveries_failed += tally.errors
        elif kind is TrafficKind.STEP:
            steps += count
            if _is_domain(target):
                domain(target)
    figures = []
    for name in sorted(domains):
        d = domains[name]
        requests = d.served.count
        anomalies = tuple(sorted(open_anomalies.get(name, ())))
        figures.append(
            DomainFigures(
                domain_id=name,
                requests=requests,
                errors=d.errors,
                error_rate=d.errors / requests if requests else 0.0,
                avg_latency_ms=d.served.mean_ms,
                p99_latency_ms=d.served.quantile_ms(0.99),
                calls_made=d.calls_made,
                events_published=d.published,
                events_received=d.received,
                deliveries_failed=d.deliveries_failed,
                health=health_of(d.errors + d.deliveries_failed, requests + d.received, anomalies),
                open_anomalies=anomalies,
            )
        )
    total = served.count
    pairs = total + delivered
    healthy = sum(1 for f in figures if f.health is DomainHealth.HEALTHY)
    return Telemetry(
        window_start=window_start,
        window_end=window_end,
        total_requests=total,
        errors=errors,
        error_rate=errors / total if total else 0.0,
        avg_latency_ms=served.mean_ms,
        p99_latency_ms=served.quantile_ms(0.99),
        collaboration_rate=(cross_calls + cross_deliveries) / pairs if pairs else 0.0,
        cross_domain_calls=cross_calls,
        events_published=published,
        events_delivered=delivered,
        cross_domain_deliveries=cross_deliveries,
        workflow_steps=steps,
        system_health=healthy / len(figures) if figures else 1.0,
        domains=tuple(figures),
    )


def graph(
    traffic: Mapping[TrafficKey, EdgeTally],
    window_start: float,
    window_end: float,
    kind: TrafficKind | None = None,
) -> Graph:
    """The collaboration graph of a window's traffic, optionally one kind of edge only."""
    edges = [
        Edge(
            kind=k,
            source=source,
            target=target,
            count=tally.count,
            errors=tally.errors,
            avg_latency_ms=tally.latency.mean_ms,
            p99_latency_ms=tally.latency.quantile_ms(0.99),
        )
        for (k, source, target), tally in traffic.items()
        if tally.count and (kind is None or k is kind)
    ]
    edges.sort(key=lambda e: (e.kind.value, e.source, e.target))
    nodes = sorted({e.source for e in edges} | {e.target for e in edges})
    return Graph(window_start, window_end, tuple(nodes), tuple(edges))
