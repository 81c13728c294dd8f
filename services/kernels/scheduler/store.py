"""Durable state of the scheduler: schedules, firings, and the outboxes of their events.

Who fires what is decided here, by compare-and-set on rows, so any number of scheduler
instances can share one database:

- Due schedules are claimed by `advance_many`: `UPDATE ... WHERE version = :seen` advances
  each one's next due time and stamps it with the pass's unique claim token; the rows that
  carry the token afterwards are the ones this instance won. In the same transaction,
  `insert_claimed` inserts the firings of the due times it passed, already RUNNING under
  its lease. An instance that lost the race matched no row and fires nothing.
- A firing's `attempt` is its fencing token. `finish_many` records an outcome only while
  the token is still the one the instance claimed with; `take_over` gives a firing whose
  lease lapsed (its instance died) to another instance with the next token, so a slow
  instance that comes back cannot overwrite the newer claim's outcome.
- Firing ids are derived from the schedule and the due time, so a backfill or a second
  claim of the same due time collides with the primary key instead of firing twice.

Claims and outcomes are written a batch per statement (executemany) and read back by
token, because drivers do not report which rows of an executemany matched: one pass, or
one batch of outcomes, costs a few statements and one commit whatever its size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.outbox import outbox_table
from services.common.storage import Database
from services.kernels.scheduler.model import (
    OPEN_OUTCOMES,
    Cause,
    Firing,
    Outcome,
    Schedule,
    ScheduleSpec,
    ScheduleState,
)

metadata = MetaData()

schedules = Table(
    "scheduler_schedules",
    metadata,
    Column("schedule_id", String(128), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("next_due", Float, nullable=False),
    Column("next_fire_at", Float, nullable=False),
    Column("last_due", Float, nullable=False),
    Column("fire_count", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("request_id", String(128), nullable=True, unique=True),
    # Token of the claim that last advanced the schedule (see `advance_many`).
    Column("claim_token", String(32), nullable=False, server_default=""),
    Index("scheduler_schedules_due", "state", "next_fire_at"),
    Index("scheduler_schedules_owner", "owner", "schedule_id"),
)

firings = Table(
    "scheduler_firings",
    metadata,
    Column("firing_id", String(200), primary_key=True),
    Column("schedule_id", String(128), nullable=False),
    Column("due", Float, nullable=False),
    Column("fire_at", Float, nullable=False),
    Column("cause", String(16), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("owner", String(64), nullable=False),
    Column("lease_until", Float, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float, nullable=False),
    Column("result", JSON, nullable=False),
    Column("error", String(2048), nullable=False),
    Column("decision_id", String(128), nullable=False),
    Index("scheduler_firings_schedule", "schedule_id", "due"),
    Index("scheduler_firings_open", "outcome", "lease_until"),
)

events_outbox = outbox_table(metadata, "scheduler")
log_outbox = outbox_table(metadata, "scheduler_log")


@dataclass(frozen=True)
class Advance:
    """Where a claim moves a schedule.

    Attributes:
        schedule: The schedule as read (its version is compared).
        next_due: Its next due time after the claim (0: nothing left, it completes).
        next_fire_at: That due time plus its jitter.
        last_due: The last due time the claim fires.
        fired: How many firings the claim makes.
    """

    schedule: Schedule
    next_due: float
    next_fire_at: float
    last_due: float
    fired: int


def _chunks(items: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _schedule(row: Row[Any]) -> Schedule:
    m = row._mapping
    return Schedule(
        schedule_id=m["schedule_id"],
        spec=ScheduleSpec.from_json(m["spec"]),
        state=ScheduleState(m["state"]),
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        next_due=m["next_due"],
        next_fire_at=m["next_fire_at"],
        last_due=m["last_due"],
        fire_count=m["fire_count"],
        version=m["version"],
    )


def _firing(row: Row[Any]) -> Firing:
    m = row._mapping
    return Firing(
        firing_id=m["firing_id"],
        schedule_id=m["schedule_id"],
        due=m["due"],
        fire_at=m["fire_at"],
        cause=Cause(m["cause"]),
        outcome=Outcome(m["outcome"]),
        attempt=m["attempt"],
        owner=m["owner"],
        lease_until=m["lease_until"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        result=dict(m["result"] or {}),
        error=m["error"],
        decision_id=m["decision_id"],
    )


def firing_row(firing: Firing) -> dict[str, Any]:
    """The row of a firing."""
    return {
        "firing_id": firing.firing_id,
        "schedule_id": firing.schedule_id,
        "due": firing.due,
        "fire_at": firing.fire_at,
        "cause": firing.cause.value,
        "outcome": firing.outcome.value,
        "attempt": firing.attempt,
        "owner": firing.owner,
        "lease_until": firing.lease_until,
        "started_at": firing.started_at,
        "finished_at": firing.finished_at,
        "result": firing.result,
        "error": firing.error[:2048],
        "decision_id": firing.decision_id,
    }


class SchedulerStore:
    """Reads and writes the scheduler's tables.

    Args:
        db: The database (SQLite or PostgreSQL).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self) -> None:
        """Creates the tables if missing."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the connections."""
        await self.db.close()

    # Schedules ---------------------------------------------------------------------------

    async def insert_schedule(
        self, conn: AsyncConnection, schedule: Schedule, request_id: str
    ) -> bool:
        """Inserts a new schedule; False when its id or request id is taken."""
        values = {
            "schedule_id": schedule.schedule_id,
            "owner": schedule.spec.owner,
            "state": schedule.state.value,
            "spec": schedule.spec.to_json(),
            "created_at": schedule.created_at,
            "updated_at": schedule.updated_at,
            "next_due": schedule.next_due,
            "next_fire_at": schedule.next_fire_at,
            "last_due": schedule.last_due,
            "fire_count": schedule.fire_count,
            "version": schedule.version,
            "request_id": request_id or None,
        }
        try:
            async with conn.begin_nested():
                await conn.execute(schedules.insert().values(**values))
        except IntegrityError:
            return False
        return True

    async def get(self, schedule_id: str, conn: AsyncConnection | None = None) -> Schedule | None:
        """One schedule, or None."""
        query = select(schedules).where(schedules.c.schedule_id == schedule_id)
        if conn is not None:
            row = (await conn.execute(query)).first()
        else:
            async with self.db.read() as read:
                row = (await read.execute(query)).first()
        return _schedule(row) if row is not None else None

    async def by_request_id(self, request_id: str) -> Schedule | None:
        """The schedule a create with this request id made, or None."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(schedules).where(schedules.c.request_id == request_id))
            ).first()
        return _schedule(row) if row is not None else None

    async def page(
        self, owner: str, state: ScheduleState | None, after: str, limit: int
    ) -> list[Schedule]:
        """Schedules by id after `after`, filtered."""
        query = select(schedules).where(schedules.c.schedule_id > after)
        if owner:
            query = query.where(schedules.c.owner == owner)
        if state is not None:
            query = query.where(schedules.c.state == state.value)
        query = query.order_by(schedules.c.schedule_id).limit(limit)
        async with self.db.read() as conn:
            return [_schedule(r) for r in await conn.execute(query)]

    async def set_state(
        self,
        conn: AsyncConnection,
        schedule: Schedule,
        state: ScheduleState,
        now: float,
    ) -> bool:
        """Changes the state if nobody changed the schedule since it was read."""
        result = await conn.execute(
            update(schedules)
            .where(
                schedules.c.schedule_id == schedule.schedule_id,
                schedules.c.version == schedule.version,
            )
            .values(state=state.value, updated_at=now, version=schedule.version + 1)
        )
        return result.rowcount == 1

    async def delete(self, conn: AsyncConnection, schedule_id: str) -> bool:
        """Deletes a schedule and its firings; False when it did not exist."""
        result = await conn.execute(delete(schedules).where(schedules.c.schedule_id == schedule_id))
        await conn.execute(delete(firings).where(firings.c.schedule_id == schedule_id))
        return result.rowcount == 1

    async def due(self, now: float, limit: int) -> list[Schedule]:
        """Active schedules whose next fire time has come, earliest first."""
        query = (
            select(schedules)
            .where(
                schedules.c.state == ScheduleState.ACTIVE.value,
                schedules.c.next_fire_at > 0,
                schedules.c.next_fire_at <= now,
            )
            .order_by(schedules.c.next_fire_at)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [_schedule(r) for r in await conn.execute(query)]

    async def earliest_fire_at(self) -> float:
        """The earliest fire time of any active schedule; 0 when none is active."""
        query = select(func.min(schedules.c.next_fire_at)).where(
            schedules.c.state == ScheduleState.ACTIVE.value, schedules.c.next_fire_at > 0
        )
        async with self.db.read() as conn:
            value = (await conn.execute(query)).scalar_one_or_none()
        return float(value or 0.0)

    async def advance_many(
        self, conn: AsyncConnection, advances: Sequence[Advance], token: str, now: float
    ) -> set[str]:
        """Moves each schedule to its next due time if its version is still the one read,
        in one statement; returns the ids this claim won (the others were claimed by
        another instance, or paused, meanwhile). A schedule with nothing left completes.

        Which rows matched is read back by the claim's unique `token`, not from the
        statement's row count, which drivers do not report per row of an executemany.
        """
        if not advances:
            return set()
        statement = (
            update(schedules)
            .where(
                schedules.c.schedule_id == bindparam("b_id"),
                schedules.c.version == bindparam("b_version"),
                schedules.c.state == ScheduleState.ACTIVE.value,
            )
            .values(
                next_due=bindparam("b_next_due"),
                next_fire_at=bindparam("b_next_fire_at"),
                last_due=bindparam("b_last_due"),
                fire_count=schedules.c.fire_count + bindparam("b_fired"),
                version=schedules.c.version + 1,
                state=bindparam("b_state"),
                updated_at=now,
                claim_token=token,
            )
        )
        await conn.execute(
            statement,
            [
                {
                    "b_id": a.schedule.schedule_id,
                    "b_version": a.schedule.version,
                    "b_next_due": a.next_due,
                    "b_next_fire_at": a.next_fire_at,
                    "b_last_due": max(a.last_due, a.schedule.last_due),
                    "b_fired": a.fired,
                    "b_state": (
                        ScheduleState.ACTIVE.value if a.next_due else ScheduleState.COMPLETED.value
                    ),
                }
                for a in advances
            ],
        )
        won: set[str] = set()
        ids = [a.schedule.schedule_id for a in advances]
        for chunk in _chunks(ids):
            rows = await conn.execute(
                select(schedules.c.schedule_id).where(
                    schedules.c.schedule_id.in_(chunk), schedules.c.claim_token == token
                )
            )
            won.update(r[0] for r in rows)
        return won

    async def count_fired(self, conn: AsyncConnection, schedule_id: str, fired: int) -> None:
        """Adds manual firings to a schedule's count."""
        await conn.execute(
            update(schedules)
            .where(schedules.c.schedule_id == schedule_id)
            .values(fire_count=schedules.c.fire_count + fired)
        )

    async def count_by_state(self) -> dict[str, int]:
        """Schedules per state."""
        query = select(schedules.c.state, func.count()).group_by(schedules.c.state)
        async with self.db.read() as conn:
            return {state: int(n) for state, n in await conn.execute(query)}

    # Firings -----------------------------------------------------------------------------

    async def insert_firing(self, conn: AsyncConnection, firing: Firing) -> bool:
        """Inserts a firing; False when that firing id exists (the due time fired)."""
        statement = self.db.insert(firings).values(**firing_row(firing)).on_conflict_do_nothing()
        result = await conn.execute(statement)
        return bool(result.rowcount == 1)

    async def get_firing(self, firing_id: str) -> Firing | None:
        """One firing, or None."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(firings).where(firings.c.firing_id == firing_id))
            ).first()
        return _firing(row) if row is not None else None

    async def firings_of(
        self, schedule_id: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[Firing]:
        """Firings of a schedule, newest due time first, after the keyset `before`."""
        query = select(firings).where(firings.c.schedule_id == schedule_id)
        if before is not None:
            due, fid = before
            query = query.where(
                or_(firings.c.due < due, and_(firings.c.due == due, firings.c.firing_id < fid))
            )
        query = query.order_by(firings.c.due.desc(), firings.c.firing_id.desc()).limit(limit)
        async with self.db.read() as conn:
            return [_firing(r) for r in await conn.execute(query)]

    async def last_execution(self, schedule_id: str) -> str:
        """The execution id the schedule's latest successful workflow firing started."""
        query = (
            select(firings.c.result)
            .where(
                firings.c.schedule_id == schedule_id,
                firings.c.outcome == Outcome.SUCCEEDED.value,
            )
            .order_by(firings.c.due.desc())
            .limit(1)
        )
        async with self.db.read() as conn:
            result = (await conn.execute(query)).scalar_one_or_none()
        return str((result or {}).get("execution_id", ""))

    async def lapsed(self, now: float, limit: int) -> list[Firing]:
        """Open firings nobody holds: PENDING ones, and RUNNING ones whose lease lapsed."""
        query = (
            select(firings)
            .where(
                firings.c.outcome.in_([o.value for o in OPEN_OUTCOMES]),
                firings.c.lease_until <= now,
            )
            .order_by(firings.c.fire_at)
            .limit(limit)
        )
        async with self.db.read() as conn:
            return [_firing(r) for r in await conn.execute(query)]

    async def take_over(
        self, conn: AsyncConnection, firing: Firing, instance: str, now: float, lease_s: float
    ) -> Firing | None:
        """Claims an unheld firing with the next fencing token; None when another instance
        claimed it first."""
        attempt = firing.attempt + 1
        result = await conn.execute(
            update(firings)
            .where(
                firings.c.firing_id == firing.firing_id,
                firings.c.attempt == firing.attempt,
                firings.c.outcome.in_([o.value for o in OPEN_OUTCOMES]),
                firings.c.lease_until <= now,
            )
            .values(
                outcome=Outcome.RUNNING.value,
                attempt=attempt,
                owner=instance,
                lease_until=now + lease_s,
                started_at=now,
            )
        )
        if result.rowcount != 1:
            return None
        return replace(
            firing,
            outcome=Outcome.RUNNING,
            attempt=attempt,
            owner=instance,
            lease_until=now + lease_s,
            started_at=now,
        )

    async def insert_claimed(self, conn: AsyncConnection, claimed: Sequence[Firing]) -> set[str]:
        """Inserts firings claimed by one instance in one pass (same owner and lease end),
        skipping ids that exist (a due time a backfill queued); returns the ids inserted."""
        if not claimed:
            return set()
        await conn.execute(
            self.db.insert(firings).on_conflict_do_nothing(), [firing_row(f) for f in claimed]
        )
        owner, lease_until = claimed[0].owner, claimed[0].lease_until
        inserted: set[str] = set()
        for chunk in _chunks([f.firing_id for f in claimed]):
            rows = await conn.execute(
                select(firings.c.firing_id).where(
                    firings.c.firing_id.in_(chunk),
                    firings.c.owner == owner,
                    firings.c.lease_until == lease_until,
                    firings.c.attempt == 1,
                )
            )
            inserted.update(r[0] for r in rows)
        return inserted

    async def finish_many(self, conn: AsyncConnection, done: Sequence[Firing]) -> set[str]:
        """Records outcomes, each only if its claim (attempt, the fencing token) still holds
        the firing, in one statement; returns the ids recorded."""
        if not done:
            return set()
        await conn.execute(
            update(firings)
            .where(
                firings.c.firing_id == bindparam("b_id"),
                firings.c.attempt == bindparam("b_attempt"),
                firings.c.outcome == Outcome.RUNNING.value,
            )
            .values(
                outcome=bindparam("b_outcome"),
                finished_at=bindparam("b_finished_at"),
                result=bindparam("b_result", type_=JSON),
                error=bindparam("b_error"),
                decision_id=bindparam("b_decision_id"),
                lease_until=0.0,
            ),
            [
                {
                    "b_id": f.firing_id,
                    "b_attempt": f.attempt,
                    "b_outcome": f.outcome.value,
                    "b_finished_at": f.finished_at,
                    "b_result": f.result,
                    "b_error": f.error[:2048],
                    "b_decision_id": f.decision_id,
                }
                for f in done
            ],
        )
        expected = {f.firing_id: (f.attempt, f.outcome.value, f.finished_at) for f in done}
        recorded: set[str] = set()
        for chunk in _chunks(list(expected)):
            rows = await conn.execute(
                select(
                    firings.c.firing_id,
                    firings.c.attempt,
                    firings.c.outcome,
                    firings.c.finished_at,
                ).where(firings.c.firing_id.in_(chunk))
            )
            recorded.update(r[0] for r in rows if expected[r[0]] == (r[1], r[2], r[3]))
        return recorded

    async def count_by_outcome(self) -> dict[str, int]:
        """Firings per outcome."""
        query = select(firings.c.outcome, func.count()).group_by(firings.c.outcome)
        async with self.db.read() as conn:
            return {outcome: int(n) for outcome, n in await conn.execute(query)}

    async def prune(self, conn: AsyncConnection, schedule_id: str, keep: int) -> None:
        """Keeps the newest `keep` finished firings of a schedule."""
        cutoff = (
            await conn.execute(
                select(firings.c.due)
                .where(
                    firings.c.schedule_id == schedule_id,
                    firings.c.outcome.not_in([o.value for o in OPEN_OUTCOMES]),
                )
                .order_by(firings.c.due.desc())
                .offset(keep)
                .limit(1)
            )
        ).scalar_one_or_none()
        if cutoff is not None:
            await conn.execute(
                delete(firings).where(
                    firings.c.schedule_id == schedule_id,
                    firings.c.due <= cutoff,
                    firings.c.outcome.not_in([o.value for o in OPEN_OUTCOMES]),
                )
            )
