"""Every action's outcome, recorded with no code from the domain's author and pushed to
the learning kernel in batches.

The dispatcher hands each finished call (`OutcomeRecorder.record`: action, success,
latency, input size, hour and weekday in UTC, attempt, calls in flight, calls since start)
to the recorder, which buffers it in memory and writes the buffer to the domain's own ring
table (`sdk_<domain>_outcomes`) every `flush_interval_s` or every `flush_size` outcomes,
in one transaction: a crash loses at most the outcomes of the last interval, never a
result. The ring is bounded: it keeps the newest `capacity` outcomes and drops the oldest
(counted in `dropped`), so a domain whose learning kernel is away for a week does not
fill its disk.

`OutcomeRelay` sends the oldest outcomes of the ring, `batch_size` at a time, to
`LearningService.IngestOutcomes` and deletes them once the kernel has them. The batch id
is made of the first and last row ids, so a batch resent after a lost answer is counted
once by the kernel. While the kernel is down, the relay waits with exponential backoff
(logged once when the outage starts and once when it ends), like the outbox relay.
Caller errors (bad input, unknown action) are not outcomes of the action and are not
recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import delete, func, select

from grace.kernels.learning.v1 import learning_pb2, learning_pb2_grpc
from services.common.storage import Database
from services.common.timestamps import to_timestamp
from services.sdk.store import DomainTables

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 100_000
DEFAULT_BATCH = 1000


@dataclass(frozen=True)
class RecordedOutcome:
    """One finished call, as the ring keeps it."""

    action: str
    success: bool
    latency_ms: float
    input_size: int
    hour: int
    weekday: int
    attempt: int
    in_flight: int
    sequence: int
    at: float

    def row(self) -> dict[str, Any]:
        """The ring's row."""
        return {
            "action": self.action,
            "success": self.success,
            "latency_ms": self.latency_ms,
            "input_size": self.input_size,
            "hour": self.hour,
            "weekday": self.weekday,
            "attempt": self.attempt,
            "in_flight": self.in_flight,
            "sequence": self.sequence,
            "at": self.at,
        }


