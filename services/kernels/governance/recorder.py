"""Group commit of decisions: every decision durable before it is answered, many per fsync.

Each evaluation must be on disk (with its bus and immutable-log outbox rows, and its
approval request) before the caller hears the verdict. One transaction per decision would
cap governance at one fsync per call; the recorder instead queues decisions and writes all
that arrived meanwhile in one transaction, then answers every waiting caller. When a batch
hits a request id recorded concurrently (unique key), the batch is retried one decision at
a time so only the duplicate gets the earlier decision back (as a retry would).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.outbox import Outbox
from services.kernels.governance.model import Approval, Decision
from services.kernels.governance.store import GovernanceStore, approval_to_json

log = logging.getLogger(__name__)

MAX_BATCH = 500


@dataclass
class _Pending:
    decision: Decision
    approval: Approval | None
    done: asyncio.Future[tuple[Decision, bool]]


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
        self.batches = 0
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Starts the writer (needs the running loop)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="governance-recorder")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Lets the writer record what is queued (up to `timeout_s`), then stops it;
        decisions still queued after that fail with ConnectionError."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.done.done():
                pending.done.set_exception(ConnectionError("governance is shutting down"))

    async def record(self, decision: Decision, approval: Approval | None) -> tuple[Decision, bool]:
        """Makes a decision durable; returns it (or the earlier decision of the same
        request id) and whether it is that earlier one."""
        if self._task is None:
            raise RuntimeError("the decision recorder is not started")
        done: asyncio.Future[tuple[Decision, bool]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(decision, approval, done))
        return await done

    async def _write(self, conn: AsyncConnection, items: Sequence[_Pending]) -> None:
        decisions = [item.decision for item in items]
        approvals = [item.approval for item in items if item.approval is not None]
        await self.store.add_decisions(conn, decisions)
        if approvals:
            await self.store.add_approvals(conn, approvals)
        records = [(d.decision_id, d.to_json()) for d in decisions]
        events = [("governance.decision", subject, data) for subject, data in records]
        events += [
            ("governance.approval.requested", a.approval_id, approval_to_json(a)) for a in approvals
        ]
        await self.events.enqueue_many(conn, events)
        await self.log_entries.enqueue_many(
            conn, [("governance.decision", subject, data) for subject, data in records]
        )

    async def _one(self, item: _Pending) -> tuple[Decision, bool]:
        try:
            async with self.store.db.transaction() as conn:
                await self._write(conn, [item])
        except IntegrityError:
            request = item.decision.request
            async with self.store.db.read() as conn:
                earlier = await self.store.decision_by_request(
                    conn, request.actor, item.decision.request_id
                )
            if earlier is None:
                raise
            return earlier, True
        return item.decision, False

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < MAX_BATCH:
                batch.append(self._queue.get_nowait())
            results: list[tuple[Decision, bool] | BaseException] = []
            try:
                async with self.store.db.transaction() as conn:
                    await self._write(conn, batch)
                results = [(item.decision, False) for item in batch]
            except asyncio.CancelledError:
                for item in batch:
                    self._queue.task_done()
                    if not item.done.done():
                        item.done.set_exception(ConnectionError("governance is shutting down"))
                raise
            except IntegrityError:
                for item in batch:
                    try:
                        results.append(await self._one(item))
                    except Exception as exc:
                        results.append(exc)
            except Exception as exc:
                log.exception("governance: recording %d decisions failed", len(batch))
                results = [exc] * len(batch)
            self.batches += 1
            self.committed()
            for item, result in zip(batch, results, strict=True):
                self._queue.task_done()
                if item.done.done():
                    continue
                if isinstance(result, BaseException):
                    item.done.set_exception(result)
                else:
                    item.done.set_result(result)
