"""The HALO loop: triggers, analysis cycles and what they learn.

A cycle, one at a time:

1. reads every source (registry, immune, bus dead letters, orchestrator, shared memory),
   each with a deadline; a source that fails is recorded in the cycle (`degraded`) and
   announced as `halo.source.degraded`, and the cycle goes on with the others;
2. takes the failure events that arrived since the last cycle;
3. finds the weak points (see `analysis`);
4. judges earlier tasks that finished: a task fixed its weak point when it completed and
   the weak point is gone now. Each verdict is recorded as experience of the task's remedy
   for the weak point's kind (shared memory, with a local copy);
5. proposes, for each weak point at or above `min_severity` with no open task, the remedy
   with the best record for its kind, and creates the task (see `squad`);
6. records the cycle with `halo.cycle.completed` and one `halo.weakpoint.critical` per
   critical weak point, on the bus and in the immutable log.

Triggers: an operator (RunCycle), a schedule (the `run_cycle` action), or events. An event
whose type matches a trigger pattern (and that the kernel did not publish itself) is kept
for the next cycle; event-started cycles are at least `min_interval_s` apart, so a burst of
failures makes one cycle, not hundreds.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from services.common.completion import runs_to_completion
from services.common.errors import InvalidArgument, NotFound
from services.common.outbox import Outbox
from services.common.pagination import decode_token, encode_token, page_size
from services.common.validation import require_id, require_text
from services.kernels.immune.model import PlaybookScore
from services.kernels.immune.playbooks import Experience, candidates_for
from services.kernels.tasks import analysis
from services.kernels.tasks.analysis import DEFAULT_REMEDIES, DEFAULT_TRIGGERS, AnalysisSettings
from services.kernels.tasks.model import (
    AnomalySeen,
    Cycle,
    DeadLetterSeen,
    DomainHealth,
    Evaluation,
    ExecutionSeen,
    FailureEvent,
    PatternSeen,
    Proposal,
    Severity,
    Snapshot,
    SourceStatus,
    Task,
    TaskState,
    WeakPoint,
)
from services.kernels.tasks.squad import Squad
from services.kernels.tasks.store import TasksStore

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_REASON_LENGTH = 512


class Sources(Protocol):
    """Where a cycle looks (the platform's services over gRPC in production)."""

    async def domains(self) -> Sequence[DomainHealth]:
        """Registered domains with their health and scores."""

    async def anomalies(self) -> Sequence[AnomalySeen]:
        """Recent anomalies of the immune kernel."""

    async def dead_letters(self) -> Sequence[DeadLetterSeen]:
        """Dead letters of the bus."""

    async def executions(self) -> Sequence[ExecutionSeen]:
        """Rolled-back and compensation-failed executions of the orchestrator."""

    async def patterns(self) -> Sequence[PatternSeen]:
        """Failing contributions in shared memory."""


@dataclass(frozen=True)
class HaloSettings:
    """How cycles run.

    Attributes:
        analysis: Thresholds of the analysis.
        remedies: Kind pattern -> remedies, first match wins.
        min_severity: Weak points below this get no task.
        max_tasks: Tasks one cycle may create.
        triggers: Event-type patterns that start a cycle.
        min_interval_s: Least time between two event-started cycles.
        source_timeout_s: Deadline of reading one source.
        max_buffered: Failure events kept for the next cycle (the oldest are dropped).
    """

    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    remedies: tuple[tuple[str, tuple[str, ...]], ...] = DEFAULT_REMEDIES
    min_severity: Severity = Severity.ERROR
    max_tasks: int = 5
    triggers: tuple[str, ...] = DEFAULT_TRIGGERS
    min_interval_s: float = 30.0
    source_timeout_s: float = 5.0
    max_buffered: int = 1000


@dataclass(frozen=True)
class Stats:
    """Counts for GetTasksStats."""

    cycles: int
    tasks_by_state: dict[str, int]
    outcomes: list[tuple[str, PlaybookScore]]
    trigger_events: int


class Halo:
    """Cycles: sources in, weak points, proposals and lessons out.

    Args:
        store: Durable state.
        squad: Creates and runs tasks.
        sources: What a cycle reads.
        experience: Remedy outcomes (shared memory with a local copy in production).
        settings: Settings.
        events: Outbox of bus events.
        log_entries: Outbox of immutable-log entries.
        committed: Called after each commit that enqueued entries.
        clock: Epoch seconds.
        domain_id: The kernel's own domain (its own events never trigger it).
    """

    def __init__(
        self,
        store: TasksStore,
        squad: Squad,
        sources: Sources,
        experience: Experience,
        settings: HaloSettings,
        events: Outbox,
        log_entries: Outbox,
        committed: Callable[[], None],
        clock: Callable[[], float] = time.time,
        domain_id: str = "tasks",
    ) -> None:
        self.store = store
        self.squad = squad
        self.sources = sources
        self.experience = experience
        self.settings = settings
        self.events = events
        self.log_entries = log_entries
        self._committed = committed
        self.clock = clock
        self.domain_id = domain_id
        self._failures: deque[FailureEvent] = deque(maxlen=settings.max_buffered)
        self._trigger_types: list[str] = []
        self._seen_order: deque[str] = deque(maxlen=10 * settings.max_buffered)
        self._seen: set[str] = set()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._last_event_cycle = float("-inf")
        self.trigger_events = 0

    # -- triggers ----------------------------------------------------------------------

    def observe(
        self,
        event_type: str,
        data: Mapping[str, Any],
        subject: str,
        source: str,
        when: float,
        event_id: str = "",
    ) -> bool:
        """Keeps a trigger event for the next cycle and wakes the trigger loop; False when
        the event does not trigger (no matching pattern, published by this kernel, or an
        event already kept: one event matching two subscriptions is delivered twice)."""
        if source == self.domain_id or not analysis.is_trigger(event_type, self.settings.triggers):
            return False
        if event_id:
            if event_id in self._seen:
                return False
            if len(self._seen_order) == self._seen_order.maxlen:
                self._seen.discard(self._seen_order[0])
            self._seen_order.append(event_id)
            self._seen.add(event_id)
        target = analysis.event_target(data, subject, source)
        detail = str(data.get("error") or data.get("reason") or data.get("message") or "")
        self._failures.append(FailureEvent(event_type, target, when, detail[:200]))
        self._trigger_types.append(event_type)
        self.trigger_events += 1
        self._wake.set()
        return True

    async def run_triggers(self) -> None:
        """Runs a cycle for the kept events, at most one per `min_interval_s`; forever,
        cancel to stop."""
        while True:
            await self._wake.wait()
            wait = self._last_event_cycle + self.settings.min_interval_s - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            if not self._failures:
                continue
            types = sorted(set(self._trigger_types))
            self._trigger_types.clear()
            self._last_event_cycle = self.clock()
            try:
                # Not shielded: this loop is cancelled only when the kernel stops, and the
                # restart starts the tasks a cut cycle created (`Squad.resume`).
                await self._run_cycle("event", ", ".join(types)[:MAX_REASON_LENGTH])
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tasks: an event-started cycle failed")

    # -- cycles ------------------------------------------------------------------------

    @runs_to_completion
    async def run_cycle(self, trigger: str, detail: str = "") -> tuple[Cycle, list[Task]]:
        """Runs one cycle now (after the one running, if any).

        Runs to its end even when its caller goes away: the tasks a cycle creates are
        started only once it is recorded, and a created task left unstarted would be
        neither run nor proposed again (it is still open) until a restart."""
        return await self._run_cycle(trigger, detail)

    async def _run_cycle(self, trigger: str, detail: str) -> tuple[Cycle, list[Task]]:
        require_text("reason", detail, max_length=MAX_REASON_LENGTH)
        async with self._lock:
            return await self._cycle(trigger, detail)

    async def _read(
        self, name: str, read: Callable[[], Awaitable[Sequence[T]]]
    ) -> tuple[tuple[T, ...], SourceStatus]:
        try:
            items = await asyncio.wait_for(read(), self.settings.source_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("tasks: source %s unavailable: %s", name, error)
            return (), SourceStatus(name, False, error[:500])
        return tuple(items), SourceStatus(name, True, "", len(items))

    async def snapshot(self) -> Snapshot:
        """Reads every source (concurrently) and takes the kept failure events."""
        s = self.sources
        reads = (
            asyncio.create_task(self._read("registry", s.domains)),
            asyncio.create_task(self._read("immune", s.anomalies)),
            asyncio.create_task(self._read("eventbus", s.dead_letters)),
            asyncio.create_task(self._read("orchestrator", s.executions)),
            asyncio.create_task(self._read("memory", s.patterns)),
        )
        domains, a = await reads[0]
        anomalies, b = await reads[1]
        letters, c = await reads[2]
        executions, d = await reads[3]
        patterns, e = await reads[4]
        failures = tuple(self._failures)
        self._failures.clear()
        return Snapshot(
            domains, anomalies, letters, executions, patterns, failures, (a, b, c, d, e)
        )

    async def _cycle(self, trigger: str, detail: str) -> tuple[Cycle, list[Task]]:
        started = self.clock()
        cycle_id = str(uuid.uuid4())
        snap = await self.snapshot()
        weak = analysis.analyse(snap, self.settings.analysis, started)
        evaluations = await self._evaluate(weak, started)
        proposals, created = await self._propose(cycle_id, weak)
        cycle = Cycle(
            cycle_id=cycle_id,
            trigger=trigger,
            trigger_detail=detail,
            started_at=started,
            finished_at=self.clock(),
            sources=snap.sources,
            weak_points=tuple(weak),
            proposals=tuple(proposals),
            evaluations=tuple(evaluations),
        )
        summary = {
            "cycle_id": cycle_id,
            "trigger": trigger,
            "trigger_detail": detail,
            "degraded": cycle.degraded,
            "weak_points": [w.key for w in weak],
            "tasks": [t.task_id for t in created],
            "fixed": [e.weak_point for e in evaluations if e.fixed],
        }
        async with self.store.db.transaction() as conn:
            await self.store.add_cycle(conn, cycle)
            for source in snap.sources:
                if not source.ok:
                    await self.events.enqueue(
                        conn,
                        "halo.source.degraded",
                        {"cycle_id": cycle_id, **source.to_json()},
                        subject=source.name,
                    )
            for w in weak:
                if w.severity is Severity.CRITICAL:
                    data = {"cycle_id": cycle_id, **w.to_json()}
                    await self.events.enqueue(conn, "halo.weakpoint.critical", data, subject=w.key)
                    await self.log_entries.enqueue(
                        conn, "halo.weakpoint.critical", data, subject=w.key
                    )
            await self.events.enqueue(conn, "halo.cycle.completed", summary, subject=cycle_id)
            await self.log_entries.enqueue(conn, "halo.cycle.completed", summary, subject=cycle_id)
        self._committed()
        for task in created:
            self.squad.start(task)
        log.info(
            "tasks: cycle %s (%s): %d weak points, %d tasks, %d judged%s",
            cycle_id,
            trigger,
            len(weak),
            len(created),
            len(evaluations),
            " (degraded)" if cycle.degraded else "",
        )
        return cycle, created

    async def _evaluate(self, weak: Sequence[WeakPoint], started: float) -> list[Evaluation]:
        present = {w.key for w in weak}
        verdicts: list[Evaluation] = []
        for task in await self.store.unevaluated():
            if task.updated_at > started:
                continue  # finished while this cycle read the sources: judged next time
            fixed = task.state is TaskState.COMPLETED and task.weak_point.key not in present
            verdict = Evaluation(
                task.task_id, task.weak_point.key, task.weak_point.kind, task.remedy, fixed
            )
            detail = (
                f"task {task.task_id} {task.state.value}; weak point "
                f"{'gone' if task.weak_point.key not in present else 'still present'}"
            )
            await self.experience.record(task.weak_point.kind, task.remedy, fixed, detail)
            async with self.store.db.transaction() as conn:
                await self.store.mark_evaluated(conn, replace(task, evaluated=True))
            verdicts.append(verdict)
        return verdicts

    async def _propose(
        self, cycle_id: str, weak: Sequence[WeakPoint]
    ) -> tuple[list[Proposal], list[Task]]:
        open_tasks = await self.store.open_weak_points()
        proposals: list[Proposal] = []
        created: list[Task] = []
        for w in weak:
            if w.severity < self.settings.min_severity:
                continue
            names = candidates_for(w.kind, self.settings.remedies)
            ranked = analysis.remedies_for(
                w.kind, self.settings.remedies, await self.experience.outcomes(w.kind, names)
            )
            proposal = Proposal(w.key, ranked)
            if not ranked:
                proposal = replace(proposal, skipped=f"no remedy configured for {w.kind}")
            elif w.key in open_tasks:
                proposal = replace(proposal, skipped=f"task {open_tasks[w.key]} is still open")
            elif len(created) >= self.settings.max_tasks:
                proposal = replace(
                    proposal, skipped=f"this cycle created its {self.settings.max_tasks} tasks"
                )
            else:
                best = ranked[0]
                task = await self.squad.create(
                    cycle_id,
                    w,
                    best.playbook,
                    f"{w.severity.label}: {w.reason}; {best.playbook} has fixed {w.kind} "
                    f"{best.successes} of {analysis.times(best.successes + best.failures)} "
                    f"(score {best.score:.2f})",
                )
                created.append(task)
                open_tasks[w.key] = task.task_id
                proposal = replace(proposal, task_id=task.task_id)
            proposals.append(proposal)
        return proposals, created

    # -- reads -------------------------------------------------------------------------

    async def get_cycle(self, cycle_id: str) -> Cycle:
        """One cycle; NotFound when unknown."""
        require_id("cycle_id", cycle_id)
        cycle = await self.store.get_cycle(cycle_id)
        if cycle is None:
            raise NotFound("cycle", cycle_id)
        return cycle

    async def list_cycles(self, size: int, token: str) -> tuple[list[Cycle], str]:
        """One page of cycles, newest first."""
        limit = page_size(size)
        position = decode_token(token)
        before = position.get("before") if position else None
        if before is not None and not isinstance(before, int):
            raise InvalidArgument("page_token", "is not a token this service issued")
        rows = await self.store.list_cycles(before, limit + 1)
        next_token = encode_token({"before": rows[limit - 1][0]}) if len(rows) > limit else ""
        return [c for _, c in rows[:limit]], next_token

    async def stats(self) -> Stats:
        """Counts, and the records proposals are ranked by (from experience, for every
        kind with a local record)."""
        local = await self.store.outcomes()
        kinds = sorted({k for k, _ in local})
        outcomes: list[tuple[str, PlaybookScore]] = []
        for kind in kinds:
            names = sorted({r for k, r in local if k == kind})
            known = await self.experience.outcomes(kind, names)
            outcomes.extend((kind, known[n]) for n in names if n in known)
        return Stats(
            cycles=await self.store.count_cycles(),
            tasks_by_state=await self.store.task_counts(),
            outcomes=outcomes,
            trigger_events=self.trigger_events,
        )
