"""Remediation on SQLite and PostgreSQL: choice by experience, governance, safety rules."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from services.common import completion
from services.common.call_metrics import EdgeTally, TrafficKey, TrafficKind
from services.common.errors import InvalidArgument
from services.common.latency_histogram import LatencyHistogram
from services.common.storage import Database
from services.kernels.immune.detector import DetectorSettings
from services.kernels.immune.immune import Immune
from services.kernels.immune.model import (
    Anomaly,
    EvidencePoint,
    MetricPoint,
    Outcome,
    PlaybookScore,
)
from services.kernels.immune.playbooks import (
    LocalExperience,
    SharedExperience,
    candidates_for,
    parse_playbooks,
    rank,
)
from services.kernels.immune.remediation import RemediationSettings, Remediator
from services.kernels.immune.store import ImmuneStore
from tests.conftest import DatabaseTarget
from tests.kernels.immune.doubles import ScriptedGate, ScriptedHealer
from tests.support import ManualClock, give_up_at, give_up_midway, pause_after


@pytest.fixture
async def store(database: DatabaseTarget) -> AsyncIterator[ImmuneStore]:
    s = ImmuneStore(Database(database.url, schema=database.schema))
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def anomaly(component: str = "ai_domain", n: int = 1) -> Anomaly:
    return Anomaly(
        f"a{n}",
        component,
        "latency_ms",
        "latency_ms_spike",
        100.0,
        5.0,
        3.5,
        (EvidencePoint(900.0, 90.0, 1.0),),
        1.0,
    )


def remediator(
    store: ImmuneStore,
    clock: ManualClock,
    healer: ScriptedHealer,
    gate: ScriptedGate | None = None,
    **settings: object,
) -> Remediator:
    options = {"cooldown_s": 0.0, "max_actions": 1000, **settings}
    return Remediator(
        RemediationSettings(**options),  # type: ignore[arg-type]
        healer,
        gate or ScriptedGate(),
        LocalExperience(store),
        clock,
    )


async def test_the_choice_moves_to_the_playbook_that_works(
    store: ImmuneStore, clock: ManualClock
) -> None:
    healer = ScriptedHealer({"ai_domain"}, {"restart_component": False, "rebind_port": True})
    r = remediator(store, clock, healer)
    chosen = []
    for i in range(6):
        done = await r.remediate(anomaly(n=i), f"r{i}")
        chosen.append((done.playbook, done.outcome))
        clock.advance(1)
    assert chosen[0] == ("restart_component", Outcome.FAILED)
    assert chosen[1] == ("rebind_port", Outcome.SUCCEEDED)
    assert all(c == ("rebind_port", Outcome.SUCCEEDED) for c in chosen[1:])
    records = await store.outcomes("latency_ms_spike")
    assert records[("latency_ms_spike", "rebind_port")] == PlaybookScore("rebind_port", 5, 0)
    assert records[("latency_ms_spike", "restart_component")].failures == 1


async def test_governance_is_asked_and_a_denial_runs_nothing(
    store: ImmuneStore, clock: ManualClock
) -> None:
    healer = ScriptedHealer({"ai_domain"})
    gate = ScriptedGate(denied={"heal:restart_component"})
    done = await remediator(store, clock, healer, gate).remediate(anomaly(), "r1")
    assert done.outcome is Outcome.DENIED
    assert "policy no-heal" in done.reason
    assert done.governance_decision_id == "d-1"
    assert healer.calls == []
    assert gate.asked == [
        {
            "actor": "immune",
            "action": "heal:restart_component",
            "resource": "component:ai_domain",
            "risk_level": "medium",
        }
    ]


async def test_empty_and_unknown_targets_are_never_acted_on(
    store: ImmuneStore, clock: ManualClock
) -> None:
    healer = ScriptedHealer({"ai_domain"})
    gate = ScriptedGate()
    r = remediator(store, clock, healer, gate)
    empty = await r.remediate(anomaly(component="  "), "r1")
    unknown = await r.remediate(anomaly(component="ghost"), "r2")
    assert (empty.outcome, unknown.outcome) == (Outcome.SKIPPED, Outcome.SKIPPED)
    assert "empty target" in empty.reason
    assert "unknown target" in unknown.reason
    assert healer.calls == []
    assert gate.asked == []


async def test_a_component_cools_down_between_actions(
    store: ImmuneStore, clock: ManualClock
) -> None:
    healer = ScriptedHealer({"ai_domain", "data_domain"})
    r = remediator(store, clock, healer, cooldown_s=300.0)
    assert (await r.remediate(anomaly(), "r1")).outcome is Outcome.SUCCEEDED
    clock.advance(10)
    again = await r.remediate(anomaly(n=2), "r2")
    assert again.outcome is Outcome.SKIPPED
    assert "cooldown" in again.reason
    other = await r.remediate(anomaly("data_domain", 3), "r3")
    assert other.outcome is Outcome.SUCCEEDED
    clock.advance(300)
    assert (await r.remediate(anomaly(n=4), "r4")).outcome is Outcome.SUCCEEDED


async def test_the_global_rate_limit_caps_actions_per_window(
    store: ImmuneStore, clock: ManualClock
) -> None:
    names = {f"c{i}" for i in range(5)}
    healer = ScriptedHealer(names)
    r = remediator(store, clock, healer, max_actions=2, rate_window_s=60.0)
    outcomes = [(await r.remediate(anomaly(f"c{i}", i), f"r{i}")).outcome for i in range(3)]
    assert outcomes == [Outcome.SUCCEEDED, Outcome.SUCCEEDED, Outcome.SKIPPED]
    clock.advance(61)
    assert (await r.remediate(anomaly("c3", 3), "r3")).outcome is Outcome.SUCCEEDED


async def test_dry_run_chooses_and_asks_but_never_heals_nor_learns(
    store: ImmuneStore, clock: ManualClock
) -> None:
    healer = ScriptedHealer({"ai_domain"})
    gate = ScriptedGate()
    done = await remediator(store, clock, healer, gate, dry_run=True).remediate(anomaly(), "r1")
    assert done.outcome is Outcome.DRY_RUN
    assert done.playbook == "restart_component"
    assert "would run restart_component" in done.reason
    assert healer.calls == []
    assert len(gate.asked) == 1
    assert await store.outcomes() == {}


async def test_cooldowns_survive_a_restart_of_the_kernel(
    store: ImmuneStore, clock: ManualClock
) -> None:
    healer = ScriptedHealer({"ai_domain"})
    settings = DetectorSettings(min_points=5, window=20)
    first = Immune(store, settings, remediator(store, clock, healer, cooldown_s=300.0), clock)
    await first.open()
    values = [10.0, 11.0, 10.0, 9.0, 10.0, 10.0, 500.0, 500.0, 500.0]
    raised = await first.report([MetricPoint("ai_domain", "latency_ms", v, 0.0) for v in values])
    assert len(raised) == 1
    done = await first._remediate(raised[0])
    assert done.outcome is Outcome.SUCCEEDED
    clock.advance(5)
    second = Immune(store, settings, remediator(store, clock, healer, cooldown_s=300.0), clock)
    await second.open()
    assert second.remediator is not None
    again = await second.remediator.remediate(anomaly(n=9), "r9")
    assert again.outcome is Outcome.SKIPPED
    listed, _ = await second.list_anomalies(component="ai_domain")
    assert [a.remediation_id for a in listed] == [done.remediation_id]
    kinds = [e.event_type for e in await second.events.pending(10)]
    assert kinds == ["anomaly.detected", "remediation.completed"]


async def test_an_anomaly_whose_reporter_gives_up_midway_is_still_recorded_and_remediated(
    store: ImmuneStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A client's deadline cancels ReportMetrics while the anomaly is being recorded: the
    # series is open by then, so the reporter's retry raises nothing; the first report must
    # still record the anomaly and queue its remediation.
    healer = ScriptedHealer({"ai_domain"})
    settings = DetectorSettings(min_points=5, window=20)
    immune = Immune(store, settings, remediator(store, clock, healer), clock)
    await immune.open()
    recorded = pause_after(monkeypatch, store, "add_anomaly")
    values = [10.0, 11.0, 10.0, 9.0, 10.0, 10.0, 500.0, 500.0, 500.0]
    await give_up_at(
        immune.report([MetricPoint("ai_domain", "latency_ms", v, 0.0) for v in values]), recorded
    )
    retry = await immune.report([MetricPoint("ai_domain", "latency_ms", 500.0, 0.0)])
    assert retry == []
    recorded.release.set()
    await completion.drain(timeout_s=5)
    remediating = asyncio.create_task(immune.run())
    try:
        await asyncio.wait_for(immune.idle(), 5)
    finally:
        remediating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await remediating
    listed, _ = await immune.list_anomalies(component="ai_domain")
    assert [a.kind for a in listed] == ["latency_ms_spike"]
    assert listed[0].remediation_id
    assert healer.calls == [("ai_domain", "restart_component")]
    kinds = [e.event_type for e in await immune.events.pending(10)]
    assert kinds == ["anomaly.detected", "remediation.completed"]


class BrokenShared:
    async def outcomes(self, kind: str, playbooks: Sequence[str]) -> dict[str, PlaybookScore]:
        raise ConnectionError("memory down")

    async def record(self, kind: str, playbook: str, success: bool, detail: str) -> None:
        raise ConnectionError("memory down")


async def test_local_records_answer_while_shared_memory_is_down(store: ImmuneStore) -> None:
    experience = SharedExperience(BrokenShared(), LocalExperience(store))
    await experience.record("k", "restart_component", False, "no")
    assert await experience.outcomes("k", ["restart_component"]) == {
        "restart_component": PlaybookScore("restart_component", 0, 1)
    }


def test_playbook_rules_pick_the_first_matching_kind_pattern() -> None:
    rules = parse_playbooks("errors_*=restart_component;*=diagnose_network|restart_component")
    assert candidates_for("errors_spike", rules) == ("restart_component",)
    assert candidates_for("latency_ms_spike", rules) == ("diagnose_network", "restart_component")
    with pytest.raises(ValueError, match="expected"):
        parse_playbooks("broken")


def test_ranking_prefers_proven_playbooks_and_gives_untried_ones_a_chance() -> None:
    ranked = rank(
        ["a", "b", "c"],
        {"a": PlaybookScore("a", 0, 2), "b": PlaybookScore("b", 3, 0)},
    )
    assert [s.playbook for s in ranked] == ["b", "c", "a"]
    assert ranked[1].score == 0.5


SPIKE = [10.0, 11.0, 10.0, 9.0, 10.0, 10.0, 500.0, 500.0, 500.0]


def spike() -> list[MetricPoint]:
    return [MetricPoint("ai_domain", "latency_ms", v, 0.0) for v in SPIKE]


def calls(count: int, errors: int = 0) -> tuple[TrafficKey, EdgeTally]:
    latency = LatencyHistogram()
    for _ in range(count):
        latency.add(5.0)
    return (TrafficKind.CALL, "orchestrator", "ai_domain"), EdgeTally(errors, latency)


async def test_a_report_with_traffic_that_cannot_be_taken_takes_none_of_its_points(
    store: ImmuneStore, clock: ManualClock
) -> None:
    immune = Immune(store, DetectorSettings(min_points=5, window=20), None, clock)
    await immune.open()
    with pytest.raises(InvalidArgument, match=r"traffic\[1\]\.errors"):
        await immune.report(spike(), [calls(3), calls(1, errors=2)])
    assert immune.traffic.telemetry(0).total_requests == 0
    # The refused report moved no series: the same points raise their anomaly now.
    raised = await immune.report(spike(), [calls(3)])
    assert [a.kind for a in raised] == ["latency_ms_spike"]
    assert immune.traffic.telemetry(0).total_requests == 3


async def test_the_traffic_of_a_report_whose_reporter_gives_up_midway_is_still_counted(
    store: ImmuneStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cut once its anomaly is recorded, the report still adds its traffic: the reporter's
    # retry would score its points a second time, so the first report is the one to count.
    immune = Immune(store, DetectorSettings(min_points=5, window=20), None, clock)
    await immune.open()
    await give_up_midway(
        immune.report(spike(), [calls(4)]), pause_after(monkeypatch, store, "add_anomaly")
    )
    assert immune.traffic.telemetry(0).total_requests == 4
    listed, _ = await immune.list_anomalies(component="ai_domain")
    assert len(listed) == 1
    reopened = Immune(store, DetectorSettings(min_points=5, window=20), None, clock)
    await reopened.open()
    assert reopened.traffic.telemetry(0).total_requests == 4
