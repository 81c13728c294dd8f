"""The HALO analysis: from a snapshot of the system to weak points, and from a weak point to
ranked remedies. Plain functions of their inputs (no I/O, no clock), so every rule is
tested on fixture snapshots.

Weak points, one per (kind, target):

- `endpoint_failures`: `api.endpoint.failed` events since the last cycle, per target;
  error, critical from `critical_count` events.
- `event_failures`: the other trigger events (`error.critical`, `*.failed`); error,
  critical from `critical_count` events or for any `error.critical`.
- `domain_unhealthy`: the registry saw the lease lapse; critical.
- `domain_degraded`: the domain reports itself degraded; error.
- `low_success_rate`: below `low_success_rate`; error, critical below
  `critical_success_rate`.
- `anomaly`: immune anomalies within the window, per component; error, critical from
  `critical_count`.
- `dead_letters`: bus dead letters per domain; warning, error from `critical_count`.
- `workflow_failed`: rolled-back executions, per failing step's domain; error.
- `compensation_failed`: executions whose compensation failed; critical.
- `failing_pattern`: shared-memory contributions failing more than working; warning.

Remedies come from rules `kind pattern -> remedies` (first match wins, the same form and
parser as the immune kernel's playbooks) and are ranked by their recorded outcomes for the
kind with the Beta(1, 1) posterior mean (s + 1) / (s + f + 2) (`playbooks.rank`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.patterns import matches
from services.kernels.immune.model import PlaybookScore
from services.kernels.immune.playbooks import candidates_for, parse_playbooks, rank
from services.kernels.tasks.model import Severity, Snapshot, WeakPoint

ENDPOINT_FAILED = "api.endpoint.failed"
ERROR_CRITICAL = "error.critical"
DEFAULT_TRIGGERS = (ENDPOINT_FAILED, ERROR_CRITICAL, "anomaly.detected", "*.failed")
DEFAULT_REMEDIES = parse_playbooks(
    "endpoint_failures=heal:restart_component|heal:diagnose_network;"
    "low_success_rate=heal:restart_component|heal:diagnose_network;"
    "domain_*=heal:restart_component|heal:diagnose_network;"
    "anomaly=heal:restart_component|heal:diagnose_network;"
    "*=heal:diagnose_network|heal:restart_component"
)
REMEDY_PREFIXES = ("heal:", "workflow:", "action:")


@dataclass(frozen=True)
class AnalysisSettings:
    """Thresholds of the analysis.

    Attributes:
        low_success_rate: A domain below this success rate is a weak point.
        critical_success_rate: Below this, the weak point is critical.
        critical_count: Failures (or anomalies) from which a weak point is critical.
        window_s: How far back anomalies count.
    """

    low_success_rate: float = 0.9
    critical_success_rate: float = 0.5
    critical_count: int = 5
    window_s: float = 3600.0


def parse_remedies(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`kind_pattern=remedy|remedy;...` as rules; ValueError on a malformed entry or a
    remedy that is not `heal:`, `workflow:` or `action:<domain>.<action>`."""
    rules = parse_playbooks(text)
    for _, remedies in rules:
        for remedy in remedies:
            check_remedy(remedy)
    return rules


def check_remedy(remedy: str) -> str:
    """The remedy when well formed; ValueError naming the rule otherwise."""
    prefix, _, rest = remedy.partition(":")
    if f"{prefix}:" not in REMEDY_PREFIXES or not rest:
        raise ValueError(f"{remedy!r}: expected heal:<playbook>, workflow:<id> or action:<d>.<a>")
    if prefix == "action" and "." not in rest:
        raise ValueError(f"{remedy!r}: an action remedy is action:<domain>.<action>")
    return remedy


def times(n: int) -> str:
    """`1 time`, `3 times`."""
    return f"{n} time" if n == 1 else f"{n} times"


def is_trigger(event_type: str, patterns: Sequence[str]) -> bool:
    """True when an event of this type starts a cycle."""
    return any(matches(p, event_type) for p in patterns)


def event_target(data: Mapping[str, Any], subject: str, source: str) -> str:
    """Who a failure event is about: its data's `domain_id`, `component`, `domain` or
    `target`, else its subject, else its source."""
    for name in ("domain_id", "component", "domain", "target"):
        value = data.get(name)
        if isinstance(value, str) and value:
            return value
    return subject or source


def analyse(snapshot: Snapshot, settings: AnalysisSettings, now: float) -> list[WeakPoint]:
    """Weak points in the snapshot, most severe first (then by key)."""
    found: list[WeakPoint] = []
    found.extend(_failures(snapshot, settings))
    found.extend(_domains(snapshot, settings))
    found.extend(_anomalies(snapshot, settings, now))
    found.extend(_dead_letters(snapshot, settings))
    found.extend(_executions(snapshot))
    found.extend(
        WeakPoint(
            "failing_pattern",
            p.contribution_id,
            Severity.WARNING,
            f"{p.contribution_type} by {p.domain_id} failed {times(p.failures)} and worked "
            f"{times(p.successes)}: {p.summary}"[:500],
            {"domain_id": p.domain_id, "successes": p.successes, "failures": p.failures},
        )
        for p in snapshot.patterns
        if p.failures > p.successes
    )
    return sorted(found, key=lambda w: (-w.severity, w.key))


