"""The unified telemetry's core without gRPC: a window's figures, the collaboration rate,
the graph's edges, slots and retention, and the durable record across a restart."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.call_metrics import CallTallies, EdgeTally, TrafficKey, TrafficKind
from services.common.errors import InvalidArgument
from services.common.latency_histogram import LatencyHistogram
from services.common.storage import Database
from services.kernels.immune.slots import TrafficWindow
from services.kernels.immune.store import ImmuneStore
from services.kernels.immune.telemetry import (
    DomainHealth,
    TelemetrySettings,
    crosses_domains,
    graph,
    merged,
    summarize,
)
from services.kernels.immune.traffic import TrafficRecord
from tests.conftest import DatabaseTarget

CALL, PUBLISH, DELIVERY, STEP = (
    TrafficKind.CALL,
    TrafficKind.PUBLISH,
    TrafficKind.DELIVERY,
    TrafficKind.STEP,
)


def tally(*latencies_ms: float, errors: int = 0) -> EdgeTally:
    h = LatencyHistogram()
    for ms in latencies_ms:
        h.add(ms)
    return EdgeTally(errors, h)


def seed_traffic() -> dict[TrafficKey, EdgeTally]:
    """The document workflow once per call, a person's call, the bus's share."""
    return {
        (CALL, "orchestrator", "data_domain"): tally(4, 4, 4, 4),
        (CALL, "orchestrator", "ai_domain"): tally(30, 30, 30, 500, errors=1),
        (CALL, "user:alice", "ai_domain"): tally(10, 10),
        (CALL, "", "data_domain"): tally(2, 2),  # a server without security: unknown caller
        (STEP, "workflow:process_document", "data_domain"): tally(5, 5, 5, 5),
        (PUBLISH, "data_domain", "document.ingested"): tally(1, 1, 1),
        (DELIVERY, "data_domain", "ai_domain"): tally(3, 3),
        (DELIVERY, "data_domain", "data_domain"): tally(3),  # its own event: not collaboration
    }


def test_figures_add_up_every_call_served_and_only_domain_to_domain_is_collaboration() -> None:
    t = summarize(seed_traffic(), {}, 100.0, 400.0)
    assert t.total_requests == 12
    assert t.errors == 1
    assert t.error_rate == pytest.approx(1 / 12)
    assert t.avg_latency_ms == pytest.approx((16 + 590 + 20 + 4) / 12)
    assert t.p99_latency_ms == 500.0  # the slowest call's bucket (256, 512] capped by the max
    assert t.cross_domain_calls == 8  # the orchestrator's; alice's and the unknown caller's not
    assert t.events_published == 3
    assert t.events_delivered == 3
    assert t.cross_domain_deliveries == 2
    assert t.workflow_steps == 4
    assert t.collaboration_rate == pytest.approx((8 + 2) / (12 + 3))
    assert (t.window_start, t.window_end) == (100.0, 400.0)


def test_each_domain_gets_its_own_figures_and_a_health_from_its_failures_and_anomalies() -> None:
    traffic = seed_traffic()
    traffic[(CALL, "orchestrator", "memory_domain")] = tally(1, 1, errors=2)
    t = summarize(traffic, {"data_domain": ["latency_ms"]}, 0.0, 1.0)
    by_id = {d.domain_id: d for d in t.domains}
    assert list(by_id) == sorted(by_id)
    ai = by_id["ai_domain"]
    assert (ai.requests, ai.errors, ai.events_received) == (6, 1, 2)
    assert ai.error_rate == pytest.approx(1 / 6)
    assert ai.health is DomainHealth.DEGRADED  # 1 failure in 8 calls and deliveries
    data = by_id["data_domain"]
    assert (data.requests, data.events_published) == (6, 3)
    assert data.health is DomainHealth.DEGRADED  # no failure, but its latency is in anomaly
    assert data.open_anomalies == ("latency_ms",)
    assert by_id["memory_domain"].health is DomainHealth.FAILING
    assert by_id["orchestrator"].calls_made == 10
    assert by_id["orchestrator"].health is DomainHealth.HEALTHY
    assert "user:alice" not in by_id
    assert "workflow:process_document" not in by_id
    assert t.system_health == pytest.approx(1 / 4)


def test_no_traffic_is_no_collaboration_and_a_healthy_empty_system() -> None:
    t = summarize({}, {}, 0.0, 1.0)
    assert (t.total_requests, t.collaboration_rate, t.p99_latency_ms, t.system_health) == (
        0,
        0.0,
        0.0,
        1.0,
    )


@pytest.mark.parametrize(
    ("kind", "source", "target", "crosses"),
    [
        (CALL, "ai_domain", "data_domain", True),
        (CALL, "orchestrator", "data_domain", True),
        (CALL, "data_domain", "data_domain", False),
        (CALL, "user:alice", "data_domain", False),
        (CALL, "", "data_domain", False),
        (DELIVERY, "data_domain", "ai_domain", True),
        (DELIVERY, "data_domain", "data_domain", False),
        (PUBLISH, "data_domain", "document.ingested", False),
        (STEP, "workflow:w", "data_domain", False),
    ],
)
def test_what_crosses_domains(kind: TrafficKind, source: str, target: str, crosses: bool) -> None:
    assert crosses_domains(kind, source, target) is crosses


def test_the_graph_lists_every_edge_with_its_count_errors_and_latency() -> None:
    g = graph(seed_traffic(), 0.0, 1.0)
    edges = {(e.kind, e.source, e.target): e for e in g.edges}
    ai = edges[(CALL, "orchestrator", "ai_domain")]
    assert (ai.count, ai.errors, ai.p99_latency_ms) == (4, 1, 500.0)
    assert ai.avg_latency_ms == pytest.approx(590 / 4)
    assert edges[(DELIVERY, "data_domain", "ai_domain")].count == 2
    assert "document.ingested" in g.nodes
    assert "orchestrator" in g.nodes
    only_calls = graph(seed_traffic(), 0.0, 1.0, CALL)
    assert {e.kind for e in only_calls.edges} == {CALL}
    assert len(only_calls.edges) == 4


def test_a_window_sums_the_slots_it_overlaps_and_retention_forgets_old_ones() -> None:
    window = TrafficWindow(TelemetrySettings(slot_s=10, retention_s=60))
    key = (CALL, "orchestrator", "ai_domain")
    window.add({key: tally(1)}, now=1000.0)
    window.add({key: tally(2)}, now=1005.0)  # same slot [1000, 1010)
    window.add({key: tally(3, errors=1)}, now=1041.0)
    assert sorted(window.slots) == [1000.0, 1040.0]
    start, last_20s = window.window(20, now=1045.0)
    assert start == 1020.0
    assert last_20s[key].count == 1
    assert last_20s[key].errors == 1
    start, all_of_it = window.window(60, now=1045.0)
    assert start == 980.0
    assert all_of_it[key].count == 3
    assert window.prune(now=1075.0) == 1010.0
    assert sorted(window.slots) == [1040.0]


def test_a_slot_keeps_a_bounded_number_of_edges() -> None:
    window = TrafficWindow(TelemetrySettings(max_edges_per_slot=2))
    _, touched = window.add({(CALL, f"caller{i}", "ai_domain"): tally(1) for i in range(5)}, 0.0)
    assert len(touched) == 2
    assert window.dropped == 3


def test_reporter_tallies_become_call_edges_with_their_callers() -> None:
    tallies = CallTallies()
    tallies.record("ai_domain", 0.010, error=False, caller="orchestrator")
    tallies.record("ai_domain", 0.020, error=True, caller="orchestrator")
    tallies.record("ai_domain", 0.005, error=False)  # no caller: a component tally only
    per_component = tallies.drain()
    traffic = tallies.drain_traffic()
    assert per_component["ai_domain"].calls == 3
    edge = traffic[(CALL, "orchestrator", "ai_domain")]
    assert (edge.count, edge.errors, edge.latency.max_ms) == (2, 1, 20.0)
    assert tallies.drain_traffic() == {}


edge_keys = st.tuples(
    st.sampled_from([CALL, DELIVERY]),
    st.sampled_from(["a", "b", "user:p", ""]),
    st.sampled_from(["a", "b", "c"]),
)
reports = st.dictionaries(
    edge_keys,
    st.lists(st.floats(min_value=0, max_value=5000), min_size=1, max_size=5).map(
        lambda ms: tally(*ms)
    ),
    max_size=6,
)


@given(st.lists(reports, max_size=5))
def test_the_rate_is_a_share_and_splitting_reports_does_not_change_the_figures(
    parts: list[dict[TrafficKey, EdgeTally]],
) -> None:
    whole = summarize(merged(parts), {}, 0.0, 1.0)
    assert 0.0 <= whole.collaboration_rate <= 1.0
    halves = merged([merged(parts[: len(parts) // 2]), merged(parts[len(parts) // 2 :])])
    again = summarize(halves, {}, 0.0, 1.0)
    assert again.total_requests == whole.total_requests
    assert again.collaboration_rate == pytest.approx(whole.collaboration_rate)
    assert again.p99_latency_ms == whole.p99_latency_ms


async def test_the_record_survives_a_restart_and_refuses_what_cannot_be_traffic(
    database: DatabaseTarget,
) -> None:
    now = [1000.0]
    settings = TelemetrySettings(slot_s=10, retention_s=120)
    store = ImmuneStore(Database(database.url, schema=database.schema))
    await store.open()
    record = TrafficRecord(store, settings, dict, lambda: now[0])
    await record.open()
    key = (CALL, "orchestrator", "ai_domain")
    assert await record.report([(key, tally(7)), (key, tally(9, errors=1))]) == 2
    now[0] = 1012.0
    await record.report([(key, tally(11))])
    with pytest.raises(InvalidArgument, match=r"traffic\[0\]\.errors"):
        await record.report([(key, tally(1, errors=2))])
    with pytest.raises(InvalidArgument, match=r"traffic\[0\]\.target"):
        await record.report([((CALL, "a", ""), tally(1))])
    with pytest.raises(InvalidArgument, match="window_seconds"):
        record.telemetry(121)
    await store.close()

    store = ImmuneStore(Database(database.url, schema=database.schema))
    await store.open()
    reopened = TrafficRecord(store, settings, dict, lambda: now[0])
    await reopened.open()
    t = reopened.telemetry(0)  # the default window
    assert (t.total_requests, t.errors, t.cross_domain_calls) == (3, 1, 3)
    assert t.p99_latency_ms == 11.0
    # Retention: two minutes later the first slot is gone, from memory and from the table.
    now[0] = 1135.0
    await reopened.report([(key, tally(1))])
    assert sorted(reopened.window.slots) == [1010.0, 1130.0]
    assert {start for start, _, _ in await store.load_traffic(0.0)} == {1010.0, 1130.0}
    await store.close()
