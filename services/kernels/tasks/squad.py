"""The squad builder: tasks from proposals, put to governance, dispatched once when approved.

A task is created in the state governance's answer gives it: ALLOW makes it APPROVED (a
low-risk task runs at once under policy), PENDING_APPROVAL leaves it PENDING_APPROVAL (the
request is in governance's approval queue), DENY makes it REJECTED. A pending task becomes
APPROVED or REJECTED when a person settles its approval request: through `approve` and
`reject` (which call governance's Approve and Reject, so governance checks the approver is
not the requester), or directly in governance (a watcher follows every pending approval).

Only an APPROVED task is dispatched, and dispatching is a compare-and-set from APPROVED to
DISPATCHED in the store, so however many paths race to dispatch a task, its target is
called once per attempt. The target's answer makes it COMPLETED or FAILED. A task found
DISPATCHED or RUNNING after a restart is FAILED (its target may or may not have acted: it
is never called twice blindly); a FAILED task is put to governance again on request
(`retry`). Every transition is written with its bus event (`squad.task.<state>`) and its
immutable-log entry in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from services.common import completion
from services.common.completion import runs_to_completion
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound
from services.common.governance_client import GateDecision, GovernanceGate, heal_risk
from services.common.outbox import Outbox
from services.common.pagination import decode_token, encode_token, page_size
from services.common.validation import require_id, require_text
from services.kernels.tasks.model import (
    IN_FLIGHT_STATES,
    Task,
    TaskState,
    Transition,
    WeakPoint,
)
from services.kernels.tasks.store import TasksStore

log = logging.getLogger(__name__)

ACTOR = "tasks"
MAX_REASON_LENGTH = 1024


@dataclass(frozen=True)
class RunResult:
    """What a task's target answered."""

    success: bool
    message: str
    output: Mapping[str, Any] = field(default_factory=dict)


class Target(Protocol):
    """Runs a task's remedy (Guardian, the orchestrator or a domain in production)."""

    async def run(self, task: Task) -> RunResult:
        """Runs the remedy once; `task.decision_id` is governance's decision for it."""


class Approvals(Protocol):
    """Governance's approval queue, as the squad needs it."""

    async def approve(self, approval_id: str, approver: str, reason: str) -> None:
        """Approves; raises a GraceError when governance refuses (for example the
        approver is the requester)."""

    async def reject(self, approval_id: str, approver: str, reason: str) -> None:
        """Rejects; raises a GraceError when governance refuses."""

    async def wait(self, approval_id: str, timeout_s: float) -> str:
        """Follows an approval; "approved", "rejected", "expired" or "pending" (timeout).
        Raises when governance cannot be reached."""


@dataclass(frozen=True)
class SquadSettings:
    """How tasks are put to governance and run.

    Attributes:
        auto_dispatch: Dispatch a task as soon as it is approved (by policy or a person).
        risk: Risk declared for workflow and action remedies (heals use `HEAL_RISK`).
        watch_s: How long one wait on governance's approval stream lasts before renewing.
        retry_backoff_s: Wait before following an approval again after governance failed.
    """

    auto_dispatch: bool = True
    risk: str = "medium"
    watch_s: float = 60.0
    retry_backoff_s: float = 2.0


def question(task: Task, risk_default: str) -> tuple[str, str, str]:
    """(action, resource, risk) governance is asked about for a task. A heal asks exactly
    what Guardian would (`heal:<playbook>` on `component:<target>`), so Guardian redeems the
    task's decision instead of asking again."""
    kind, _, name = task.remedy.partition(":")
    resource = f"component:{task.target}"
    if kind == "heal":
        return task.remedy, resource, heal_risk(name)
    if kind == "workflow":
        return task.remedy, resource, risk_default
    return name, resource, risk_default


