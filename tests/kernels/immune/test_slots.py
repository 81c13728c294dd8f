"""The compact traffic slots: the same windows as tallies kept as objects (an independent
reference, the way slots were kept before), a bounded and small heap per slot-edge, wider
counts only where needed, one copy of each edge's names."""

from __future__ import annotations

import gc
import math
import random
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.call_metrics import EdgeTally, TrafficKey, TrafficKind
from services.common.latency_histogram import BUCKETS, LatencyHistogram
from services.kernels.immune.slots import MAX_VALUE, TrafficWindow
from services.kernels.immune.telemetry import TelemetrySettings, graph, merge_into, summarize

CALL, PUBLISH, DELIVERY, STEP = (
    TrafficKind.CALL,
    TrafficKind.PUBLISH,
    TrafficKind.DELIVERY,
    TrafficKind.STEP,
)


class ReferenceWindow:
    """Slots as dicts of `EdgeTally` objects, summed with `merge_into`."""

    def __init__(self, settings: TelemetrySettings) -> None:
        self.settings = settings
        self.slots: dict[float, dict[TrafficKey, EdgeTally]] = {}

    def slot_of(self, when: float) -> float:
        return math.floor(when / self.settings.slot_s) * self.settings.slot_s

    def add(self, traffic: dict[TrafficKey, EdgeTally], now: float) -> dict[TrafficKey, EdgeTally]:
        slot = self.slots.setdefault(self.slot_of(now), {})
        touched = {}
        for key, tally in traffic.items():
            if key in slot or len(slot) < self.settings.max_edges_per_slot:
                merge_into(slot, {key: tally})
                touched[key] = slot[key]
        return touched

    def prune(self, now: float) -> None:
        cutoff = self.slot_of(now - self.settings.retention_s)
        self.slots = {s: slot for s, slot in self.slots.items() if s >= cutoff}

    def window(self, seconds: float, now: float) -> dict[TrafficKey, EdgeTally]:
        start = self.slot_of(now - seconds)
        total: dict[TrafficKey, EdgeTally] = {}
        for s, slot in sorted(self.slots.items()):
            if start <= s <= now:
                merge_into(total, slot)
        return total


def fresh(name: str) -> str:
    """A new string object, as each decoded report brings."""
    return (name + ".")[:-1]


edges = st.tuples(
    st.sampled_from([CALL, PUBLISH, DELIVERY, STEP]),
    st.sampled_from(["orchestrator", "data_domain", "user:ann", ""]),
    st.sampled_from(["ai_domain", "data_domain", "document.ingested"]),
)
# Mostly small counts, some past two and four bytes.
counts = st.one_of(st.integers(0, 300), st.integers(0, 100_000), st.integers(0, 2**40), st.just(0))
tallies = st.builds(
    lambda buckets, errors, latencies: EdgeTally(
        min(errors, sum(buckets)),
        LatencyHistogram(buckets, sum(latencies), max(latencies)),
    ),
    st.lists(counts, min_size=BUCKETS, max_size=BUCKETS),
    st.integers(0, 2**34),
    st.lists(st.floats(0, 70_000, allow_nan=False), min_size=1, max_size=3),
)
reports = st.lists(
    st.tuples(
        st.floats(0, 150),  # seconds after the start: the clock may also step back
        st.dictionaries(edges, tallies, max_size=8),
    ),
    max_size=25,
)


def copied(traffic: dict[TrafficKey, EdgeTally]) -> dict[TrafficKey, EdgeTally]:
    """An independent copy with new key strings (each side may keep what it is given)."""
    return {
        (kind, fresh(source), fresh(target)): EdgeTally(
            tally.errors,
            LatencyHistogram(
                list(tally.latency.counts), tally.latency.sum_ms, tally.latency.max_ms
            ),
        )
        for (kind, source, target), tally in traffic.items()
    }


@settings(max_examples=100, deadline=None)
@given(reports, st.integers(3, 30))
def test_windows_of_compact_slots_equal_those_of_tallies_kept_as_objects(
    steps: list[tuple[float, dict[TrafficKey, EdgeTally]]], max_edges: int
) -> None:
    settings = TelemetrySettings(slot_s=10, retention_s=60, max_edges_per_slot=max_edges)
    window, reference = TrafficWindow(settings), ReferenceWindow(settings)
    for offset, traffic in steps:
        now = 1000.0 + offset
        start, touched = window.add(copied(traffic), now)
        assert start == reference.slot_of(now)
        assert touched == reference.add(copied(traffic), now)
        window.prune(now)
        reference.prune(now)
        assert sorted(window.slots) == sorted(reference.slots)
        for seconds in (5, 10, 30, 60):
            _, got = window.window(seconds, now)
            expected = reference.window(seconds, now)
            assert got == expected  # every count, error, sum and maximum, exactly
            assert summarize(got, {}, 0, 1) == summarize(expected, {}, 0, 1)
            assert graph(got, 0, 1) == graph(expected, 0, 1)


