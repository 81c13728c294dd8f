"""Group commit: many concurrent writers, one transaction per batch, each answered after it.

Every durable write path of Grace has the same shape: callers hand over an item and wait
until it is on disk; committing each item alone would cost one fsync per call. A
`GroupCommitter` owns one task that takes everything waiting (up to a weight bound), calls
the service's `commit(batch)` once, and answers each caller with its own result. While one
commit is in flight the next batch forms, so under load many callers share one fsync.

The rules this module exists to get right once:

- A caller is answered only after its batch committed: its future resolves with the
  result `commit` returned for its item, or with the exception `commit` returned for that
  item alone, or with the exception that failed the whole batch (failure fan-out).
- A caller that is cancelled while waiting does not take its item out of a batch: the item
  may already be part of a transaction, and the write is the service's promise, not the
  caller's. The caller just stops waiting.
- `close` drains: it refuses new items at once, commits what is already queued (within a
  time bound), and only then stops the task. Whatever could not be committed fails with
  the service's "shutting down" error; no caller waits forever.
- If the committer task itself is cancelled in the middle of a commit, the batch's callers
  fail with that error too, since nobody can tell them whether it landed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.errors import GraceError, Unavailable

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


@dataclass
class _Waiting(Generic[ItemT, ResultT]):
    item: ItemT
    weight: int
    future: asyncio.Future[ResultT]


class GroupCommitter(Generic[ItemT, ResultT]):
    """Batches concurrent submissions into single commits.

    Args:
        commit: The service's batch write: writes one batch in one transaction and returns
            one result (or one exception) per item, in order; raising fails every item.
        name: Names the task and the log lines.
        max_batch_weight: A batch stops growing once its weight reaches this (it always
            takes at least one item, however heavy).
        weight: The weight of one item (default 1: the bound counts items).
        closed_error: The exception callers get once the committer is closing.
        failed_error: What callers get when `commit` raises (default: that exception), for
            example a retryable Unavailable for a storage error.
    """

    def __init__(
        self,
        commit: Callable[[list[ItemT]], Awaitable[Sequence[ResultT | BaseException]]],
        *,
        name: str,
        max_batch_weight: int = 1000,
        weight: Callable[[ItemT], int] | None = None,
        closed_error: Callable[[], GraceError] | None = None,
        failed_error: Callable[[Exception], BaseException] | None = None,
    ) -> None:
        if max_batch_weight < 1:
            raise ValueError("max_batch_weight must be at least 1")
        self._commit = commit
        self.name = name
        self.max_batch_weight = max_batch_weight
        self._weight = weight or (lambda _item: 1)
        self._closed_error = closed_error or (lambda: Unavailable(f"{name} is shutting down"))
        self._failed_error = failed_error or (lambda exc: exc)
        self._queue: deque[_Waiting[ItemT, ResultT]] = deque()
        self._queued_weight = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: list[_Waiting[ItemT, ResultT]] = []
        self._closing = False
        self.batches = 0
        self.committed_items = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Starts the committer task (needs the running loop); idempotent."""
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run(), name=self.name)

    @property
    def running(self) -> bool:
        """True while the committer accepts items."""
        return self._task is not None and not self._task.done() and not self._closing

    @property
    def idle(self) -> bool:
        """True when nothing is queued and no commit is in flight."""
        return not self._queue and not self._in_flight

    @property
    def queued_weight(self) -> int:
        """Weight of the items waiting for a batch (not counting the one in flight)."""
        return self._queued_weight

    async def close(self, drain_timeout_s: float | None = 5.0) -> None:
        """Refuses new items, commits the queued ones for at most `drain_timeout_s`
        (None: as long as it takes), then stops; what is left fails with the closed error."""
        self._closing = True
        task = self._task
        if task is None:
            self._fail_queued()
            return
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), drain_timeout_s)
        except TimeoutError:
            log.warning("%s: drain timed out with %d items queued", self.name, len(self._queue))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._fail_queued()

    # -- submitting --------------------------------------------------------------------

    async def submit(self, item: ItemT) -> ResultT:
        """Queues `item` and returns its result once its batch committed."""
        return await self.submit_nowait(item)

    def submit_nowait(self, item: ItemT) -> asyncio.Future[ResultT]:
        """Queues `item`; the returned future resolves once its batch committed.

        Raises:
            GraceError: the closed error, when the committer is not running.
        """
        if not self.running:
            raise self._closed_error()
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        weight = self._weight(item)
        self._queue.append(_Waiting(item, weight, future))
        self._queued_weight += weight
        self._wake.set()
        return future

    # -- the committer -----------------------------------------------------------------

    def _next_batch(self) -> list[_Waiting[ItemT, ResultT]]:
        batch: list[_Waiting[ItemT, ResultT]] = []
        weight = 0
        while self._queue and (not batch or weight < self.max_batch_weight):
            waiting = self._queue[0]
            if batch and weight + waiting.weight > self.max_batch_weight:
                break
            self._queue.popleft()
            batch.append(waiting)
            weight += waiting.weight
        self._queued_weight -= weight
        return batch

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # In its own frame: a batch held by this loop's locals while it waits for the
            # next would keep the last batch's items (and their payloads) alive.
            await self._commit_next()

    async def _commit_next(self) -> None:
        batch = self._next_batch()
        self._in_flight = batch
        try:
            results = await self._commit([waiting.item for waiting in batch])
        except asyncio.CancelledError:
            self._fail(batch, self._closed_error())
            raise
        except Exception as exc:
            log.exception("%s: committing %d items failed", self.name, len(batch))
            self._fail(batch, self._failed_error(exc))
            return
        finally:
            self._in_flight = []
        if len(results) != len(batch):
            error = RuntimeError(
                f"{self.name}: commit returned {len(results)} results for {len(batch)} items"
            )
            log.error("%s", error)
            self._fail(batch, error)
            return
        self.batches += 1
        self.committed_items += len(batch)
        for waiting, result in zip(batch, results, strict=True):
            if waiting.future.done():
                continue  # the caller stopped waiting; the write stands
            if isinstance(result, BaseException):
                waiting.future.set_exception(result)
            else:
                waiting.future.set_result(result)

    @staticmethod
    def _fail(batch: Sequence[_Waiting[ItemT, ResultT]], error: BaseException) -> None:
        for waiting in batch:
            if not waiting.future.done():
                waiting.future.set_exception(error)

    def _fail_queued(self) -> None:
        queued = list(self._queue)
        self._queue.clear()
        self._queued_weight = 0
        if queued:
            self._fail(queued, self._closed_error())
