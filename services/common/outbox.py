"""Transactional outbox: events a service must publish, stored with the change they announce.

A service writes its change and the announcing event in one transaction (`Outbox.enqueue`
on the transaction's connection), so there is never a change without its event or an
event without its change. `OutboxRelay` publishes pending events in order, deletes them
once the publisher confirms, and backs off while the event bus is down: the write that
caused the event succeeded long before. Each event keeps the id it got when enqueued, so a
re-publish after a crash between publish and delete is a duplicate the bus suppresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import JSON, Column, Float, Integer, MetaData, String, Table, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common import telemetry
from services.common.backoff import Backoff, Retries
from services.common.storage import Database, RowInsert
from services.common.waiting import wait_for_event

log = logging.getLogger(__name__)


def outbox_table(metadata: MetaData, prefix: str) -> Table:
    """The outbox table of one service, named `<prefix>_outbox`."""
    return Table(
        f"{prefix}_outbox",
        metadata,
        Column("row_id", Integer, primary_key=True, autoincrement=True),
        Column("event_id", String(128), nullable=False),
        Column("event_type", String(256), nullable=False),
        Column("source_domain", String(128), nullable=False),
        Column("subject", String(256), nullable=False),
        Column("data", JSON, nullable=False),
        Column("traceparent", String(64), nullable=False),
        Column("created_at", Float, nullable=False),
    )


# The columns a writer thread fills on its own `sqlite3` connection (all but `row_id`).
OUTBOX_COLUMNS = (
    "event_id",
    "event_type",
    "source_domain",
    "subject",
    "data",
    "traceparent",
    "created_at",
)


def sqlite_outbox_insert(table: Table) -> RowInsert:
    """The `INSERT` of outbox rows on a raw `sqlite3` connection (`sqlite_outbox_rows`)."""
    return RowInsert(table.name, OUTBOX_COLUMNS)


def sqlite_outbox_rows(rows: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """The parameters of `sqlite_outbox_insert` for outbox rows (`data` as JSON text)."""
    return [tuple(json.dumps(r[c]) if c == "data" else r[c] for c in OUTBOX_COLUMNS) for r in rows]


@dataclass(frozen=True)
class OutboxEvent:
    """An event waiting in the outbox."""

    row_id: int
    event_id: str
    event_type: str
    source_domain: str
    subject: str
    data: dict[str, Any]
    traceparent: str
    created_at: float


class Publisher(Protocol):
    """Where the relay sends events: the event bus in production, a list in tests."""

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        """Publishes every event durably, or raises; partial success must be safe to repeat."""


class Outbox:
    """Reads and writes one service's outbox table.

    Args:
        db: The service's database.
        table: Its outbox table (from `outbox_table`).
        source_domain: Source of the events, for example "registry".
    """

    def __init__(self, db: Database, table: Table, source_domain: str) -> None:
        self.db = db
        self.table = table
        self.source_domain = source_domain

    async def enqueue(
        self,
        conn: AsyncConnection,
        event_type: str,
        data: Mapping[str, Any],
        *,
        subject: str = "",
        traceparent: str = "",
    ) -> str:
        """Adds an event inside the caller's transaction; returns its id."""
        row = self.new_row(event_type, data, subject=subject, traceparent=traceparent)
        await conn.execute(self.table.insert().values(**row))
        return str(row["event_id"])

    def new_row(
        self,
        event_type: str,
        data: Mapping[str, Any],
        *,
        subject: str = "",
        traceparent: str = "",
        event_id: str = "",
    ) -> dict[str, Any]:
        """The row `enqueue` would insert, for callers that batch their own inserts (for
        example many events in one executemany, or on a synchronous connection).

        `event_id` lets a caller derive the id from what the event announces, so an event
        re-created after a crash is a duplicate the bus suppresses; default a UUID.
        `traceparent` defaults to the current span's, so an event enqueued while serving a
        traced call joins that call's trace when the relay publishes it later.
        """
        return {
            "event_id": event_id or str(uuid.uuid4()),
            "event_type": event_type,
            "source_domain": self.source_domain,
            "subject": subject,
            "data": dict(data),
            "traceparent": traceparent or telemetry.current_traceparent(),
            "created_at": time.time(),
        }

    async def enqueue_many(
        self,
        conn: AsyncConnection,
        events: Sequence[tuple[str, str, Mapping[str, Any]]],
        *,
        traceparent: str = "",
    ) -> list[str]:
        """Adds `(event_type, subject, data)` events, in order, inside the caller's
        transaction with one statement; returns their ids. For writers that batch."""
        if not events:
            return []
        rows = self.batch_rows(events, traceparent=traceparent)
        await conn.execute(self.table.insert(), rows)
        return [str(row["event_id"]) for row in rows]

    def batch_rows(
        self, events: Sequence[tuple[str, str, Mapping[str, Any]]], *, traceparent: str = ""
    ) -> list[dict[str, Any]]:
        """The rows `enqueue_many` inserts, for writers that insert them on a synchronous
        connection (`sqlite_outbox_rows`)."""
        now = time.time()
        return [
            {
                "event_id": str(uuid.uuid4()),
                "event_type": event_type,
                "source_domain": self.source_domain,
                "subject": subject,
                "data": dict(data),
                "traceparent": traceparent,
                "created_at": now,
            }
            for event_type, subject, data in events
        ]

    async def pending(self, limit: int) -> list[OutboxEvent]:
        """The oldest events not yet published, in order."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(self.table).order_by(self.table.c.row_id).limit(limit))
            return [OutboxEvent(**row._mapping) for row in rows]

    async def count(self) -> int:
        """How many events wait."""
        async with self.db.read() as conn:
            result = await conn.execute(select(func.count()).select_from(self.table))
            return int(result.scalar_one())

    async def remove(self, row_ids: Sequence[int]) -> None:
        """Deletes published events."""
        if row_ids:
            async with self.db.transaction() as conn:
                await conn.execute(delete(self.table).where(self.table.c.row_id.in_(row_ids)))


class OutboxRelay:
    """Moves events from an outbox to a publisher, in order, until stopped.

    Args:
        outbox: The outbox to drain.
        publisher: Where events go.
        batch: Events per publish call.
        poll_interval_s: How often to look when nobody calls `wake`.
        max_backoff_s: Longest wait between attempts while the publisher fails.
    """

    def __init__(
        self,
        outbox: Outbox,
        publisher: Publisher,
        *,
        batch: int = 500,
        poll_interval_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.outbox = outbox
        self.publisher = publisher
        self.batch = batch
        self.poll_interval_s = poll_interval_s
        self.max_backoff_s = max_backoff_s
        self.published = 0
        self.failures = 0
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Asks the relay to look now (call after committing a transaction with events)."""
        self._wake.set()

    async def drain_once(self) -> int:
        """Publishes everything pending; returns how many went. Raises if publishing fails."""
        total = 0
        while True:
            events = await self.outbox.pending(self.batch)
            if not events:
                return total
            await self.publisher.publish(events)
            await self.outbox.remove([e.row_id for e in events])
            total += len(events)
            self.published += len(events)

    async def run(self) -> None:
        """Drains forever with exponential backoff on failure; cancel to stop.

        An outage is logged once when it begins and once when it ends, not at every
        retry: a bus that is down for an hour must not fill the log.
        """
        retries = Retries(Backoff(self.poll_interval_s, max_s=self.max_backoff_s))
        failing_since = 0
        while True:
            self._wake.clear()
            try:
                sent = await self.drain_once()
                if failing_since:
                    log.info(
                        "outbox %s: publishing again after %d failed attempts (%d sent)",
                        self.outbox.table.name,
                        self.failures - failing_since + 1,
                        sent,
                    )
                    failing_since = 0
                retries.succeeded()
                wait = self.poll_interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                if not failing_since:
                    failing_since = self.failures
                    log.warning(
                        "outbox %s: cannot publish (%s); events wait, retrying with "
                        "backoff up to %gs",
                        self.outbox.table.name,
                        _brief(exc),
                        self.max_backoff_s,
                    )
                else:
                    log.debug("outbox %s: retry failed: %s", self.outbox.table.name, _brief(exc))
                wait = retries.failed()
            await wait_for_event(self._wake, wait)


async def flush_and_close(
    relays: Iterable[OutboxRelay], publishers: Iterable[object], timeout_s: float = 2.0
) -> None:
    """At shutdown, after the relays' tasks were cancelled: one last bounded send of what
    each relay has pending (what does not go in time stays in its outbox and goes at the
    next start), then closes each publisher that has a `close`."""
    for relay in relays:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay.drain_once(), timeout=timeout_s)
    for publisher in publishers:
        close = getattr(publisher, "close", None)
        if callable(close):
            closing = close()
            if inspect.isawaitable(closing):
                await closing


def _brief(exc: BaseException) -> str:
    """One line about a publish failure (a gRPC error's repr spans several lines)."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
