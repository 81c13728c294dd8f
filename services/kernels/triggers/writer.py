"""The group-committed write path of the trigger mesh: firing claims and outcomes.

SQLite has one writer. Written as transactions of their own, an event's claim and another
firing's outcome queue behind each other, and the one that finds the lock taken sleeps in
SQLite's busy handler (1, 2, 5, 10, 15 ms...): that sleep was most of the latency the mesh
added between an event and its action. Here every claim and outcome goes through the one
shared `GroupCommitter`: one task writes everything waiting in one transaction, and while
it commits the next batch forms. On a SQLite file the batch is one call on the database's
writer thread with plain `sqlite3` (one hop and one fsync per batch); on PostgreSQL and
in-memory SQLite it is one transaction on the async engine.

Exactly once per (event, rule) is unchanged: a claim is an INSERT that does nothing when
the firing id exists, and its caller is answered only after the batch holding it committed,
so the event is acknowledged only once its claim is durable. An outcome is written only
while the firing is still pending, with the outbox rows announcing it. A batch that fails
is written again item by item, so one bad item fails alone.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import Unavailable
from services.common.group_commit import GroupCommitter
from services.common.outbox import sqlite_outbox_insert, sqlite_outbox_rows
from services.common.storage import (
    SQLITE_INLINE_MAX_ROWS,
    Database,
    SqliteWriter,
    sqlite_transaction,
)
from services.kernels.triggers.model import Firing, FiringState, Rule


@dataclass(frozen=True)
class Claims:
    """The firings of one event, claimed in one transaction: (firing id, rule) pairs."""

    event: dict[str, Any]
    firings: tuple[tuple[str, Rule], ...]
    now: float
    lease_s: float

    def created(self, firing_id: str, rule: Rule) -> Firing:
        """The firing a successful claim created (leased to the claimer, attempt 0)."""
        return Firing(
            firing_id=firing_id,
            rule_id=rule.rule_id,
            rule_version=rule.version,
            event=self.event,
            state=FiringState.PENDING,
            attempts=0,
            next_at=self.now,
            created_at=self.now,
            updated_at=self.now,
        )


@dataclass(frozen=True)
class Outcome:
    """An attempt's outcome with the outbox rows that announce it (written only with the
    outcome: a firing another instance finished first is announced once)."""

    firing: Firing
    state: FiringState
    attempts: int
    next_at: float
    result: dict[str, Any]
    now: float
    events: list[dict[str, Any]] = field(default_factory=list)
    log_entries: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The firing's stored record after this outcome."""
        return {
            "rule_version": self.firing.rule_version,
            "event": dict(self.firing.event),
            "result": self.result,
        }


Write = Claims | Outcome
Written = list[Firing] | bool


def _closed() -> Unavailable:
    return Unavailable("the trigger mesh is shutting down")


