"""The firing loop: claims due times, runs their actions, records their outcomes.

Contract:
- `tick` is one pass: it claims the due schedules (see `store` for the compare-and-set),
  plans their firings with the missed-fire policy (`timing.plan`), takes over firings
  whose instance died, and starts every firing it now holds. `run` repeats it, sleeping
  until the earliest fire time (at most `poll_interval_s`, so schedules created by other
  instances are seen) or until `wake` is called. Firings are claimed up to `lookahead_s`
  ahead and wait for their fire time.
- A firing asks governance (the schedule's owner is the actor, action `schedule.fire`,
  resource the action's target), runs the action inside a span `schedule.fire`, and
  records its outcome with its fencing token. The outcome goes on the bus
  (`schedule.fired`, `schedule.fire_failed`, `schedule.fire_denied`,
  `schedule.fire_skipped`) and into the immutable log, through outboxes written in the
  same transaction as the outcome; outcomes are group-committed.
- Nothing here reads the wall clock on its own: the clock is injected and `tick` can be
  driven step by step, so the contract is testable without real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.action_peers import ActionFailed, Peers
from services.common.governance_client import GovernanceGate
from services.common.outbox import Outbox
from services.common.waiting import wait_for_event
from services.kernels.scheduler import timing
from services.kernels.scheduler.model import (
    ActionKind,
    Firing,
    Outcome,
    OverlapPolicy,
    ScheduleSpec,
    firing_id,
)
from services.kernels.scheduler.store import Advance, SchedulerStore

log = logging.getLogger(__name__)
tracer = trace.get_tracer("grace.scheduler")

OUTCOME_BATCH = 500
OUTCOME_LINGER_S = 0.05
MAX_FIRES_PER_PASS = 2000
# A schedule's old firings are pruned at about one outcome in PRUNE_EVERY, so the history
# stays between `history` and `history + PRUNE_EVERY` firings without a delete per firing.
PRUNE_EVERY = 16
OUTCOME_EVENTS = {
    Outcome.SUCCEEDED: "schedule.fired",
    Outcome.FAILED: "schedule.fire_failed",
    Outcome.DENIED: "schedule.fire_denied",
    Outcome.SKIPPED: "schedule.fire_skipped",
}

Write = Callable[[], AbstractAsyncContextManager[AsyncConnection]]


@dataclass(frozen=True)
class SchedulerSettings:
    """How the loop runs.

    Attributes:
        instance_id: Names this instance in the claims it holds.
        lease_s: How long a claimed firing stays this instance's before another may take
            it over; longer than `action_timeout_s`, so a live instance never loses one.
        poll_interval_s: Longest sleep between passes.
        lookahead_s: How far ahead of their fire time firings are claimed; each then waits
            for its fire time, so the claim's commit is not part of the lateness.
        batch: Schedules claimed, and lapsed firings taken over, per pass.
        max_concurrent: Firings whose actions run at once.
        history: Finished firings kept per schedule.
        tasks_available: Whether a tasks service is configured (task actions need it).
    """

    instance_id: str = ""
    lease_s: float = 60.0
    lookahead_s: float = 0.0
    poll_interval_s: float = 1.0
    batch: int = 500
    max_concurrent: int = 64
    history: int = 100
    tasks_available: bool = False


@dataclass(frozen=True)
class _Outcome:
    """A finished firing waiting for the outcome writer."""

    firing: Firing
    events: list[dict[str, Any]]
    log_row: dict[str, Any]
    done: asyncio.Future[bool]


def _prune_now(firing: Firing) -> bool:
    return int(hashlib.sha256(firing.firing_id.encode()).hexdigest()[:8], 16) % PRUNE_EVERY == 0


def digest(text: str, length: int = 32) -> str:
    """A short hex SHA-256 of `text`, for ids derived from other ids."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def idempotency_key(firing: Firing) -> str:
    """The key every call of a firing carries (1-128 characters, any instance alike)."""
    return f"schedule-{digest(firing.firing_id, 40)}"


