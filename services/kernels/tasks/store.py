"""Durable state of the tasks kernel: cycles, tasks, remedy outcomes and two outboxes (bus
events and immutable-log entries).

Every task change is a compare-and-set on the state it was read in (`save_task` with
`expected`): of two writers racing to move a task (two approvals, an approval and the
approval watcher), one wins and the other is told so, which is what makes dispatch happen
once.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    func,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.outbox import outbox_table
from services.common.storage import Database
from services.kernels.immune.model import PlaybookScore
from services.kernels.tasks.model import OPEN_STATES, Cycle, Task, TaskState

metadata = MetaData()

cycles = Table(
    "tasks_cycles",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("cycle_id", String(64), nullable=False, unique=True),
    Column("started_at", Float, nullable=False),
    Column("record", JSON, nullable=False),
)

tasks = Table(
    "tasks_tasks",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(64), nullable=False, unique=True),
    Column("cycle_id", String(64), nullable=False),
    Column("weak_point", String(400), nullable=False),
    Column("state", String(32), nullable=False),
    Column("evaluated", Boolean, nullable=False),
    Column("record", JSON, nullable=False),
    Index("tasks_tasks_state", "state", "seq"),
    Index("tasks_tasks_weak_point", "weak_point"),
)

outcomes = Table(
    "tasks_outcomes",
    metadata,
    Column("kind", String(160), primary_key=True),
    Column("remedy", String(256), primary_key=True),
    Column("successes", BigInteger, nullable=False),
    Column("failures", BigInteger, nullable=False),
)

events_outbox = outbox_table(metadata, "tasks")
log_outbox = outbox_table(metadata, "tasks_log")

_TERMINAL = (TaskState.COMPLETED.value, TaskState.FAILED.value)


class TasksStore:
    """Reads and writes the tasks kernel's state.

    Args:
        db: The database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self) -> None:
        """Creates the tables if missing."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the database."""
        await self.db.close()

    async def add_cycle(self, conn: AsyncConnection, cycle: Cycle) -> None:
        """Records a finished cycle."""
        await conn.execute(
            cycles.insert().values(
                cycle_id=cycle.cycle_id, started_at=cycle.started_at, record=cycle.to_json()
            )
        )

    async def get_cycle(self, cycle_id: str) -> Cycle | None:
        """One cycle."""
        async with self.db.read() as conn:
            record = await conn.scalar(select(cycles.c.record).where(cycles.c.cycle_id == cycle_id))
        return None if record is None else Cycle.from_json(record)

    async def list_cycles(self, before: int | None, limit: int) -> list[tuple[int, Cycle]]:
        """Cycles newest first, with their sequence numbers."""
        query = select(cycles.c.seq, cycles.c.record).order_by(cycles.c.seq.desc())
        if before is not None:
            query = query.where(cycles.c.seq < before)
        async with self.db.read() as conn:
            rows = await conn.execute(query.limit(limit))
            return [(int(s), Cycle.from_json(r)) for s, r in rows]

    async def count_cycles(self) -> int:
        """Cycles run."""
        async with self.db.read() as conn:
            return int(await conn.scalar(select(func.count()).select_from(cycles)) or 0)

    async def add_task(self, conn: AsyncConnection, task: Task) -> None:
        """Records a new task."""
        await conn.execute(
            tasks.insert().values(
                task_id=task.task_id,
                cycle_id=task.cycle_id,
                weak_point=task.weak_point.key,
                state=task.state.value,
                evaluated=task.evaluated,
                record=task.to_json(),
            )
        )

    async def save_task(self, conn: AsyncConnection, task: Task, expected: TaskState) -> bool:
        """Writes a task's new state if it is still in `expected`; False when another
        writer moved it first (nothing is written then)."""
        result = await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == task.task_id, tasks.c.state == expected.value)
            .values(state=task.state.value, evaluated=task.evaluated, record=task.to_json())
        )
        return bool(result.rowcount == 1)

    async def mark_evaluated(self, conn: AsyncConnection, task: Task) -> None:
        """Notes that a cycle judged the task (its state does not change)."""
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == task.task_id)
            .values(evaluated=True, record=task.to_json())
        )

    async def get_task(self, task_id: str) -> Task | None:
        """One task."""
        async with self.db.read() as conn:
            record = await conn.scalar(select(tasks.c.record).where(tasks.c.task_id == task_id))
        return None if record is None else Task.from_json(record)

    async def list_tasks(
        self, state: TaskState | None, cycle_id: str, before: int | None, limit: int
    ) -> list[tuple[int, Task]]:
        """Tasks newest first, with their sequence numbers."""
        query = select(tasks.c.seq, tasks.c.record).order_by(tasks.c.seq.desc())
        if state is not None:
            query = query.where(tasks.c.state == state.value)
        if cycle_id:
            query = query.where(tasks.c.cycle_id == cycle_id)
        if before is not None:
            query = query.where(tasks.c.seq < before)
        async with self.db.read() as conn:
            rows = await conn.execute(query.limit(limit))
            return [(int(s), Task.from_json(r)) for s, r in rows]

    async def tasks_in(self, states: frozenset[TaskState]) -> list[Task]:
        """Every task in one of these states, oldest first."""
        query = (
            select(tasks.c.record)
            .where(tasks.c.state.in_([s.value for s in states]))
            .order_by(tasks.c.seq)
        )
        async with self.db.read() as conn:
            return [Task.from_json(r) for r in (await conn.scalars(query)).all()]

    async def open_weak_points(self) -> dict[str, str]:
        """Weak point key -> id of a task still answering it."""
        query = select(tasks.c.weak_point, tasks.c.task_id).where(
            tasks.c.state.in_([s.value for s in OPEN_STATES])
        )
        async with self.db.read() as conn:
            return {str(k): str(t) for k, t in await conn.execute(query)}

    async def unevaluated(self) -> list[Task]:
        """Finished tasks no cycle has judged yet, oldest first."""
        query = (
            select(tasks.c.record)
            .where(tasks.c.state.in_(_TERMINAL), tasks.c.evaluated.is_(False))
            .order_by(tasks.c.seq)
        )
        async with self.db.read() as conn:
            return [Task.from_json(r) for r in (await conn.scalars(query)).all()]

    async def task_counts(self) -> dict[str, int]:
        """Tasks by state."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(tasks.c.state, func.count()).group_by(tasks.c.state))
            return {str(k): int(n) for k, n in rows}

    async def record_outcome(self, kind: str, remedy: str, success: bool) -> None:
        """Adds one success or failure to a remedy's local record for a kind."""
        async with self.db.transaction() as conn:
            stmt = self.db.insert(outcomes).values(
                kind=kind, remedy=remedy, successes=int(success), failures=int(not success)
            )
            column = "successes" if success else "failures"
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["kind", "remedy"],
                    set_={column: getattr(outcomes.c, column) + 1},
                )
            )

    async def outcomes(self, kind: str = "") -> dict[tuple[str, str], PlaybookScore]:
        """Local remedy records, for one kind or all, keyed by (kind, remedy)."""
        query = select(outcomes)
        if kind:
            query = query.where(outcomes.c.kind == kind)
        async with self.db.read() as conn:
            rows = await conn.execute(query)
            return {
                (r.kind, r.remedy): PlaybookScore(r.remedy, int(r.successes), int(r.failures))
                for r in rows
            }
