"""Durable state of the orchestrator: workflow definitions, execution snapshots, outbox.

Every transition of an execution is persisted as a full snapshot of the execution before
the orchestrator acts on it. Snapshots go through a group-commit writer: transitions that
arrive while a commit is in flight are written together in the next transaction (one
upsert per execution, latest snapshot wins, plus their outbox events), so a busy
orchestrator pays one commit for many transitions. On SQLite the batch is one prepared
statement per table on the writer's own connection: flushed batches run on a dedicated
thread (one hop per batch), unflushed ones inline; on PostgreSQL through the async engine.

Two grades of durability. Every commit survives a crash of the orchestrator process
(kill -9): SQLite's WAL or PostgreSQL has it before the orchestrator acts. Transitions a
client is told about, or that start a rollback (`sync=True`: execution accepted, cancel,
COMPENSATING, the final state), are also flushed to disk (SQLite `synchronous=FULL`,
PostgreSQL `synchronous_commit=on`) and so survive a power cut. Intermediate step
transitions use `synchronous=NORMAL` / `synchronous_commit=off`: after a power cut the
execution may resume from an earlier transition, and the steps since are called again with
their idempotency keys, which return the stored results.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Engine,
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
from services.orchestrator.model import TERMINAL_STATES, JsonDict, StepSpec, WorkflowSpec

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

Event = tuple[str, Mapping[str, Any], str, str]
"""An event to enqueue with a transition: (event_type, data, subject, event_id)."""

_UPSERT_SQLITE = (
    f"INSERT INTO {executions.name} "
    "(execution_id, workflow_id, state, created_at, updated_at, snapshot) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (execution_id) DO UPDATE SET "
    "state = excluded.state, updated_at = excluded.updated_at, snapshot = excluded.snapshot"
)
_CHECKPOINT_EVERY = 200
_BUSY_TIMEOUT_MS = 10_000
_OUTBOX_COLUMNS = (
    "event_id",
    "event_type",
    "source_domain",
    "subject",
    "data",
    "traceparent",
    "created_at",
)
_OUTBOX_SQLITE = (
    f"INSERT INTO {outbox.name} ({', '.join(_OUTBOX_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _OUTBOX_COLUMNS)})"
)


def _workflow(row: Any) -> WorkflowSpec:
    return WorkflowSpec(
        workflow_id=row.workflow_id,
        name=row.name,
        description=row.description,
        steps=tuple(StepSpec.from_json(s) for s in row.steps),
        created_at=row.created_at,
    )


class OrchestratorStore:
    """Reads and writes the orchestrator's tables.

    Args:
        db: The orchestrator's database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.outbox = Outbox(db, outbox, "orchestrator")
        self.on_events: Callable[[], None] = lambda: None
        self._sync_engine: Engine | None = None
        self._raw: Any = None
        self._raw_mode = ""
        self._since_checkpoint = 0
        self._thread: ThreadPoolExecutor | None = None
        self._sync = False
        self._rows: dict[str, JsonDict] = {}
        self._events: list[JsonDict] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.commits = 0

    async def open(self) -> None:
        """Creates the tables and starts the writer."""
        await self.db.create_tables(metadata)
        if self.db.is_sqlite:
            self._sync_engine = self.db.sync_sqlite_engine()
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="orchestrator-writer")
            # The writer's connection is opened, used and closed on the writer thread only.
            self._raw = await asyncio.get_running_loop().run_in_executor(
                self._thread, self._sync_engine.raw_connection
            )
            self._raw.execute("PRAGMA wal_autocheckpoint=0")
        self._writer = asyncio.create_task(self._write_loop(), name="orchestrator-writer")

    async def close(self) -> None:
        """Flushes pending transitions, stops the writer and closes the database."""
        if self._writer is not None:
            # The writer drains what is pending, then ends: only it ever touches the
            # writer connection, so no commit runs twice at once.
            self._closing = True
            self._wakeup.set()
            await self._writer
            self._writer = None
        if self._thread is not None:
            if self._raw is not None:
                await asyncio.get_running_loop().run_in_executor(self._thread, self._raw.close)
                self._raw = None
            self._thread.shutdown(wait=True)
        if self._sync_engine is not None:
            self._sync_engine.dispose()
        await self.db.close()

    # -- transitions (group commit) ---------------------------------------------------

    async def save(
        self, snapshot: JsonDict, events: Sequence[Event] = (), *, sync: bool = True
    ) -> None:
        """Persists an execution snapshot and its events; returns once they are committed.

        Args:
            snapshot: The execution's full snapshot.
            events: Events announcing the transition, enqueued in the same transaction.
            sync: Also flush to disk (power-cut safe); see the module docstring.
        """
        row = {
            "execution_id": snapshot["execution_id"],
            "workflow_id": snapshot["workflow_id"],
            "state": snapshot["state"],
            "created_at": snapshot["created_at"],
            "updated_at": snapshot["updated_at"],
            "snapshot": snapshot,
        }
        self._rows[row["execution_id"]] = row
        for event_type, data, subject, event_id in events:
            self._events.append(
                self.outbox.new_row(event_type, data, subject=subject, event_id=event_id)
            )
        self._sync = self._sync or sync
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wakeup.set()
        await waiter

    async def _write_loop(self) -> None:
        while self._waiters or not self._closing:
            if not self._waiters:
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            await self._flush()

    async def _flush(self) -> None:
        rows, events, waiters = list(self._rows.values()), self._events, self._waiters
        sync = self._sync
        self._rows, self._events, self._waiters, self._sync = {}, [], [], False
        try:
            if self._raw is not None and not sync and self._commit_inline(rows, events):
                pass
            elif self._raw is not None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._thread, self._commit_sqlite, rows, events, sync)
            else:
                async with self.db.transaction() as conn:
                    if not sync:
                        await conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                    await conn.run_sync(self._write, rows, events)
        except Exception as exc:
            log.exception("persisting %d transitions failed", len(rows))
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        self.commits += 1
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if events:
            self.on_events()

    def _commit_inline(self, rows: list[JsonDict], events: list[JsonDict]) -> bool:
        """Commits an unflushed batch on the event loop; False when another writer holds the
        lock (the batch then goes through the writer thread, where waiting is harmless).

        With synchronous=NORMAL a commit only appends to the WAL in the page cache (tens of
        microseconds, no fsync; checkpoints run on the writer thread), so it costs less
        inline than a thread hop. It must never wait for a lock here: the other writer may
        need this very event loop to finish.
        """
        self._raw.execute("PRAGMA busy_timeout=0")
        try:
            self._commit_sqlite(rows, events, False)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            return False
        finally:
            self._raw.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        return True

    def _commit_sqlite(self, rows: list[JsonDict], events: list[JsonDict], sync: bool) -> None:
        raw = self._raw
        mode = "FULL" if sync else "NORMAL"
        if mode != self._raw_mode:
            raw.execute(f"PRAGMA synchronous={mode}")
            self._raw_mode = mode
        try:
            cursor = raw.cursor()
            if rows:
                cursor.executemany(
                    _UPSERT_SQLITE,
                    [
                        (
                            r["execution_id"],
                            r["workflow_id"],
                            r["state"],
                            r["created_at"],
                            r["updated_at"],
                            json.dumps(r["snapshot"], separators=(",", ":")),
                        )
                        for r in rows
                    ],
                )
            if events:
                cursor.executemany(
                    _OUTBOX_SQLITE,
                    [
                        tuple(json.dumps(e[c]) if c == "data" else e[c] for c in _OUTBOX_COLUMNS)
                        for e in events
                    ],
                )
            cursor.close()
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        if sync:
            self._since_checkpoint += 1
            if self._since_checkpoint >= _CHECKPOINT_EVERY:
                # Auto-checkpoints are off on this connection (they could fsync inline);
                # the WAL is folded back here, on the writer thread.
                raw.execute("PRAGMA wal_checkpoint(PASSIVE)")
                self._since_checkpoint = 0

    def _write(self, conn: Connection, rows: list[JsonDict], events: list[JsonDict]) -> None:
        if rows:
            stmt = self.db.insert(executions)
            stmt = stmt.on_conflict_do_update(
                index_elements=[executions.c.execution_id],
                set_={
                    "state": stmt.excluded.state,
                    "updated_at": stmt.excluded.updated_at,
                    "snapshot": stmt.excluded.snapshot,
                },
            )
            conn.execute(stmt, rows)
        if events:
            conn.execute(outbox.insert(), events)

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

    async def counts_by_state(self) -> dict[str, int]:
        """Number of executions in each state."""
        query = select(executions.c.state, func.count()).group_by(executions.c.state)
        async with self.db.read() as conn:
            return {row[0]: int(row[1]) for row in await conn.execute(query)}