class Firer:
    """Fires the due times of the schedules in a store.

    Args:
        store: Durable state.
        peers: What firings call.
        gate: Governance.
        settings: Loop settings (with the instance id set).
        clock: Wall clock (epoch seconds).
        events: The bus outbox.
        log_entries: The immutable log outbox.
        write: Opens a write transaction (shared with the schedule changes).
        committed: Called after a transaction that wrote events.
    """

    def __init__(
        self,
        store: SchedulerStore,
        peers: Peers,
        gate: GovernanceGate,
        settings: SchedulerSettings,
        clock: Callable[[], float],
        *,
        events: Outbox,
        log_entries: Outbox,
        write: Write,
        committed: Callable[[], None],
    ) -> None:
        self.store = store
        self.peers = peers
        self.gate = gate
        self.settings = settings
        self.clock = clock
        self.events = events
        self.log_entries = log_entries
        self._write = write
        self._committed = committed
        self.fired_here = 0
        self._wake = asyncio.Event()
        self._running: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(settings.max_concurrent)
        self._outcomes: list[_Outcome] = []
        self._writer: asyncio.Task[None] | None = None

    @property
    def instance_id(self) -> str:
        """This instance's id."""
        return self.settings.instance_id

    def wake(self) -> None:
        """Makes the loop look now (after a change that may bring a fire time closer)."""
        self._wake.set()

    async def close(self) -> None:
        """Stops the firings under way (their claims lapse and another pass resumes them)."""
        for task in list(self._running):
            task.cancel()
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    async def run(self) -> None:
        """Fires due times until cancelled. A failing pass (the database is down) is
        retried every poll interval and logged when the outage begins and ends."""
        failing = False
        while True:
            self._wake.clear()
            try:
                await self.tick()
                earliest = await self.store.earliest_fire_at()
                if failing:
                    log.info("scheduler passes succeed again")
                    failing = False
            except asyncio.CancelledError:
                raise
            except Exception:
                if not failing:
                    log.exception("scheduler pass failed; retrying every poll interval")
                    failing = True
                earliest = 0.0
            wait = self.settings.poll_interval_s
            if earliest:
                # Wake when the earliest unclaimed fire time is half the lookahead away and
                # claim the whole lookahead: passes then come a few times a second, each
                # claiming a batch, instead of one pass per firing.
                wake_at = earliest - self.settings.lookahead_s / 2
                wait = min(wait, max(0.0, wake_at - self.clock()))
            if wait > 0:
                await wait_for_event(self._wake, wait)

    async def tick(self) -> list[Firing]:
        """One pass: claims what is due, takes over lapsed firings, starts them all."""
        claimed = await self._claim_due()
        claimed.extend(await self._take_over_lapsed())
        for firing, spec in claimed:
            task = asyncio.create_task(self._fire(firing, spec), name=f"fire-{firing.firing_id}")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        return [firing for firing, _ in claimed]

    async def idle(self) -> None:
        """Waits until the firings started so far have finished."""
        while self._running:
            await asyncio.gather(*list(self._running), return_exceptions=True)

    async def _claim_due(self) -> list[tuple[Firing, ScheduleSpec]]:
        now = self.clock()
        horizon = now + self.settings.lookahead_s
        due = await self.store.due(horizon, self.settings.batch)
        if not due:
            return []
        lease_until = horizon + self.settings.lease_s
        advances: list[Advance] = []
        planned: list[tuple[Firing, ScheduleSpec]] = []
        for schedule in due:
            if len(planned) >= MAX_FIRES_PER_PASS:
                break  # the rest is claimed by the next pass, at once
            spec = schedule.spec
            plan = timing.plan(schedule.schedule_id, spec, schedule.next_due, horizon)
            advances.append(
                Advance(
                    schedule,
                    plan.next_due,
                    timing.fire_time(schedule.schedule_id, spec, plan.next_due),
                    max((d for d, _ in plan.fires), default=0.0),
                    len(plan.fires),
                )
            )
            planned.extend(
                (
                    Firing(
                        firing_id=firing_id(schedule.schedule_id, due_time),
                        schedule_id=schedule.schedule_id,
                        due=due_time,
                        fire_at=timing.fire_time(schedule.schedule_id, spec, due_time),
                        cause=cause,
                        outcome=Outcome.RUNNING,
                        attempt=1,
                        owner=self.instance_id,
                        lease_until=lease_until,
                        started_at=now,
                    ),
                    spec,
                )
                for due_time, cause in plan.fires
            )
        async with self._write() as conn:
            won = await self.store.advance_many(conn, advances, uuid.uuid4().hex, now)
            mine = [(f, spec) for f, spec in planned if f.schedule_id in won]
            inserted = await self.store.insert_claimed(conn, [f for f, _ in mine])
        return [(f, spec) for f, spec in mine if f.firing_id in inserted]

    async def _take_over_lapsed(self) -> list[tuple[Firing, ScheduleSpec]]:
        now = self.clock()
        lapsed = await self.store.lapsed(now, self.settings.batch)
        if not lapsed:
            return []
        taken: list[tuple[Firing, ScheduleSpec]] = []
        async with self._write() as conn:
            for firing in lapsed:
                schedule = await self.store.get(firing.schedule_id, conn)
                if schedule is None:
                    continue
                mine = await self.store.take_over(
                    conn, firing, self.instance_id, now, self.settings.lease_s
                )
                if mine is None:
                    continue
                if firing.outcome is Outcome.RUNNING:
                    log.warning(
                        "firing %s: the claim of %s lapsed; running it again as attempt %d",
                        firing.firing_id,
                        firing.owner,
                        mine.attempt,
                    )
                taken.append((mine, schedule.spec))
        return taken

    async def _fire(self, firing: Firing, spec: ScheduleSpec) -> None:
        with tracer.start_as_current_span(
            "schedule.fire",
            attributes={
                "grace.schedule_id": firing.schedule_id,
                "grace.firing_id": firing.firing_id,
                "grace.firing.cause": firing.cause.value,
                "grace.firing.attempt": firing.attempt,
                "grace.action": spec.action.target,
            },
        ) as span:
            early = firing.fire_at - self.clock()
            if early > 0:  # claimed ahead (lookahead): fire on time
                await asyncio.sleep(early)
            async with self._slots:
                started = self.clock()
                outcome, result, error, decision = await self._run_action(spec, firing)
            span.set_attribute("grace.firing.outcome", outcome.value)
            done = replace(
                firing,
                outcome=outcome,
                result=result,
                error=error,
                decision_id=decision,
                started_at=started,
                finished_at=self.clock(),
            )
            await self._record(spec, done)

    async def _run_action(
        self, spec: ScheduleSpec, firing: Firing
    ) -> tuple[Outcome, dict[str, Any], str, str]:
        """Asks governance, then runs the action: (outcome, result, error, decision id)."""
        action = spec.action
        context = {
            "schedule_id": firing.schedule_id,
            "firing_id": firing.firing_id,
            "due": firing.due,
            "cause": firing.cause.value,
        }
        decision = await self.gate.check(
            spec.owner,
            "schedule.fire",
            action.target,
            risk_level=spec.risk_level,
            context=context,
        )
        if not decision.allowed:
            reasons = "; ".join(decision.reasons) or decision.verdict
            if decision.approval_id:
                reasons += f" (approval {decision.approval_id})"
            return (
                Outcome.DENIED,
                {},
                f"governance {decision.verdict}: {reasons}",
                (decision.decision_id),
            )
        key = idempotency_key(firing)
        marker = {
            "schedule_id": firing.schedule_id,
            "due": firing.due,
            "firing_id": firing.firing_id,
            "idempotency_key": key,
        }
        params = action.params
        try:
            if action.kind is ActionKind.WORKFLOW:
                if spec.overlap is OverlapPolicy.SKIP:
                    previous = await self.store.last_execution(firing.schedule_id)
                    if previous and await self.peers.execution_running(previous):
                        return (
                            Outcome.SKIPPED,
                            {"running_execution_id": previous},
                            f"overlap policy skip: execution {previous} is still running",
                            decision.decision_id,
                        )
                data = {**(params.get("input") or {}), "_schedule": marker}
                result = await self.peers.start_workflow(params["workflow_id"], data, key)
            elif action.kind is ActionKind.DOMAIN:
                result = await self.peers.call_domain(params, params.get("input") or {}, key)
            elif action.kind is ActionKind.EVENT:
                # Published through the outbox with the outcome (see `_record`).
                result = {"event_id": f"schedule:{digest(firing.firing_id)}"}
            else:
                result = await self.peers.create_task(params, key)
        except ActionFailed as exc:
            return Outcome.FAILED, {}, str(exc), decision.decision_id
        return Outcome.SUCCEEDED, result, "", decision.decision_id

    async def _record(self, spec: ScheduleSpec, firing: Firing) -> None:
        """Stores the outcome under the firing's fencing token, with its events.

        Outcomes are written in batches (group commit): each waits for the transaction that
        holds it, and one transaction carries every outcome that finished meanwhile. The
        event rows are made here, in the firing's span, so they carry its trace.
        """
        action = spec.action
        rows: list[dict[str, Any]] = []
        if action.kind is ActionKind.EVENT and firing.outcome is Outcome.SUCCEEDED:
            rows.append(
                self.events.new_row(
                    str(action.params["event_type"]),
                    {
                        **(action.params.get("data") or {}),
                        "_schedule": {"schedule_id": firing.schedule_id, "due": firing.due},
                    },
                    subject=firing.schedule_id,
                    event_id=str(firing.result["event_id"]),
                )
            )
        announcement = {
            "schedule_id": firing.schedule_id,
            "firing_id": firing.firing_id,
            "owner": spec.owner,
            "action": action.target,
            "due": firing.due,
            "fire_at": firing.fire_at,
            "started_at": firing.started_at,
            "cause": firing.cause.value,
            "attempt": firing.attempt,
            "outcome": firing.outcome.value,
            "error": firing.error,
            "result": firing.result,
            "governance_decision_id": firing.decision_id,
            "instance_id": self.instance_id,
        }
        event_type = OUTCOME_EVENTS[firing.outcome]
        rows.append(self.events.new_row(event_type, announcement, subject=firing.schedule_id))
        log_row = self.log_entries.new_row(event_type, announcement, subject=firing.schedule_id)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._outcomes.append(_Outcome(firing, rows, log_row, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_outcomes(), name="scheduler-outcomes")
        if not await done:
            log.warning(
                "firing %s attempt %d: deleted, or a newer claim holds it; outcome %s dropped",
                firing.firing_id,
                firing.attempt,
                firing.outcome.value,
            )

    async def _write_outcomes(self) -> None:
        while self._outcomes:
            # Let the outcomes finishing about now join this transaction: each commit costs
            # an fsync and a few statements whatever its size, and nothing waits on an
            # outcome's record but its own task.
            await asyncio.sleep(OUTCOME_LINGER_S)
            batch, self._outcomes = self._outcomes[:OUTCOME_BATCH], self._outcomes[OUTCOME_BATCH:]
            try:
                async with self._write() as conn:
                    stored = await self.store.finish_many(conn, [i.firing for i in batch])
                    kept = [i for i in batch if i.firing.firing_id in stored]
                    events = [row for i in kept for row in i.events]
                    if events:
                        await conn.execute(self.events.table.insert(), events)
                    if kept:
                        await conn.execute(
                            self.log_entries.table.insert(), [i.log_row for i in kept]
                        )
                    for item in kept:
                        if _prune_now(item.firing):
                            await self.store.prune(
                                conn, item.firing.schedule_id, self.settings.history
                            )
            except Exception as exc:
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
                continue
            self.fired_here += len(kept)
            self._committed()
            for item in batch:
                if not item.done.done():
                    item.done.set_result(item.firing.firing_id in stored)
