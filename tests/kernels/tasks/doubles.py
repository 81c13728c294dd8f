"""Test doubles of the tasks kernel's peers (governance, its approval queue, remedy targets,
sources) and a builder of the cores over a real store."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import PermissionDenied
from services.common.governance_client import GateDecision
from services.common.outbox import Outbox, OutboxEvent
from services.common.storage import Database
from services.kernels.tasks import store as tables
from services.kernels.tasks.halo import Halo, HaloSettings
from services.kernels.tasks.model import (
    AnomalySeen,
    DeadLetterSeen,
    DomainHealth,
    ExecutionSeen,
    PatternSeen,
    Task,
)
from services.kernels.tasks.server import LocalExperience
from services.kernels.tasks.squad import RunResult, Squad, SquadSettings
from services.kernels.tasks.store import TasksStore
from tests.conftest import DatabaseTarget
from tests.support import ManualClock


class Gate:
    """Answers every question with one verdict; records the questions."""

    def __init__(self, verdict: str = "allow") -> None:
        self.verdict = verdict
        self.asked: list[dict[str, Any]] = []

    async def check(
        self,
        actor: str,
        action: str,
        resource: str = "",
        *,
        risk_level: str = "medium",
        context: Mapping[str, Any] | None = None,
        request_id: str = "",
    ) -> GateDecision:
        n = len(self.asked) + 1
        self.asked.append(
            {
                "actor": actor,
                "action": action,
                "resource": resource,
                "risk_level": risk_level,
                "request_id": request_id,
            }
        )
        if self.verdict == "pending_approval":
            return GateDecision(False, "pending_approval", f"d-{n}", approval_id=f"a-{n}")
        if self.verdict == "deny":
            return GateDecision(False, "deny", f"d-{n}", reasons=("policy no-tasks",))
        return GateDecision(True, "allow", f"d-{n}")


class Approvals:
    """An approval queue: settled by `approve`/`reject` or by `settle` (as if a person
    settled it in governance directly); nobody approves what `tasks` asked for."""

    def __init__(self) -> None:
        self.outcomes: dict[str, asyncio.Future[str]] = {}
        self.calls: list[tuple[str, str, str]] = []

    def _future(self, approval_id: str) -> asyncio.Future[str]:
        if approval_id not in self.outcomes:
            self.outcomes[approval_id] = asyncio.get_running_loop().create_future()
        return self.outcomes[approval_id]

    def settle(self, approval_id: str, outcome: str) -> None:
        future = self._future(approval_id)
        if not future.done():
            future.set_result(outcome)

    async def approve(self, approval_id: str, approver: str, reason: str) -> None:
        if approver == "tasks":
            raise PermissionDenied("approver 'tasks' asked for this request")
        self.calls.append(("approve", approval_id, approver))
        self.settle(approval_id, "approved")

    async def reject(self, approval_id: str, approver: str, reason: str) -> None:
        self.calls.append(("reject", approval_id, approver))
        self.settle(approval_id, "rejected")

    async def wait(self, approval_id: str, timeout_s: float) -> str:
        try:
            return await asyncio.wait_for(asyncio.shield(self._future(approval_id)), timeout_s)
        except TimeoutError:
            return "pending"


class Target:
    """Counts every run; succeeds unless the remedy is listed as failing; `hold` keeps
    runs waiting until released."""

    def __init__(self, failing: Sequence[str] = ()) -> None:
        self.failing = set(failing)
        self.runs: list[tuple[str, str, str]] = []
        self.hold = asyncio.Event()
        self.hold.set()

    async def run(self, task: Task) -> RunResult:
        self.runs.append((task.task_id, task.remedy, task.decision_id))
        await self.hold.wait()
        if task.remedy in self.failing:
            return RunResult(False, f"{task.remedy} did not help")
        return RunResult(True, f"{task.remedy} on {task.target} done", {"ok": True})


@dataclass
class Sources:
    """Fixed readings; a source named in `down` raises."""

    domains_: list[DomainHealth] = field(default_factory=list)
    anomalies_: list[AnomalySeen] = field(default_factory=list)
    dead_letters_: list[DeadLetterSeen] = field(default_factory=list)
    executions_: list[ExecutionSeen] = field(default_factory=list)
    patterns_: list[PatternSeen] = field(default_factory=list)
    down: set[str] = field(default_factory=set)

    def _read(self, name: str, items: list[Any]) -> list[Any]:
        if name in self.down:
            raise ConnectionError(f"{name} is down")
        return list(items)

    async def domains(self) -> Sequence[DomainHealth]:
        return self._read("registry", self.domains_)

    async def anomalies(self) -> Sequence[AnomalySeen]:
        return self._read("immune", self.anomalies_)

    async def dead_letters(self) -> Sequence[DeadLetterSeen]:
        return self._read("eventbus", self.dead_letters_)

    async def executions(self) -> Sequence[ExecutionSeen]:
        return self._read("orchestrator", self.executions_)

    async def patterns(self) -> Sequence[PatternSeen]:
        return self._read("memory", self.patterns_)


@dataclass
class Loop:
    """The cores over a real store, with doubles for every peer."""

    store: TasksStore
    squad: Squad
    halo: Halo
    gate: Gate
    approvals: Approvals
    target: Target
    sources: Sources
    clock: ManualClock
    events: Outbox
    log_entries: Outbox

    async def event_types(self) -> list[str]:
        return [e.event_type for e in await self.events.pending(10_000)]

    async def log_types(self) -> list[str]:
        return [e.event_type for e in await self.log_entries.pending(10_000)]

    async def logged(self) -> list[OutboxEvent]:
        return await self.log_entries.pending(10_000)


async def build(
    database: DatabaseTarget,
    *,
    verdict: str = "allow",
    settings: HaloSettings | None = None,
    squad_settings: SquadSettings | None = None,
) -> Loop:
    store = TasksStore(Database(database.url, schema=database.schema))
    await store.open()
    events = Outbox(store.db, tables.events_outbox, "tasks")
    log_entries = Outbox(store.db, tables.log_outbox, "tasks")
    clock = ManualClock()
    gate, approvals, target, sources = Gate(verdict), Approvals(), Target(), Sources()
    squad = Squad(
        store,
        gate,
        approvals,
        target,
        squad_settings or SquadSettings(),
        events,
        log_entries,
        lambda: None,
        clock,
    )
    halo = Halo(
        store,
        squad,
        sources,
        LocalExperience(store),
        settings or HaloSettings(min_interval_s=0.0),
        events,
        log_entries,
        lambda: None,
        clock,
    )
    return Loop(store, squad, halo, gate, approvals, target, sources, clock, events, log_entries)
