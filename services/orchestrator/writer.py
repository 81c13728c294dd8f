"""The group-commit writer of execution transitions.

Every transition of an execution is persisted as a full snapshot of the execution before
the orchestrator acts on it. Transitions that arrive while a commit is in flight are
written together in the next transaction by the shared group committer (one upsert per
execution, latest snapshot wins, plus their outbox events), so a busy orchestrator pays one
commit for many transitions. On SQLite the batch is one prepared statement per table on the
database's writer connection, committed inline on the event loop (`SqliteWriter.commit`); on
PostgreSQL through the async engine.

Two grades of durability. Every commit survives a crash of the orchestrator process
(kill -9): SQLite's WAL or PostgreSQL has it before the orchestrator acts. Transitions a
client is told about, or that start a rollback (`sync=True`: execution accepted, cancel,
COMPENSATING, the final state), are also on disk before `save` returns, and so survive a
power cut: on SQLite the WAL is synced after the commit, on the writer thread; on
PostgreSQL with `synchronous_commit=on`. Intermediate step transitions are not flushed
(`synchronous_commit=off` on PostgreSQL): after a power cut the execution may resume from
an earlier transition, and the steps since are called again with their idempotency keys,
which return the stored results.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from sqlalchemy import Connection, Table

from services.common import telemetry
from services.common.errors import Unavailable
from services.common.group_commit import GroupCommitter
from services.common.outbox import Outbox, sqlite_outbox_insert, sqlite_outbox_rows
from services.common.storage import (
    SQLITE_INLINE_MAX_ROWS,
    Database,
    RowInsert,
    SqliteWriter,
    sqlite_transaction,
)
from services.orchestrator.leases import ExecutionLeases, LeaseLost
from services.orchestrator.model import JsonDict

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("services.orchestrator")

Event = tuple[str, Mapping[str, Any], str, str]
"""An event to enqueue with a transition: (event_type, data, subject, event_id)."""

_UPSERT_COLUMNS = ("execution_id", "workflow_id", "state", "created_at", "updated_at", "snapshot")
_UPSERT_CONFLICT = (
    "ON CONFLICT (execution_id) DO UPDATE SET "
    "state = excluded.state, updated_at = excluded.updated_at, snapshot = excluded.snapshot"
)
# Built once: `json.dumps` with options builds a new encoder for every snapshot.
_SNAPSHOT_JSON = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True)
class _Transition:
    row: JsonDict
    events: list[JsonDict]
    sync: bool
    context: otel_context.Context | None


class TransitionWriter:
    """Commits execution snapshots and their events in batches.

    Args:
        db: The orchestrator's database.
        executions: The executions table (one row per execution, the latest snapshot).
        outbox: The orchestrator's outbox.
        leases: Execution leases when several instances share the database (PostgreSQL):
            each transition is written only while its lease carries this instance's
            fencing token, else its `save` raises `LeaseLost`. None writes unchecked.
    """

    def __init__(
        self,
        db: Database,
        executions: Table,
        outbox: Outbox,
        leases: ExecutionLeases | None = None,
    ) -> None:
        self.db = db
        self.leases = leases
        self.executions = executions
        self.outbox = outbox
        self.on_events: Callable[[], None] = lambda: None
        self.commits = 0
        self._upsert_sqlite = RowInsert(
            executions.name, _UPSERT_COLUMNS, on_conflict=_UPSERT_CONFLICT
        )
        self._outbox_sqlite = sqlite_outbox_insert(outbox.table)
        self._writer: SqliteWriter | None = None
        self._committer: GroupCommitter[_Transition, LeaseLost | None] = GroupCommitter(
            self._commit,
            name="orchestrator-writer",
            max_batch_weight=10_000,
            closed_error=lambda: Unavailable("the orchestrator is shutting down"),
        )

    async def open(self) -> None:
        """Opens the writer's connection (SQLite) and starts the group committer."""
        self._writer = self.db.sqlite_writer("orchestrator-writer")
        self._committer.start()

    async def close(self) -> None:
        """Commits what is pending, then stops."""
        await self._committer.close(drain_timeout_s=None)
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    async def save(
        self, snapshot: JsonDict, events: Sequence[Event] = (), *, sync: bool = True
    ) -> None:
        """Persists an execution snapshot and its events; returns once they are committed.

        Raises:
            LeaseLost: Another instance owns the execution now; nothing was written.

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
        new_events = [
            self.outbox.new_row(event_type, data, subject=subject, event_id=event_id)
            for event_type, data, subject, event_id in events
        ]
        # Always through the committer, even when it is idle: transitions of concurrent
        # executions made in the same turn of the event loop then share one commit (an
        # unflushed batch is still committed inline, see `_write_batch`).
        context = otel_context.get_current() if telemetry.enabled() else None
        await self._committer.submit(_Transition(row, new_events, sync, context))

    async def _commit(self, batch: list[_Transition]) -> list[LeaseLost | None]:
        rows = {t.row["execution_id"]: t.row for t in batch}  # the latest snapshot wins
        events = [event for t in batch for event in t.events]
        owners = [t.row["execution_id"] for t in batch for _ in t.events]
        refused: set[str] = set()
        sync = any(t.sync for t in batch)
        contexts = [t.context for t in batch if t.context is not None]
        # The group commit is a child span of the first waiting transition's span and links
        # to the others' (nothing at all while tracing is off).
        span = telemetry.batch_span(
            _tracer,
            "orchestrator.commit",
            contexts,
            {**self._span_attributes(len(rows)), "grace.sync": sync},
        )
        with span:
            refused = await self._write_batch(list(rows.values()), events, owners, sync)
        self._committed(bool(events))
        return [
            LeaseLost(t.row["execution_id"]) if t.row["execution_id"] in refused else None
            for t in batch
        ]

    async def _write_batch(
        self, rows: list[JsonDict], events: list[JsonDict], owners: list[str], sync: bool
    ) -> set[str]:
        """Writes the batch; returns the executions refused by the fence."""
        if self._writer is not None:
            # While a flushed batch waits for the disk, the next batch forms: it shares the
            # commit after this one.
            await self._writer.commit(
                lambda conn: self._commit_sqlite(conn, rows, events),
                durable=sync,
                inline=len(rows) <= SQLITE_INLINE_MAX_ROWS,
            )
            return set()
        async with self.db.transaction() as conn:
            if not sync:
                await conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
            return await conn.run_sync(self._write, rows, events, owners)

    def _span_attributes(self, transitions: int) -> dict[str, str | int | bool]:
        return {
            "db.system": "sqlite" if self.db.is_sqlite else "postgresql",
            "grace.transitions": transitions,
        }

    def _committed(self, with_events: bool) -> None:
        self.commits += 1
        if with_events:
            self.on_events()

    def _commit_sqlite(
        self, raw: sqlite3.Connection, rows: list[JsonDict], events: list[JsonDict]
    ) -> None:
        with sqlite_transaction(raw):
            if rows:
                self._upsert_sqlite.run(
                    raw,
                    [
                        (
                            r["execution_id"],
                            r["workflow_id"],
                            r["state"],
                            r["created_at"],
                            r["updated_at"],
                            _SNAPSHOT_JSON.encode(r["snapshot"]),
                        )
                        for r in rows
                    ],
                )
            if events:
                self._outbox_sqlite.run(raw, sqlite_outbox_rows(events))

    def _write(
        self, conn: Connection, rows: list[JsonDict], events: list[JsonDict], owners: list[str]
    ) -> set[str]:
        refused: set[str] = set()
        if self.leases is not None and rows:
            allowed = self.leases.fence(conn, [r["execution_id"] for r in rows])
            refused = {r["execution_id"] for r in rows} - allowed
            if refused:
                rows = [r for r in rows if r["execution_id"] not in refused]
                events = [e for e, o in zip(events, owners, strict=True) if o not in refused]
        if rows:
            stmt = self.db.insert(self.executions)
            stmt = stmt.on_conflict_do_update(
                index_elements=[self.executions.c.execution_id],
                set_={
                    "state": stmt.excluded.state,
                    "updated_at": stmt.excluded.updated_at,
                    "snapshot": stmt.excluded.snapshot,
                },
            )
            conn.execute(stmt, rows)
        if events:
            conn.execute(self.outbox.table.insert(), events)
        return refused