def _pass_on(future: asyncio.Future[Written], committed: asyncio.Future[Written]) -> None:
    if future.done():
        return  # the caller stopped waiting; the write stands
    if committed.cancelled():
        future.cancel()
    elif (error := committed.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(committed.result())


class FiringWriter:
    """Claims and outcomes, group-committed.

    Args:
        db: The mesh's database (its tables exist before `open`).
        firings: The firings table.
        events_outbox: The outbox of bus events.
        log_outbox: The outbox of immutable-log entries.
        max_batch: Claimed firings and outcomes per commit.
        outcome_linger_s: Longest time an outcome waits for a claim to share its commit.
    """

    def __init__(
        self,
        db: Database,
        firings: Table,
        events_outbox: Table,
        log_outbox: Table,
        *,
        max_batch: int = 500,
        outcome_linger_s: float = 0.02,
    ) -> None:
        self.db = db
        self.firings = firings
        self.events_outbox = events_outbox
        self.log_outbox = log_outbox
        self.outcome_linger_s = outcome_linger_s
        self._sqlite: SqliteWriter | None = None
        self._held: list[tuple[Outcome, asyncio.Future[Written]]] = []
        self._release_timer: asyncio.TimerHandle | None = None
        self._committer: GroupCommitter[Write, Written] = GroupCommitter(
            self._commit,
            name="triggers-writer",
            max_batch_weight=max_batch,
            weight=lambda item: len(item.firings) if isinstance(item, Claims) else 1,
            closed_error=_closed,
        )
        self._claim_sql = (
            f"INSERT INTO {firings.name} (firing_id, rule_id, state, attempts, next_at, "
            "lease_until, created_at, updated_at, record) VALUES (?, ?, ?, 0, ?, ?, ?, ?, ?) "
            "ON CONFLICT (firing_id) DO NOTHING"
        )
        self._finish_sql = (
            f"UPDATE {firings.name} SET state = ?, attempts = ?, next_at = ?, "
            "lease_until = 0.0, updated_at = ?, record = ? WHERE firing_id = ? AND state = ?"
        )
        self._events_insert = sqlite_outbox_insert(events_outbox)
        self._log_insert = sqlite_outbox_insert(log_outbox)

    async def open(self) -> None:
        """Opens the writer thread's connection (SQLite file) and starts the committer."""
        self._sqlite = self.db.sqlite_writer("triggers-writer")
        self._committer.start()

    async def close(self) -> None:
        """Commits what is queued, then stops."""
        self._release_outcomes()
        await self._committer.close()
        if self._sqlite is not None:
            await self._sqlite.close()
            self._sqlite = None

    async def claim(self, claims: Claims) -> list[Firing]:
        """Claims the firings of one event; returns those this call created (none for a
        redelivered event), once committed."""
        future = self._committer.submit_nowait(claims)
        self._release_outcomes()  # held outcomes share this claim's commit
        created = await future
        assert isinstance(created, list)  # a Claims item's result is always its list
        return created

    async def record(self, outcome: Outcome) -> bool:
        """Records an outcome and its outbox rows; returns once committed, False when the
        firing was no longer pending (then nothing was written).

        An outcome waits up to `outcome_linger_s` for the next claim and is committed with
        it: nothing but its own firing waits on it, while a claim that finds an outcome's
        commit in flight waits for two fsyncs instead of one.
        """
        if not self._committer.running:
            raise _closed()
        future: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        self._held.append((outcome, future))
        if self._release_timer is None:
            self._release_timer = asyncio.get_running_loop().call_later(
                self.outcome_linger_s, self._release_outcomes
            )
        return bool(await future)

    def _release_outcomes(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        held, self._held = self._held, []
        for outcome, future in held:
            try:
                committed = self._committer.submit_nowait(outcome)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                continue
            committed.add_done_callback(functools.partial(_pass_on, future))

    # -- one batch ----------------------------------------------------------------------

    async def _commit(self, batch: list[Write]) -> Sequence[Written | BaseException]:
        try:
            return await self._transaction(batch)
        except Exception:
            if len(batch) == 1:
                raise
        # One item broke the batch: write each alone, so only that one fails.
        results: list[Written | BaseException] = []
        for item in batch:
            try:
                results.extend(await self._transaction([item]))
            except Exception as exc:
                results.append(exc)
        return results

    async def _transaction(self, batch: Sequence[Write]) -> list[Written]:
        if self._sqlite is not None:
            # Inline for a small batch; on the writer thread for a large one, or while
            # another writer (a lease take, a relay's delete) holds the lock, waiting for it
            # there in short steps.
            return await self._sqlite.commit(
                lambda raw: self._write_batch_sqlite(raw, batch),
                durable=True,
                inline=len(batch) <= SQLITE_INLINE_MAX_ROWS,
            )
        async with self.db.transaction() as conn:
            return [await self._write_async(conn, item) for item in batch]

    def _write_batch_sqlite(self, raw: sqlite3.Connection, batch: Sequence[Write]) -> list[Written]:
        with sqlite_transaction(raw):
            return [self._write_sqlite(raw, item) for item in batch]

    def _write_sqlite(self, raw: sqlite3.Connection, item: Write) -> Written:
        if isinstance(item, Claims):
            created: list[Firing] = []
            for firing_id, rule in item.firings:
                record = {"rule_version": rule.version, "event": item.event, "result": {}}
                cursor = raw.execute(
                    self._claim_sql,
                    (
                        firing_id,
                        rule.rule_id,
                        FiringState.PENDING.value,
                        item.now,
                        item.now + item.lease_s,
                        item.now,
                        item.now,
                        json.dumps(record),
                    ),
                )
                if cursor.rowcount:
                    created.append(item.created(firing_id, rule))
            return created
        cursor = raw.execute(
            self._finish_sql,
            (
                item.state.value,
                item.attempts,
                item.next_at,
                item.now,
                json.dumps(item.record()),
                item.firing.firing_id,
                FiringState.PENDING.value,
            ),
        )
        if not cursor.rowcount:
            return False
        outboxes = ((self._events_insert, item.events), (self._log_insert, item.log_entries))
        for insert, rows in outboxes:
            if rows:
                insert.run(raw, sqlite_outbox_rows(rows))
        return True

    async def _write_async(self, conn: AsyncConnection, item: Write) -> Written:
        firings = self.firings
        if isinstance(item, Claims):
            created: list[Firing] = []
            for firing_id, rule in item.firings:
                stmt = (
                    self.db.insert(firings)
                    .values(
                        firing_id=firing_id,
                        rule_id=rule.rule_id,
                        state=FiringState.PENDING.value,
                        attempts=0,
                        next_at=item.now,
                        lease_until=item.now + item.lease_s,
                        created_at=item.now,
                        updated_at=item.now,
                        record={"rule_version": rule.version, "event": item.event, "result": {}},
                    )
                    .on_conflict_do_nothing(index_elements=["firing_id"])
                )
                if (await conn.execute(stmt)).rowcount:
                    created.append(item.created(firing_id, rule))
            return created
        outcome = await conn.execute(
            update(firings)
            .where(
                firings.c.firing_id == item.firing.firing_id,
                firings.c.state == FiringState.PENDING.value,
            )
            .values(
                state=item.state.value,
                attempts=item.attempts,
                next_at=item.next_at,
                lease_until=0.0,
                updated_at=item.now,
                record=item.record(),
            )
        )
        if not outcome.rowcount:
            return False
        if item.events:
            await conn.execute(self.events_outbox.insert(), item.events)
        if item.log_entries:
            await conn.execute(self.log_outbox.insert(), item.log_entries)
        return True
