"""What the bus tells the unified telemetry: who publishes what, and who receives whose events.

The bus counts, per interval, publishes per (source domain, event type) with the time the
append took, and push deliveries per (source domain -> subscriber) with the time the
delivery took (all attempts; a dead-lettered event is an error). Its `ImmuneReporter`
sends them to the immune kernel with its metrics, once per interval (see
`services.common.call_metrics`). Counting is in memory and never blocks publishing.
"""

from __future__ import annotations

from collections.abc import Iterable

from grace.eventbus.v1 import event_pb2
from services.common.call_metrics import CallTallies, TrafficKind


class BusTraffic:
    """The bus's traffic tallies since the last report."""

    def __init__(self) -> None:
        self.tallies = CallTallies()

    def published(self, events: Iterable[event_pb2.Event], latency_s: float) -> None:
        """Counts stored events; `latency_s` is how long their append took.

        The events of one append share its latency, so each edge (source, type) is counted
        once per call with its number of events, not once per event: this runs on every
        publish and a batch's events mostly share a few edges. Runs of one edge are counted
        as they go, so the common batch builds no key per event.
        """
        edges: dict[tuple[str, str], int] = {}
        source = event_type = ""
        run = 0
        for event in events:
            if event.source_domain != source or event.event_type != event_type:
                if run:
                    edges[source, event_type] = edges.get((source, event_type), 0) + run
                source, event_type, run = event.source_domain, event.event_type, 0
            run += 1
        if run:
            edges[source, event_type] = edges.get((source, event_type), 0) + run
        record = self.tallies.record_edge
        for (source, event_type), times in edges.items():
            record(TrafficKind.PUBLISH, source, event_type, latency_s, error=False, times=times)

    def delivered(
        self, event: event_pb2.Event, subscriber: str, latency_s: float, *, ok: bool
    ) -> None:
        """Counts one push delivery, acknowledged (`ok`) or dead-lettered."""
        self.tallies.record_edge(
            TrafficKind.DELIVERY, event.source_domain, subscriber, latency_s, error=not ok
        )