def _failures(snapshot: Snapshot, settings: AnalysisSettings) -> Iterable[WeakPoint]:
    grouped: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for event in snapshot.failures:
        kind = "endpoint_failures" if event.event_type == ENDPOINT_FAILED else "event_failures"
        grouped[(kind, event.target)][event.event_type] += 1
    for (kind, target), types in sorted(grouped.items()):
        count = sum(types.values())
        critical = count >= settings.critical_count or ERROR_CRITICAL in types
        listed = ", ".join(f"{n} {t}" for t, n in sorted(types.items()))
        yield WeakPoint(
            kind,
            target,
            Severity.CRITICAL if critical else Severity.ERROR,
            f"{target} failed {times(count)} since the last cycle ({listed})",
            {"count": count, "event_types": dict(types)},
        )


def _domains(snapshot: Snapshot, settings: AnalysisSettings) -> Iterable[WeakPoint]:
    for d in snapshot.domains:
        figures = {"success_rate": d.success_rate, "latency_ms": d.latency_ms}
        if d.status == "unhealthy":
            yield WeakPoint(
                "domain_unhealthy",
                d.domain_id,
                Severity.CRITICAL,
                f"{d.domain_id}'s lease has lapsed: it is not heartbeating",
                figures,
            )
        elif d.status == "degraded":
            yield WeakPoint(
                "domain_degraded",
                d.domain_id,
                Severity.ERROR,
                f"{d.domain_id} reports itself degraded",
                figures,
            )
        if d.success_rate < settings.low_success_rate:
            critical = d.success_rate < settings.critical_success_rate
            yield WeakPoint(
                "low_success_rate",
                d.domain_id,
                Severity.CRITICAL if critical else Severity.ERROR,
                f"{d.domain_id} succeeds in {d.success_rate:.0%} of its calls "
                f"(weak below {settings.low_success_rate:.0%})",
                figures,
            )


def _anomalies(snapshot: Snapshot, settings: AnalysisSettings, now: float) -> Iterable[WeakPoint]:
    grouped: dict[str, Counter[str]] = defaultdict(Counter)
    for a in snapshot.anomalies:
        if now - a.detected_at <= settings.window_s:
            grouped[a.component][a.kind] += 1
    for component, kinds in sorted(grouped.items()):
        count = sum(kinds.values())
        listed = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        yield WeakPoint(
            "anomaly",
            component,
            Severity.CRITICAL if count >= settings.critical_count else Severity.ERROR,
            f"the immune kernel saw {count} anomalies on {component} in the last "
            f"{settings.window_s:.0f}s ({listed})",
            {"count": count, "kinds": dict(kinds)},
        )


def _dead_letters(snapshot: Snapshot, settings: AnalysisSettings) -> Iterable[WeakPoint]:
    grouped: dict[str, Counter[str]] = defaultdict(Counter)
    for letter in snapshot.dead_letters:
        grouped[letter.domain_id][letter.event_type] += 1
    for domain_id, types in sorted(grouped.items()):
        count = sum(types.values())
        yield WeakPoint(
            "dead_letters",
            domain_id,
            Severity.ERROR if count >= settings.critical_count else Severity.WARNING,
            f"the bus could not deliver {count} events to {domain_id}",
            {"count": count, "event_types": dict(types)},
        )


def _executions(snapshot: Snapshot) -> Iterable[WeakPoint]:
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    errors: dict[tuple[str, str], str] = {}
    for e in snapshot.executions:
        kind = "compensation_failed" if e.compensation_failed else "workflow_failed"
        key = (kind, e.domain_id or e.workflow_id)
        grouped[key].append(e.execution_id)
        errors.setdefault(key, f"{e.workflow_id} at {e.domain_id}.{e.action}: {e.error}")
    for (kind, target), ids in sorted(grouped.items()):
        if kind == "compensation_failed":
            reason = f"{len(ids)} executions could not be compensated ({errors[(kind, target)]})"
        else:
            reason = f"{len(ids)} executions failed and rolled back ({errors[(kind, target)]})"
        yield WeakPoint(
            kind,
            target,
            Severity.CRITICAL if kind == "compensation_failed" else Severity.ERROR,
            reason[:500],
            {"count": len(ids), "execution_ids": ids[:10]},
        )


def remedies_for(
    kind: str,
    rules: Sequence[tuple[str, Sequence[str]]],
    records: Mapping[str, PlaybookScore],
) -> tuple[PlaybookScore, ...]:
    """The remedies allowed for a kind of weak point, best first by recorded outcomes."""
    return rank(candidates_for(kind, rules), records)
