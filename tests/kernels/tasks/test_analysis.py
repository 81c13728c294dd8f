"""The HALO analysis on fixture snapshots: weak points, severities, triggers and ranking."""

from __future__ import annotations

import pytest

from services.kernels.immune.model import PlaybookScore
from services.kernels.tasks.analysis import (
    DEFAULT_REMEDIES,
    DEFAULT_TRIGGERS,
    AnalysisSettings,
    analyse,
    event_target,
    is_trigger,
    parse_remedies,
    remedies_for,
)
from services.kernels.tasks.model import (
    AnomalySeen,
    DeadLetterSeen,
    DomainHealth,
    ExecutionSeen,
    FailureEvent,
    PatternSeen,
    Severity,
    Snapshot,
)

NOW = 1_800_000_000.0
SETTINGS = AnalysisSettings(critical_count=3, window_s=600)


def by_key(snapshot: Snapshot) -> dict[str, tuple[Severity, str]]:
    return {w.key: (w.severity, w.reason) for w in analyse(snapshot, SETTINGS, NOW)}


def test_a_healthy_system_has_no_weak_points() -> None:
    snapshot = Snapshot(domains=(DomainHealth("ai_domain", "healthy", 1.0, 20.0),))
    assert analyse(snapshot, SETTINGS, NOW) == []


def test_endpoint_failures_are_grouped_by_target_and_become_critical_in_numbers() -> None:
    failures = (
        *(FailureEvent("api.endpoint.failed", "ai_domain", NOW) for _ in range(3)),
        FailureEvent("api.endpoint.failed", "data_domain", NOW),
    )
    found = by_key(Snapshot(failures=failures))
    assert found["endpoint_failures:ai_domain"][0] is Severity.CRITICAL
    assert "failed 3 times" in found["endpoint_failures:ai_domain"][1]
    assert found["endpoint_failures:data_domain"][0] is Severity.ERROR


def test_an_error_critical_event_is_critical_at_once() -> None:
    found = by_key(Snapshot(failures=(FailureEvent("error.critical", "orchestrator", NOW),)))
    assert found == {
        "event_failures:orchestrator": (
            Severity.CRITICAL,
            "orchestrator failed 1 time since the last cycle (1 error.critical)",
        )
    }


def test_registry_health_and_scores_make_weak_points() -> None:
    snapshot = Snapshot(
        domains=(
            DomainHealth("gone", "unhealthy"),
            DomainHealth("slow", "degraded", 0.95),
            DomainHealth("flaky", "healthy", 0.7),
            DomainHealth("broken", "healthy", 0.2),
        )
    )
    found = by_key(snapshot)
    assert found["domain_unhealthy:gone"][0] is Severity.CRITICAL
    assert found["domain_degraded:slow"][0] is Severity.ERROR
    assert found["low_success_rate:flaky"][0] is Severity.ERROR
    assert found["low_success_rate:broken"][0] is Severity.CRITICAL
    assert "low_success_rate:slow" not in found


def test_only_recent_anomalies_count() -> None:
    snapshot = Snapshot(
        anomalies=(
            AnomalySeen("ai_domain", "latency_ms_spike", NOW - 60),
            AnomalySeen("old", "latency_ms_spike", NOW - 6000),
        )
    )
    assert set(by_key(snapshot)) == {"anomaly:ai_domain"}


def test_dead_letters_executions_and_patterns() -> None:
    snapshot = Snapshot(
        dead_letters=(DeadLetterSeen("memory_domain", "data.ingested", "UNAVAILABLE"),),
        executions=(
            ExecutionSeen("e1", "wf", False, "ai_domain", "analyze", "boom"),
            ExecutionSeen("e2", "wf", True, "data_domain", "store", "undo failed"),
        ),
        patterns=(
            PatternSeen("c1", "immune", "remediation_playbook", "restart", 1, 4),
            PatternSeen("c2", "immune", "remediation_playbook", "rebind", 4, 1),
        ),
    )
    found = by_key(snapshot)
    assert found["dead_letters:memory_domain"][0] is Severity.WARNING
    assert found["workflow_failed:ai_domain"][0] is Severity.ERROR
    assert "wf at ai_domain.analyze: boom" in found["workflow_failed:ai_domain"][1]
    assert found["compensation_failed:data_domain"][0] is Severity.CRITICAL
    assert found["failing_pattern:c1"][0] is Severity.WARNING
    assert "failing_pattern:c2" not in found


def test_weak_points_come_most_severe_first() -> None:
    snapshot = Snapshot(
        domains=(DomainHealth("a", "degraded"), DomainHealth("b", "unhealthy")),
        dead_letters=(DeadLetterSeen("c", "x", "r"),),
    )
    severities = [w.severity for w in analyse(snapshot, SETTINGS, NOW)]
    assert severities == sorted(severities, reverse=True)


def test_the_seed_triggers_match_critical_and_failure_events_only() -> None:
    for event_type in ("api.endpoint.failed", "error.critical", "anomaly.detected", "x.y.failed"):
        assert is_trigger(event_type, DEFAULT_TRIGGERS)
    for event_type in ("api.endpoint.success", "halo.cycle.completed", "failed.not"):
        assert not is_trigger(event_type, DEFAULT_TRIGGERS)


def test_an_event_is_about_its_domain_or_component_or_subject_or_source() -> None:
    assert event_target({"domain_id": "ai"}, "s", "src") == "ai"
    assert event_target({"component": "bus"}, "s", "src") == "bus"
    assert event_target({}, "subject", "src") == "subject"
    assert event_target({"domain_id": 3}, "", "src") == "src"


def test_untried_remedies_keep_the_configured_order() -> None:
    ranked = remedies_for("endpoint_failures", DEFAULT_REMEDIES, {})
    assert [r.playbook for r in ranked] == ["heal:restart_component", "heal:diagnose_network"]
    assert [r.score for r in ranked] == [0.5, 0.5]


def test_recorded_outcomes_rank_what_worked_first() -> None:
    records = {
        "heal:restart_component": PlaybookScore("heal:restart_component", 0, 2),
        "heal:diagnose_network": PlaybookScore("heal:diagnose_network", 1, 0),
    }
    ranked = remedies_for("endpoint_failures", DEFAULT_REMEDIES, records)
    assert [(r.playbook, round(r.score, 3)) for r in ranked] == [
        ("heal:diagnose_network", 0.667),
        ("heal:restart_component", 0.25),
    ]


def test_remedy_rules_are_parsed_and_malformed_ones_refused() -> None:
    rules = parse_remedies("anomaly=workflow:heal_all|action:ai_domain.reset;*=heal:x")
    assert rules == (
        ("anomaly", ("workflow:heal_all", "action:ai_domain.reset")),
        ("*", ("heal:x",)),
    )
    for bad in ("anomaly=reboot", "anomaly=action:nodot", "=heal:x", "anomaly="):
        with pytest.raises(ValueError, match=r"expected|an action remedy"):
            parse_remedies(bad)