def topology() -> list[TrafficKey]:
    """The edges a steady load puts in each slot of a default Grace: workflow steps and
    calls to the example domains, the bus's publishes and its deliveries to the kernels."""
    domains = ["data_domain", "ai_domain", "memory_domain"]
    found: list[TrafficKey] = []
    for domain in domains:
        found += [(CALL, "orchestrator", domain), (STEP, "workflow:soak_document", domain)]
    found += [
        (CALL, "gateway", "orchestrator"),
        (CALL, "orchestrator", "governance"),
        (CALL, "ai_domain", "memory_domain"),
        (CALL, "user:admin", "data_domain"),
    ]
    published = {
        "soak": ["soak.tick"],
        "orchestrator": ["workflow.started", "workflow.step_completed", "workflow.completed"],
        "data_domain": ["data.ingested"],
        "ai_domain": ["document.analyzed"],
        "memory_domain": ["memory.contributed"],
    }
    subscribers = ["librarian", "learning", "tasks", "triggers", "trust", "immune"]
    for source, types in published.items():
        found += [(PUBLISH, source, event_type) for event_type in types]
        found += [(DELIVERY, source, s) for s in subscribers[: 2 + len(types)]]
    return found


def report(keys: list[TrafficKey], rng: random.Random) -> dict[TrafficKey, EdgeTally]:
    traffic = {}
    for kind, source, target in keys:
        latency = LatencyHistogram()
        centre = rng.uniform(0.5, 40)
        for _ in range(10):
            latency.add(rng.lognormvariate(0, 0.6) * centre, rng.randint(1, 30))
        traffic[(kind, fresh(source), fresh(target))] = EdgeTally(rng.randint(0, 2), latency)
    return traffic


def test_an_hour_of_slots_keeps_under_a_hundred_bytes_per_slot_edge() -> None:
    # Kept as objects, each slot-edge held about 640 bytes (7.5 MB for this hour).
    keys = topology()
    rng = random.Random(7)
    samples = [report(keys, rng) for _ in range(6)]
    settings = TelemetrySettings()  # 10 s slots kept for an hour
    window = TrafficWindow(settings)
    slots = int(settings.retention_s / settings.slot_s)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(slots):
            for j in range(2):  # reporters send every 5 s
                now = 1_000_000.0 + i * settings.slot_s + 5 * j
                window.add(copied(samples[(2 * i + j) % len(samples)]), now)
                window.prune(now)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    slot_edges = sum(len(slot) for slot in window.slots.values())
    assert slot_edges == slots * len(keys)
    assert kept / slot_edges < 100


def test_the_retention_bounds_the_slots_and_the_shared_keys() -> None:
    window = TrafficWindow(TelemetrySettings(slot_s=10, retention_s=60))
    for i in range(100):
        # A new caller every slot (people come and go): the table keeps only live ones.
        now = 1000.0 + 10 * i
        window.add({(CALL, f"user:u{i}", "ai_domain"): EdgeTally(0, LatencyHistogram())}, now)
        window.add({(CALL, fresh("orchestrator"), "ai_domain"): EdgeTally()}, now + 1)
        window.prune(now)
    assert len(window.slots) == 7  # the slot the cut-off falls in, and the six after it
    assert len(window.keys) == 8  # their callers and the orchestrator
    first, last = (window.slots[s] for s in (min(window.slots), max(window.slots)))
    assert first.keys[1] is last.keys[1]  # one copy of an edge's names for every slot


def one(count: int, errors: int = 0) -> dict[TrafficKey, EdgeTally]:
    latency = LatencyHistogram()
    latency.add(3.0, count)
    return {(CALL, "orchestrator", "ai_domain"): EdgeTally(errors, latency)}


def test_counts_take_two_bytes_until_one_needs_more_and_stop_at_the_wires_int64() -> None:
    window = TrafficWindow(TelemetrySettings())
    key = (CALL, "orchestrator", "ai_domain")
    window.add(one(60_000), 0.0)
    assert window.slots[0.0].itemsize == 2
    window.add(one(60_000), 1.0)
    assert window.slots[0.0].itemsize == 4
    window.add(one(2**32), 2.0)
    assert window.slots[0.0].itemsize == 8
    assert window.window(10, 5.0)[1][key].count == 120_000 + 2**32
    window.add(one(MAX_VALUE, errors=MAX_VALUE), 3.0)
    _, touched = window.add(one(MAX_VALUE, errors=1), 4.0)
    assert (touched[key].count, touched[key].errors) == (MAX_VALUE, MAX_VALUE)
    window.add(one(5), 10.0)
    assert window.slots[10.0].itemsize == 2  # each slot on its own


def test_a_late_report_after_the_clock_stepped_back_adds_to_its_older_slot() -> None:
    window = TrafficWindow(TelemetrySettings(slot_s=10, retention_s=60))
    key = (CALL, "orchestrator", "ai_domain")
    window.add(one(1), 1000.0)
    window.add(one(2), 1010.0)  # a newer slot: the first one is sealed
    window.add(one(4, errors=1), 1005.0)
    window.add({**one(8), (CALL, "data_domain", "ai_domain"): EdgeTally()}, 1007.0)
    assert len(window.slots[1000.0]) == 2
    _, first = window.window(1, 1009.0)
    assert (first[key].count, first[key].errors) == (13, 1)
    assert window.window(20, 1015.0)[1][key].count == 15