class Squad:
    """Tasks and their lifecycle.

    Args:
        store: Durable state.
        gate: Governance's decisions.
        approvals: Governance's approval queue.
        target: Runs remedies.
        settings: Settings.
        events: Outbox of bus events.
        log_entries: Outbox of immutable-log entries.
        committed: Called after each commit that enqueued entries (wakes the relays).
        clock: Epoch seconds.
    """

    def __init__(
        self,
        store: TasksStore,
        gate: GovernanceGate,
        approvals: Approvals,
        target: Target,
        settings: SquadSettings,
        events: Outbox,
        log_entries: Outbox,
        committed: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.gate = gate
        self.approvals = approvals
        self.target = target
        self.settings = settings
        self.events = events
        self.log_entries = log_entries
        self._committed = committed
        self.clock = clock
        self._background: set[asyncio.Task[None]] = set()
        self._watched: set[str] = set()

    # -- creation and governance ------------------------------------------------------

    async def _ask(self, task: Task) -> GateDecision:
        action, resource, risk = question(task, self.settings.risk)
        return await self.gate.check(
            ACTOR,
            action,
            resource,
            risk_level=risk,
            context={
                "task_id": task.task_id,
                "weak_point": task.weak_point.key,
                "severity": task.weak_point.severity.label,
                "reason": task.reason[:500],
                "attempt": task.attempts + 1,
            },
            request_id=f"task:{task.task_id}:{task.attempts + 1}",
        )

    @staticmethod
    def _verdict(decision: GateDecision) -> tuple[TaskState, str, dict[str, Any]]:
        """The state governance's decision gives a task, why, and what else changes."""
        why = "; ".join(decision.reasons) or decision.verdict
        changes: dict[str, Any] = {
            "decision_id": decision.decision_id,
            "approval_id": decision.approval_id,
        }
        if decision.verdict == "pending_approval":
            state, reason = TaskState.PENDING_APPROVAL, f"governance holds it for approval: {why}"
        elif decision.allowed:
            state, reason = TaskState.APPROVED, f"allowed by governance ({decision.source}): {why}"
        else:
            state, reason = TaskState.REJECTED, f"denied by governance: {why}"
            changes["error"] = reason
        return state, reason[:MAX_REASON_LENGTH], changes

    async def create(self, cycle_id: str, weak_point: WeakPoint, remedy: str, reason: str) -> Task:
        """Creates a task for a weak point, in the state governance's answer gives it."""
        now = self.clock()
        draft = Task(
            task_id=str(uuid.uuid4()),
            cycle_id=cycle_id,
            weak_point=weak_point,
            remedy=remedy,
            target=weak_point.target,
            risk="",
            reason=reason[:MAX_REASON_LENGTH],
            state=TaskState.PENDING_APPROVAL,
            created_at=now,
            updated_at=now,
        )
        draft = replace(draft, risk=question(draft, self.settings.risk)[2])
        state, why, changes = self._verdict(await self._ask(draft))
        decided_at = self.clock()
        task = replace(
            draft,
            state=state,
            updated_at=decided_at,
            history=(Transition(state, decided_at, "governance", why),),
            **changes,
        )
        async with self.store.db.transaction() as conn:
            await self.store.add_task(conn, task)
            await self._announce(conn, task)
        self._committed()
        log.info("tasks: %s %s on %s: %s", task.task_id, task.remedy, task.target, task.state.value)
        return task

    def start(self, task: Task) -> None:
        """Starts what comes next for a task: dispatch when approved, follow the approval
        when pending."""
        if task.state is TaskState.APPROVED and self.settings.auto_dispatch:
            self._spawn(self._dispatch_quietly(task.task_id), f"task-dispatch-{task.task_id}")
        elif (
            task.state is TaskState.PENDING_APPROVAL
            and task.approval_id
            and task.task_id not in self._watched
        ):
            self._watched.add(task.task_id)
            self._spawn(self._watch(task), f"task-watch-{task.task_id}")

    async def resume(self) -> None:
        """After a restart: fails tasks whose outcome was lost, resumes the others."""
        for task in await self.store.tasks_in(IN_FLIGHT_STATES):
            failed = task.moved(
                TaskState.FAILED,
                self.clock(),
                ACTOR,
                "outcome unknown: the kernel stopped while the target was acting; retry on request",
                error="outcome unknown after a restart",
            )
            await self._save(task, failed)
        for task in await self.store.tasks_in(
            frozenset({TaskState.APPROVED, TaskState.PENDING_APPROVAL})
        ):
            self.start(task)

    # -- approval ----------------------------------------------------------------------

    @runs_to_completion
    async def approve(self, task_id: str, approver: str, reason: str) -> Task:
        """Approves a pending task through governance (the approver must not be the
        requester), then dispatches it.

        Runs to its end even when its caller goes away: a task stored APPROVED but never
        started would not be dispatched, nor approvable again, until a restart."""
        task = await self._pending(task_id, approver, reason)
        await self.approvals.approve(task.approval_id, approver, reason)
        settled = await self._settle(task, TaskState.APPROVED, approver, reason or "approved")
        self.start(settled)
        return settled

    async def reject(self, task_id: str, approver: str, reason: str) -> Task:
        """Rejects a pending task through governance."""
        task = await self._pending(task_id, approver, reason)
        await self.approvals.reject(task.approval_id, approver, reason)
        return await self._settle(task, TaskState.REJECTED, approver, reason or "rejected")

    async def _pending(self, task_id: str, approver: str, reason: str) -> Task:
        require_text("x-actor", approver, max_length=256, required=True)
        require_text("reason", reason, max_length=MAX_REASON_LENGTH)
        task = await self.get(task_id)
        if task.state is not TaskState.PENDING_APPROVAL or not task.approval_id:
            raise FailedPrecondition(
                f"task {task_id} is {task.state.value}: only a pending-approval task is "
                "approved or rejected",
                reason="TASK_STATE",
                metadata={"task_id": task_id, "state": task.state.value},
            )
        return task

    async def _settle(self, task: Task, state: TaskState, actor: str, reason: str) -> Task:
        """Moves a pending task to APPROVED or REJECTED; when another path settled it
        first, returns it as that path left it."""
        settled = task.moved(state, self.clock(), actor, reason[:MAX_REASON_LENGTH])
        if state is TaskState.REJECTED:
            settled = replace(settled, error=f"rejected by {actor}: {reason}"[:MAX_REASON_LENGTH])
        if await self._save(task, settled):
            return settled
        return await self.get(task.task_id)

    async def _watch(self, task: Task) -> None:
        """Follows a pending task's approval in governance until it is settled."""
        try:
            while True:
                try:
                    outcome = await self.approvals.wait(task.approval_id, self.settings.watch_s)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("tasks: following approval %s failed: %s", task.approval_id, exc)
                    await asyncio.sleep(self.settings.retry_backoff_s)
                    continue
                current = await self.get(task.task_id)
                if current.state is not TaskState.PENDING_APPROVAL:
                    return
                if outcome == "pending":
                    continue
                if outcome == "approved":
                    settled = await self._settle(
                        current, TaskState.APPROVED, "governance", "approved in governance"
                    )
                    self.start(settled)
                else:
                    await self._settle(
                        current, TaskState.REJECTED, "governance", f"approval {outcome}"
                    )
                return
        finally:
            self._watched.discard(task.task_id)

    # -- dispatch ----------------------------------------------------------------------

    async def dispatch(self, task_id: str) -> Task:
        """Dispatches an approved task to its target once and returns it finished.
        FailedPrecondition when the task is not APPROVED (not approved, or dispatched
        already by another path)."""
        task = await self.get(task_id)
        if task.state is not TaskState.APPROVED:
            raise FailedPrecondition(
                f"task {task_id} is {task.state.value}: only an approved task is dispatched",
                reason="TASK_STATE",
                metadata={"task_id": task_id, "state": task.state.value},
            )
        dispatched = task.moved(
            TaskState.DISPATCHED,
            self.clock(),
            ACTOR,
            f"dispatched {task.remedy} to {task.target}",
            attempts=task.attempts + 1,
            error="",
            result={},
        )
        if not await self._save(task, dispatched):
            raise FailedPrecondition(
                f"task {task_id} was dispatched by another request",
                reason="TASK_STATE",
                metadata={"task_id": task_id},
            )
        running = dispatched.moved(TaskState.RUNNING, self.clock(), ACTOR, "target acting")
        await self._save(dispatched, running)
        try:
            result = await self.target.run(running)
        except Exception as exc:
            log.exception("tasks: target of %s raised", task_id)
            result = RunResult(False, f"target error: {type(exc).__name__}: {exc}")
        finished = running.moved(
            TaskState.COMPLETED if result.success else TaskState.FAILED,
            self.clock(),
            ACTOR,
            result.message[:MAX_REASON_LENGTH],
            result=dict(result.output),
            error="" if result.success else result.message[:MAX_REASON_LENGTH],
        )
        await self._save(running, finished)
        log.info("tasks: %s %s: %s", task_id, finished.state.value, result.message)
        return finished

    async def _dispatch_quietly(self, task_id: str) -> None:
        with contextlib.suppress(FailedPrecondition):
            await self.dispatch(task_id)

    @runs_to_completion
    async def retry(self, task_id: str, actor: str) -> Task:
        """Puts a failed task to governance again; it runs when allowed, else waits for a
        new approval (or is rejected).

        Runs to its end even when its caller goes away: a task stored APPROVED (or pending)
        but never started would be neither run nor retryable until a restart."""
        task = await self.get(task_id)
        if task.state is not TaskState.FAILED:
            raise FailedPrecondition(
                f"task {task_id} is {task.state.value}: only a failed task is retried",
                reason="TASK_STATE",
                metadata={"task_id": task_id, "state": task.state.value},
            )
        state, why, changes = self._verdict(await self._ask(task))
        decided = task.moved(
            state,
            self.clock(),
            "governance",
            f"retry asked by {actor or 'anonymous'}; {why}"[:MAX_REASON_LENGTH],
            **changes,
        )
        if not await self._save(task, decided):
            raise FailedPrecondition(
                f"task {task_id} was retried by another request", reason="TASK_STATE"
            )
        self.start(decided)
        return decided

    # -- reads -------------------------------------------------------------------------

    async def get(self, task_id: str) -> Task:
        """One task; NotFound when unknown."""
        require_id("task_id", task_id)
        task = await self.store.get_task(task_id)
        if task is None:
            raise NotFound("task", task_id)
        return task

    async def list(
        self, state: TaskState | None, cycle_id: str, size: int, token: str
    ) -> tuple[list[Task], str]:
        """One page of tasks, newest first."""
        if cycle_id:
            require_id("cycle_id", cycle_id)
        limit = page_size(size)
        position = decode_token(token)
        before = position.get("before") if position else None
        if before is not None and not isinstance(before, int):
            raise InvalidArgument("page_token", "is not a token this service issued")
        rows = await self.store.list_tasks(state, cycle_id, before, limit + 1)
        next_token = encode_token({"before": rows[limit - 1][0]}) if len(rows) > limit else ""
        return [t for _, t in rows[:limit]], next_token

    # -- writes ------------------------------------------------------------------------

    async def _save(self, before: Task, after: Task) -> bool:
        async with self.store.db.transaction() as conn:
            if not await self.store.save_task(conn, after, before.state):
                return False
            await self._announce(conn, after)
        self._committed()
        return True

    async def _announce(self, conn: Any, task: Task) -> None:
        event_type = f"squad.task.{task.state.name.lower()}"
        data = task.to_json()
        data.pop("history", None)
        await self.events.enqueue(conn, event_type, data, subject=task.task_id)
        await self.log_entries.enqueue(conn, event_type, data, subject=task.task_id)

    def _spawn(self, coro: Any, name: str) -> None:
        job = asyncio.create_task(coro, name=name)
        self._background.add(job)
        job.add_done_callback(self._finished)

    def _finished(self, job: asyncio.Task[None]) -> None:
        self._background.discard(job)
        if not job.cancelled() and job.exception() is not None:
            log.error("tasks: %s failed", job.get_name(), exc_info=job.exception())

    async def idle(self) -> None:
        """Waits until every dispatch started so far has finished (approval watchers are
        left running)."""
        while True:
            busy = [j for j in self._background if j.get_name().startswith("task-dispatch-")]
            if not busy:
                return
            await asyncio.gather(*busy, return_exceptions=True)

    async def close(self) -> None:
        """Cancels dispatches and watchers (a cancelled dispatch is failed on restart)."""
        # An approval or retry whose caller went away starts its task before the jobs stop.
        await completion.drain()
        for job in list(self._background):
            job.cancel()
        for job in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job
