"""Durable state of the orchestrator: workflow definitions, execution snapshots, outbox.

Execution snapshots are written by the group-commit `TransitionWriter` (see `writer`);
this module owns the tables and the queries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    MetaData,
    String,
    Table,
    Text,
    and_,
    func,
    or_,
    select,
)

from services.common.outbox import Outbox, outbox_table
from services.common.storage import Database
from services.orchestrator.leases import ExecutionLeases, instance_name, lease_table
from services.orchestrator.model import TERMINAL_STATES, JsonDict, StepSpec, WorkflowSpec
from services.orchestrator.writer import Event, TransitionWriter

log = logging.getLogger(__name__)

metadata = MetaData()

workflows = Table(
    "orchestrator_workflows",
    metadata,
    Column("workflow_id", String(128), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("description", Text, nullable=False),
    Column("steps", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("orchestrator_workflows_created", "created_at"),
)

executions = Table(
    "orchestrator_executions",
    metadata,
    Column("execution_id", String(128), primary_key=True),
    Column("workflow_id", String(128), nullable=False),
    Column("state", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("snapshot", JSON, nullable=False),
    Index("orchestrator_executions_created", "created_at"),
    Index("orchestrator_executions_state", "state"),
    Index("orchestrator_executions_workflow", "workflow_id"),
)

outbox = outbox_table(metadata, "orchestrator")

leases = lease_table(metadata)


def _workflow(row: Any) -> WorkflowSpec:
    return WorkflowSpec(
        workflow_id=row.workflow_id,
        name=row.name,
        description=row.description,
        steps=tuple(StepSpec.from_json(s) for s in row.steps),
        created_at=row.created_at,
    )


class OrchestratorStore:
    """Reads and writes the orchestrator's tables; transitions go through its writer.

    On PostgreSQL, where several instances may share the database, executions are owned
    through leases (see `leases`); on SQLite one instance owns them all.

    Args:
        db: The orchestrator's database.
        lease_s: How long an execution lease lasts without renewal (PostgreSQL).
        instance: This instance's name in lease rows; default a fresh unique one.
    """

    def __init__(self, db: Database, *, lease_s: float = 15.0, instance: str = "") -> None:
        self.db = db
        self.outbox = Outbox(db, outbox, "orchestrator")
        self.leases: ExecutionLeases | None = None
        if not db.is_sqlite:
            self.leases = ExecutionLeases(
                db,
                leases,
                executions,
                [s.value for s in TERMINAL_STATES],
                instance or instance_name(),
                lease_s,
            )
        self.writer = TransitionWriter(db, executions, self.outbox, self.leases)

    @property
    def commits(self) -> int:
        """Transactions the writer committed since start."""
        return self.writer.commits

    def on_events(self, callback: Callable[[], None]) -> None:
        """Calls `callback` after each commit that enqueued events (wakes the outbox relay)."""
        self.writer.on_events = callback

    async def open(self) -> None:
        """Creates the tables and starts the writer."""
        await self.db.create_tables(metadata)
        await self.writer.open()

    async def close(self) -> None:
        """Commits pending transitions, stops the writer and closes the database."""
        await self.writer.close()
        await self.db.close()

    async def save(
        self, snapshot: JsonDict, events: Sequence[Event] = (), *, sync: bool = True
    ) -> None:
        """Persists an execution snapshot and its events; see `TransitionWriter.save`."""
        await self.writer.save(snapshot, events, sync=sync)

    # -- workflows ----------------------------------------------------------------------

    async def save_workflow(self, spec: WorkflowSpec) -> WorkflowSpec:
        """Stores a workflow; when its id exists already, returns the stored one."""
        async with self.db.transaction() as conn:
            stmt = (
                self.db.insert(workflows)
                .values(
                    workflow_id=spec.workflow_id,
                    name=spec.name,
                    description=spec.description,
                    steps=[s.to_json() for s in spec.steps],
                    created_at=spec.created_at,
                )
                .on_conflict_do_nothing(index_elements=[workflows.c.workflow_id])
            )
            await conn.execute(stmt)
            row = (
                await conn.execute(
                    select(workflows).where(workflows.c.workflow_id == spec.workflow_id)
                )
            ).one()
        return _workflow(row)

    async def get_workflow(self, workflow_id: str) -> WorkflowSpec | None:
        """One workflow, or None."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(workflows).where(workflows.c.workflow_id == workflow_id))
            ).one_or_none()
        return _workflow(row) if row else None

    async def list_workflows(
        self, limit: int, after: tuple[float, str] | None, name: str
    ) -> list[WorkflowSpec]:
        """Workflows newest first, after the keyset position `after`."""
        query = select(workflows)
        if name:
            query = query.where(workflows.c.name == name)
        if after is not None:
            query = query.where(
                or_(
                    workflows.c.created_at < after[0],
                    and_(workflows.c.created_at == after[0], workflows.c.workflow_id < after[1]),
                )
            )
        query = query.order_by(workflows.c.created_at.desc(), workflows.c.workflow_id.desc())
        async with self.db.read() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [_workflow(r) for r in rows]

    async def execution_counts(self, workflow_ids: Sequence[str]) -> dict[str, int]:
        """Number of executions of each workflow."""
        if not workflow_ids:
            return {}
        query = (
            select(executions.c.workflow_id, func.count())
            .where(executions.c.workflow_id.in_(workflow_ids))
            .group_by(executions.c.workflow_id)
        )
        async with self.db.read() as conn:
            return {row[0]: int(row[1]) for row in await conn.execute(query)}

    async def count_workflows(self) -> int:
        """Number of stored workflows."""
        async with self.db.read() as conn:
            result = await conn.execute(select(func.count()).select_from(workflows))
            return int(result.scalar_one())

    # -- executions ---------------------------------------------------------------------

    async def get_execution(self, execution_id: str) -> JsonDict | None:
        """The latest persisted snapshot of an execution, or None."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(executions.c.snapshot).where(executions.c.execution_id == execution_id)
                )
            ).one_or_none()
        return dict(row.snapshot) if row else None

    async def list_executions(
        self, limit: int, after: tuple[float, str] | None, workflow_id: str, state: str
    ) -> list[JsonDict]:
        """Snapshots newest first, optionally filtered, after the keyset position `after`."""
        query = select(executions.c.snapshot)
        if workflow_id:
            query = query.where(executions.c.workflow_id == workflow_id)
        if state:
            query = query.where(executions.c.state == state)
        if after is not None:
            query = query.where(
                or_(
                    executions.c.created_at < after[0],
                    and_(
                        executions.c.created_at == after[0],
                        executions.c.execution_id < after[1],
                    ),
                )
            )
        query = query.order_by(executions.c.created_at.desc(), executions.c.execution_id.desc())
        async with self.db.read() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [dict(r.snapshot) for r in rows]

    async def load_unfinished(self) -> list[JsonDict]:
        """Snapshots of every execution that has not ended, oldest first (for resuming)."""
        terminal = [s.value for s in TERMINAL_STATES]
        query = (
            select(executions.c.snapshot)
            .where(executions.c.state.not_in(terminal))
            .order_by(executions.c.created_at)
        )
        async with self.db.read() as conn:
            return [dict(r.snapshot) for r in await conn.execute(query)]

    async def load_state(self, state: str) -> list[JsonDict]:
        """Snapshots of every execution in `state`, oldest first."""
        query = (
            select(executions.c.snapshot)
            .where(executions.c.state == state)
            .order_by(executions.c.created_at)
        )
        async with self.db.read() as conn:
            return [dict(r.snapshot) for r in await conn.execute(query)]

    async def counts_by_state(self) -> dict[str, int]:
        """Number of executions in each state."""
        query = select(executions.c.state, func.count()).group_by(executions.c.state)
        async with self.db.read() as conn:
            return {row[0]: int(row[1]) for row in await conn.execute(query)}
