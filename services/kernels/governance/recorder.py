"""Group commit of decisions: every decision durable before it is answered, many per fsync.

Each evaluation must be on disk (with its bus and immutable-log outbox rows, and its
approval request) before the caller hears the verdict. One transaction per decision would
cap governance at one fsync per call; the recorder instead queues decisions and writes all
that arrived meanwhile in one transaction, then answers every waiting caller. When a batch
hits a request id recorded concurrently (unique key), the batch is retried one decision at
a time so only the duplicate gets the earlier decision back (as a retry would).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from services.common.errors import Unavailable
from services.common.group_commit import GroupCommitter
from services.common.outbox import Outbox, sqlite_outbox_insert, sqlite_outbox_rows
from services.common.storage import SQLITE_INLINE_MAX_ROWS, sqlite_transaction
from services.kernels.governance.model import Approval, Decision
from services.kernels.governance.store import GovernanceStore, approval_to_json

log = logging.getLogger(__name__)

MAX_BATCH = 500

# A request id recorded concurrently, through the engine (PostgreSQL) or the writer (SQLite).
_DUPLICATE = (IntegrityError, sqlite3.IntegrityError)

Recorded = tuple[Decision, bool]
"""A decision as recorded, and whether it is the earlier decision of the same request id."""


@dataclass(frozen=True)
class _Pending:
    decision: Decision
    approval: Approval | None


class DecisionRecorder:
    """Writes decisions in batches.

    Args:
        store: The store.
        events: Outbox of bus events.
        log_entries: Outbox of immutable log entries.
        committed: Called after each commit (wakes the relays).
    """

    def __init__(
        self,
        store: GovernanceStore,
        events: Outbox,
        log_entries: Outbox,
        committed: Callable[[], None],
    ) -> None:
        self.store = store
        self.events = events
        self.log_entries = log_entries
        self.committed = committed
        self._events_sqlite = sqlite_outbox_insert(events.table)
        self._log_sqlite = sqlite_outbox_insert(log_entries.table)
        self._committer: GroupCommitter[_Pending, Recorded] = GroupCommitter(
            self._commit,
            name="governance-recorder",
            max_batch_weight=MAX_BATCH,
            closed_error=lambda: Unavailable("governance is shutting down"),
        )

    @property
    def batches(self) -> int:
        """Transactions committed so far."""
        return self._committer.batches

    def start(self) -> None:
        """Starts the writer (needs the running loop)."""
        self._committer.start()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Lets the writer record what is queued (up to `timeout_s`), then stops it;
        decisions still queued after that fail with Unavailable."""
        await self._committer.close(timeout_s)

    async def record(self, decision: Decision, approval: Approval | None) -> Recorded:
        """Makes a decision durable; returns it (or the earlier decision of the same
        request id) and whether it is that earlier one."""
        return await self._committer.submit(_Pending(decision, approval))

    async def _write(self, items: Sequence[_Pending]) -> None:
        """Records the decisions, their approval requests and their outbox rows in one
        transaction."""
        decisions = [item.decision for item in items]
        approvals = [item.approval for item in items if item.approval is not None]
        records = [(d.decision_id, d.to_json()) for d in decisions]
        events = [("governance.decision", subject, data) for subject, data in records]
        events += [
            ("governance.approval.requested", a.approval_id, approval_to_json(a)) for a in approvals
        ]
        entries = [("governance.decision", subject, data) for subject, data in records]
        writer = self.store.writer
        if writer is not None:
            event_rows = sqlite_outbox_rows(self.events.batch_rows(events))
            entry_rows = sqlite_outbox_rows(self.log_entries.batch_rows(entries))

            def transaction(conn: sqlite3.Connection) -> None:
                with sqlite_transaction(conn):
                    self.store.add_decisions_sqlite(conn, decisions, approvals)
                    self._events_sqlite.run(conn, event_rows)
                    self._log_sqlite.run(conn, entry_rows)

            await writer.commit(
                transaction, durable=True, inline=len(items) <= SQLITE_INLINE_MAX_ROWS
            )
            return
        async with self.store.db.transaction() as conn:
            await self.store.add_decisions(conn, decisions)
            if approvals:
                await self.store.add_approvals(conn, approvals)
            await self.events.enqueue_many(conn, events)
            await self.log_entries.enqueue_many(conn, entries)

    async def _one(self, item: _Pending) -> Recorded:
        try:
            await self._write([item])
        except _DUPLICATE:
            request = item.decision.request
            async with self.store.db.read() as conn:
                earlier = await self.store.decision_by_request(
                    conn, request.actor, item.decision.request_id
                )
            if earlier is None:
                raise
            return earlier, True
        return item.decision, False

    async def _commit(self, batch: list[_Pending]) -> list[Recorded | BaseException]:
        results: list[Recorded | BaseException] = []
        try:
            await self._write(batch)
            results = [(item.decision, False) for item in batch]
        except _DUPLICATE:
            # A request id of the batch was recorded concurrently: redo it one decision at a
            # time, so only the duplicate gets the earlier decision back.
            for item in batch:
                try:
                    results.append(await self._one(item))
                except Exception as exc:
                    results.append(exc)
        self.committed()
        return results
