"""The scheduler core: schedules and what can be done with them.

Contract:
- `create` stores a schedule with its first due time (validated against the clock and the
  deployment); `pause`, `resume`, `delete` change it, each announced on the bus and in the
  immutable log in the same transaction; `trigger` and `backfill` queue extra firings
  (PENDING) that the firing loop picks up at once.
- `run`, `tick` and `idle` are the firing loop's (see `firer`): the scheduler and the loop
  share the store, the outboxes and one write lock.
- The clock is injected, so the whole contract is testable without real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.action_peers import Peers
from services.common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from services.common.governance_client import GovernanceGate
from services.common.outbox import Outbox
from services.common.pagination import decode_token, encode_token, page_size
from services.common.validation import require_id
from services.kernels.scheduler import timing
from services.kernels.scheduler.firer import Firer, SchedulerSettings, digest
from services.kernels.scheduler.model import (
    ActionKind,
    Cause,
    Firing,
    Outcome,
    Schedule,
    ScheduleSpec,
    ScheduleState,
    TimingKind,
    firing_id,
)
from services.kernels.scheduler.store import SchedulerStore, events_outbox, log_outbox

log = logging.getLogger(__name__)
tracer = trace.get_tracer("grace.scheduler")

SOURCE = "scheduler"
RECENT_FIRINGS = 10
MAX_BACKFILL = 1000
OUTCOME_BATCH = 500
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


@dataclass(frozen=True)
class Stats:
    """Counts for GetSchedulerStats."""

    schedules_by_state: dict[str, int]
    firings_by_outcome: dict[str, int]
    fired_here: int
    instance_id: str


@dataclass(frozen=True)
class Backfill:
    """What a backfill queued."""

    queued: list[float]
    already_fired: int


class Scheduler:
    """Stores schedules and fires them.

    Args:
        store: Durable state.
        peers: What firings call.
        gate: Governance.
        settings: Loop settings.
        clock: Wall clock (epoch seconds); injectable for tests.
    """

    def __init__(
        self,
        store: SchedulerStore,
        peers: Peers,
        gate: GovernanceGate,
        settings: SchedulerSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.peers = peers
        self.gate = gate
        self.settings = replace(
            settings, instance_id=settings.instance_id or f"scheduler-{uuid.uuid4().hex[:12]}"
        )
        self.clock = clock
        self.events = Outbox(store.db, events_outbox, SOURCE)
        self.log_entries = Outbox(store.db, log_outbox, SOURCE)
        self._on_commit: list[Callable[[], None]] = []
        self._write_lock = asyncio.Lock()
        self.firer = Firer(
            store,
            peers,
            gate,
            self.settings,
            clock,
            events=self.events,
            log_entries=self.log_entries,
            write=self._write,
            committed=self._committed,
        )

    @property
    def instance_id(self) -> str:
        """This instance's id."""
        return self.settings.instance_id

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Calls `callback` after each transaction that wrote events (wakes the relays)."""
        self._on_commit.append(callback)

    def _committed(self) -> None:
        for callback in self._on_commit:
            callback()

    def wake(self) -> None:
        """Makes the loop look now (after a change that may bring a fire time closer)."""
        self.firer.wake()

    async def open(self) -> None:
        """Creates the tables."""
        await self.store.open()

    async def close(self) -> None:
        """Stops the firings under way (their claims lapse and another pass resumes them)."""
        await self.firer.close()

    # Schedules ---------------------------------------------------------------------------

    def check(self, spec: ScheduleSpec, now: float) -> None:
        """Rules on a spec that need the clock or the deployment."""
        if spec.action.kind is ActionKind.TASK and not self.settings.tasks_available:
            raise FailedPrecondition(
                "spec.task: task actions need the tasks kernel, and no tasks service is "
                "configured in this deployment"
            )
        if spec.jitter_s and spec.jitter_s >= timing.shortest_gap(spec.timing, now):
            raise InvalidArgument(
                "spec.jitter", "must be shorter than the time between two due times"
            )

    async def create(
        self, schedule_id: str, spec: ScheduleSpec, *, request_id: str = "", paused: bool = False
    ) -> Schedule:
        """Stores a new schedule; the same `request_id` returns the first one created."""
        if request_id:
            existing = await self.store.by_request_id(request_id)
            if existing is not None:
                return existing
        schedule_id = require_id("schedule_id", schedule_id or f"sch-{uuid.uuid4().hex[:16]}")
        now = self.clock()
        self.check(spec, now)
        if spec.timing.kind is TimingKind.INTERVAL and not spec.timing.start:
            spec = replace(spec, timing=replace(spec.timing, start=now + spec.timing.every_s))
        due = timing.first_due(spec, now)
        schedule = Schedule(
            schedule_id=schedule_id,
            spec=spec,
            state=(
                ScheduleState.PAUSED
                if paused
                else ScheduleState.ACTIVE
                if due
                else ScheduleState.COMPLETED
            ),
            created_at=now,
            updated_at=now,
            next_due=due,
            next_fire_at=timing.fire_time(schedule_id, spec, due),
        )
        async with self._write() as conn:
            inserted = await self.store.insert_schedule(conn, schedule, request_id)
            if inserted:
                await self._announce(
                    conn,
                    "schedule.created",
                    schedule_id,
                    {"owner": spec.owner, "action": spec.action.target, "next_due": due},
                )
        if not inserted:
            # A concurrent create with the same request id won the race: answer its result.
            existing = await self.store.by_request_id(request_id) if request_id else None
            if existing is not None:
                return existing
            raise AlreadyExists("schedule", schedule_id)
        self._committed()
        self.wake()
        return schedule

    async def get(self, schedule_id: str) -> tuple[Schedule, list[Firing]]:
        """A schedule and its most recent firings."""
        schedule = await self.store.get(schedule_id)
        if schedule is None:
            raise NotFound("schedule", schedule_id)
        return schedule, await self.store.firings_of(schedule_id, RECENT_FIRINGS)

    async def page(
        self, owner: str, state: ScheduleState | None, size: int, token: str
    ) -> tuple[list[Schedule], str]:
        """One page of schedules by id."""
        limit = page_size(size)
        position = decode_token(token) or {"after": ""}
        if not isinstance(position.get("after"), str):
            raise InvalidArgument("page_token", "is not a token of this list")
        found = await self.store.page(owner, state, position["after"], limit + 1)
        more = len(found) > limit
        found = found[:limit]
        return found, encode_token({"after": found[-1].schedule_id}) if more else ""

    async def _change_state(
        self, schedule_id: str, allowed: tuple[ScheduleState, ...], target: ScheduleState, why: str
    ) -> Schedule:
        for _ in range(5):
            schedule = await self.store.get(schedule_id)
            if schedule is None:
                raise NotFound("schedule", schedule_id)
            if schedule.state is target:
                return schedule
            if schedule.state not in allowed:
                raise FailedPrecondition(
                    f"schedule {schedule_id!r} is {schedule.state.value}; "
                    f"only a {' or '.join(s.value for s in allowed)} schedule can be {why}"
                )
            now = self.clock()
            async with self._write() as conn:
                if not await self.store.set_state(conn, schedule, target, now):
                    continue  # changed meanwhile (a claim); read again
                await self._announce(conn, f"schedule.{why}", schedule_id, {})
            self._committed()
            self.wake()
            return replace(schedule, state=target, updated_at=now, version=schedule.version + 1)
        raise Aborted(f"schedule {schedule_id!r} kept changing; try again")

    async def pause(self, schedule_id: str) -> Schedule:
        """Stops firing until resumed."""
        return await self._change_state(
            schedule_id, (ScheduleState.ACTIVE,), ScheduleState.PAUSED, "paused"
        )

    async def resume(self, schedule_id: str) -> Schedule:
        """Fires again; due times that passed meanwhile follow the missed-fire policy."""
        return await self._change_state(
            schedule_id, (ScheduleState.PAUSED,), ScheduleState.ACTIVE, "resumed"
        )

    async def delete(self, schedule_id: str) -> None:
        """Deletes a schedule and its history."""
        async with self._write() as conn:
            if not await self.store.delete(conn, schedule_id):
                raise NotFound("schedule", schedule_id)
            await self._announce(conn, "schedule.deleted", schedule_id, {})
        self._committed()

    async def trigger(self, schedule_id: str, request_id: str = "") -> Firing:
        """Queues one firing now; the same `request_id` queues it once."""
        schedule = await self.store.get(schedule_id)
        if schedule is None:
            raise NotFound("schedule", schedule_id)
        now = self.clock()
        suffix = digest(request_id, 16) if request_id else uuid.uuid4().hex[:16]
        firing = Firing(
            firing_id=f"{schedule_id}@trigger-{suffix}",
            schedule_id=schedule_id,
            due=now,
            fire_at=now,
            cause=Cause.TRIGGER,
            outcome=Outcome.PENDING,
        )
        async with self._write() as conn:
            if not await self.store.insert_firing(conn, firing):
                existing = await self.store.get_firing(firing.firing_id)
                return existing or firing
            await self.store.count_fired(conn, schedule_id, 1)
        self.wake()
        return firing

    async def backfill(self, schedule_id: str, start: float, end: float) -> Backfill:
        """Queues the due times in [start, end) that have not fired."""
        schedule = await self.store.get(schedule_id)
        if schedule is None:
            raise NotFound("schedule", schedule_id)
        now = self.clock()
        if not start:
            raise InvalidArgument("start_time", "is required")
        if not end or end <= start:
            raise InvalidArgument("end_time", "is required and must be after start_time")
        if end > now:
            raise InvalidArgument("end_time", "must not be in the future")
        dues = timing.dues_between(schedule.spec.timing, start, end, MAX_BACKFILL)
        if len(dues) > MAX_BACKFILL:
            raise InvalidArgument(
                "end_time", f"the range holds more than {MAX_BACKFILL} due times; split it"
            )
        queued: list[float] = []
        async with self._write() as conn:
            for due in dues:
                firing = Firing(
                    firing_id=firing_id(schedule_id, due),
                    schedule_id=schedule_id,
                    due=due,
                    fire_at=now,
                    cause=Cause.BACKFILL,
                    outcome=Outcome.PENDING,
                )
                if await self.store.insert_firing(conn, firing):
                    queued.append(due)
            await self.store.count_fired(conn, schedule_id, len(queued))
        self.wake()
        return Backfill(queued, len(dues) - len(queued))

    async def firings(self, schedule_id: str, size: int, token: str) -> tuple[list[Firing], str]:
        """One page of a schedule's firings, newest first."""
        limit = page_size(size)
        if await self.store.get(schedule_id) is None:
            raise NotFound("schedule", schedule_id)
        position = decode_token(token)
        before = None
        if position is not None:
            try:
                before = (float(position["due"]), str(position["id"]))
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument("page_token", "is not a token of this list") from None
        found = await self.store.firings_of(schedule_id, limit + 1, before)
        more = len(found) > limit
        found = found[:limit]
        token = encode_token({"due": found[-1].due, "id": found[-1].firing_id}) if more else ""
        return found, token

    async def stats(self) -> Stats:
        """Counts."""
        return Stats(
            await self.store.count_by_state(),
            await self.store.count_by_outcome(),
            self.firer.fired_here,
            self.instance_id,
        )

    # The loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Fires due times until cancelled (see `firer`)."""
        await self.firer.run()

    async def tick(self) -> list[Firing]:
        """One pass of the firing loop (see `Firer.tick`)."""
        return await self.firer.tick()

    async def idle(self) -> None:
        """Waits until the firings started so far have finished."""
        await self.firer.idle()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction, one at a time in this process: SQLite's busy handler would
        otherwise sleep in coarse steps whenever two writers meet (PostgreSQL does not
        need it, and it costs nothing there: writes here are batched)."""
        async with self._write_lock, self.store.db.transaction() as conn:
            yield conn

    async def _announce(
        self, conn: Any, event_type: str, schedule_id: str, data: dict[str, Any]
    ) -> None:
        payload = {"schedule_id": schedule_id, **data}
        await self.events.enqueue(conn, event_type, payload, subject=schedule_id)
        await self.log_entries.enqueue(conn, event_type, payload, subject=schedule_id)
