"""The bus's traffic tallies: each stored event counts once on its (source, type) edge."""

from __future__ import annotations

import pytest

from grace.eventbus.v1 import event_pb2
from services.common.call_metrics import TrafficKind
from services.eventbus.telemetry import BusTraffic


def test_a_batch_counts_each_event_on_its_edge_with_the_append_latency() -> None:
    traffic = BusTraffic()
    batch = [
        event_pb2.Event(source_domain="a", event_type="t.one"),
        event_pb2.Event(source_domain="b", event_type="t.one"),
        event_pb2.Event(source_domain="a", event_type="t.one"),
        event_pb2.Event(source_domain="a", event_type="t.two"),
    ]
    traffic.published(batch, 0.002)
    traffic.published(batch[:1], 0.004)
    edges = traffic.tallies.drain_traffic()
    assert {key: tally.count for key, tally in edges.items()} == {
        (TrafficKind.PUBLISH, "a", "t.one"): 3,
        (TrafficKind.PUBLISH, "b", "t.one"): 1,
        (TrafficKind.PUBLISH, "a", "t.two"): 1,
    }
    busiest = edges[(TrafficKind.PUBLISH, "a", "t.one")]
    assert busiest.errors == 0
    assert busiest.latency.sum_ms == pytest.approx(2.0 + 2.0 + 4.0)
    assert busiest.latency.max_ms == pytest.approx(4.0)