class OutcomeRecorder:
    """Buffers outcomes and writes them to the domain's ring.

    Args:
        db: The domain's database.
        tables: The domain's tables.
        capacity: Outcomes the ring keeps at most.
        flush_size: Buffered outcomes that trigger a write.
        clock: Epoch seconds (injectable for tests).
    """

    def __init__(
        self,
        db: Database,
        tables: DomainTables,
        *,
        capacity: int = DEFAULT_CAPACITY,
        flush_size: int = 500,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.table = tables.outcomes
        self.capacity = capacity
        self.flush_size = flush_size
        self.clock = clock
        self.sequence = 0
        self.dropped = 0
        self._buffer: list[RecordedOutcome] = []
        self._full = asyncio.Event()
        self._lock = asyncio.Lock()

    def record(
        self,
        action: str,
        *,
        success: bool,
        latency_s: float,
        input_size: int,
        attempt: int,
        in_flight: int,
        started_at: float | None = None,
    ) -> None:
        """Keeps one outcome (in memory until the next flush)."""
        self.sequence += 1
        at = self.clock() if started_at is None else started_at
        when = datetime.datetime.fromtimestamp(at, datetime.UTC)
        self._buffer.append(
            RecordedOutcome(
                action,
                success,
                latency_s * 1000.0,
                input_size,
                when.hour,
                when.weekday(),
                max(1, attempt),
                in_flight,
                self.sequence,
                at,
            )
        )
        if len(self._buffer) > self.capacity:
            # The database has not taken a flush for a long time: memory stays bounded too.
            del self._buffer[: len(self._buffer) - self.capacity]
            self.dropped += 1
        if len(self._buffer) >= self.flush_size:
            self._full.set()

    async def flush(self) -> int:
        """Writes the buffer to the ring and trims the ring to its capacity; returns how
        many outcomes were written."""
        async with self._lock:
            buffer, self._buffer = self._buffer, []
            self._full.clear()
            if not buffer:
                return 0
            table = self.table
            async with self.db.transaction() as conn:
                await conn.execute(table.insert(), [o.row() for o in buffer])
                newest = (await conn.execute(select(func.max(table.c.row_id)))).scalar_one()
                trimmed = await conn.execute(
                    delete(table).where(table.c.row_id <= int(newest) - self.capacity)
                )
            dropped = int(trimmed.rowcount or 0)
            if dropped:
                self.dropped += dropped
                log.warning(
                    "outcome ring full: dropped the %d oldest outcomes not yet sent", dropped
                )
            return len(buffer)

    async def run(self, interval_s: float) -> None:
        """Flushes every `interval_s` (or sooner when the buffer fills) until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), interval_s)
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("writing outcomes to the ring failed; will try again")

    async def pending(self, limit: int) -> list[tuple[int, RecordedOutcome]]:
        """The oldest outcomes of the ring, with their row ids."""
        table = self.table
        async with self.db.read() as conn:
            rows = await conn.execute(select(table).order_by(table.c.row_id).limit(limit))
            return [
                (
                    int(r.row_id),
                    RecordedOutcome(
                        r.action,
                        bool(r.success),
                        float(r.latency_ms),
                        int(r.input_size),
                        int(r.hour),
                        int(r.weekday),
                        int(r.attempt),
                        int(r.in_flight),
                        int(r.sequence),
                        float(r.at),
                    ),
                )
                for r in rows
            ]

    async def remove_through(self, row_id: int) -> None:
        """Deletes the ring's outcomes up to `row_id` (they were sent)."""
        async with self.db.transaction() as conn:
            await conn.execute(delete(self.table).where(self.table.c.row_id <= row_id))

    async def count(self) -> int:
        """Outcomes in the ring."""
        async with self.db.read() as conn:
            result = await conn.execute(select(func.count()).select_from(self.table))
            return int(result.scalar_one())


class OutcomeRelay:
    """Sends the ring's outcomes to the learning kernel in batches.

    Args:
        recorder: The ring.
        chan: Channel to the learning kernel.
        domain_id: The domain.
        capabilities: The domain's capabilities (insights are addressed to them).
        batch_size: Outcomes per IngestOutcomes call.
        interval_s: Time between two sends while the kernel is up.
        backoff_max_s: Longest wait between attempts while it is down.
        timeout_s: Deadline of one call.
    """

    def __init__(
        self,
        recorder: OutcomeRecorder,
        chan: grpc.aio.Channel,
        domain_id: str,
        capabilities: Sequence[str],
        *,
        batch_size: int = DEFAULT_BATCH,
        interval_s: float = 5.0,
        backoff_max_s: float = 60.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.recorder = recorder
        self.stub = learning_pb2_grpc.LearningServiceStub(chan)
        self.domain_id = domain_id
        self.capabilities = list(capabilities)
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.backoff_max_s = backoff_max_s
        self.timeout_s = timeout_s
        self.sent = 0
        self.failures = 0

    async def send_once(self) -> int:
        """Flushes the buffer, then sends the whole ring, batch by batch; returns how
        many outcomes went. Raises when the kernel cannot be reached."""
        await self.recorder.flush()
        total = 0
        while True:
            pending = await self.recorder.pending(self.batch_size)
            if not pending:
                return total
            first, last = pending[0][0], pending[-1][0]
            request = learning_pb2.IngestOutcomesRequest(
                domain_id=self.domain_id,
                batch_id=f"{first}-{last}-{pending[0][1].at:.6f}",
                capabilities=self.capabilities,
                outcomes=[
                    learning_pb2.ActionOutcome(
                        action=o.action,
                        success=o.success,
                        latency_ms=o.latency_ms,
                        input_size=o.input_size,
                        hour=o.hour,
                        weekday=o.weekday,
                        attempt=o.attempt,
                        in_flight=o.in_flight,
                        sequence=o.sequence,
                        time=to_timestamp(o.at),
                    )
                    for _, o in pending
                ],
            )
            await self.stub.IngestOutcomes(request, timeout=self.timeout_s)
            await self.recorder.remove_through(last)
            total += len(pending)
            self.sent += len(pending)

    async def run(self) -> None:
        """Sends at the interval, with exponential backoff while the kernel is down,
        until cancelled."""
        wait = self.interval_s
        failing = False
        while True:
            await asyncio.sleep(wait)
            try:
                await self.send_once()
                if failing:
                    log.info("learning kernel reachable again: outcomes flow")
                failing = False
                wait = self.interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if not failing:
                    log.warning(
                        "cannot send outcomes to the learning kernel (%s); they wait in the "
                        "ring, retrying with backoff up to %gs",
                        exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else exc,
                        self.backoff_max_s,
                    )
                failing = True
                wait = min(self.backoff_max_s, max(wait, self.interval_s) * 2)
