"""Durable state of the event bus: the event log and everything that reads it.

The log is one table keyed by sequence. Each event is stored as its serialized protobuf
(sequence included) next to the few columns that filters need; a unique index on
(source_domain, event_id) backs duplicate suppression. Sequences are contiguous from the
first retained event to the head (duplicates take none, retention cuts only the front), which
lets a time be turned into a sequence by binary search instead of another index.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeAlias

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ColumnElement,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.storage import (
    SQLITE_INLINE_MAX_ROWS,
    Database,
    RowInsert,
    SqliteWriter,
    sqlite_transaction,
)
from services.eventbus.model import ConsumerState, DeadLetterRecord, SubscriptionState

__all__ = ["DuplicateEvent", "EventRow", "EventStore", "LogFilter", "RowValues"]


class DuplicateEvent(Exception):
    """A (source_domain, event_id) pair of the group is already stored; nothing was written."""


metadata = MetaData()

# INTEGER PRIMARY KEY is SQLite's rowid: no separate index to maintain on the hot path.
_SEQUENCE = BigInteger().with_variant(Integer(), "sqlite")

events = Table(
    "eventbus_events",
    metadata,
    Column("sequence", _SEQUENCE, primary_key=True, autoincrement=False),
    Column("source_domain", String(128), nullable=False),
    Column("event_id", String(128), nullable=False),
    Column("event_type", String(256), nullable=False),
    Column("published_at", Float, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Index("eventbus_events_source_id", "source_domain", "event_id", unique=True),
)

type_counts = Table(
    "eventbus_type_counts",
    metadata,
    Column("event_type", String(256), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

counters = Table(
    "eventbus_counters",
    metadata,
    Column("key", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

consumers = Table(
    "eventbus_consumers",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("patterns", JSON, nullable=False),
    Column("source_domain", String(128), nullable=False),
    Column("acked_sequence", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)

subscriptions = Table(
    "eventbus_subscriptions",
    metadata,
    Column("subscription_id", String(128), primary_key=True),
    Column("domain_id", String(128), nullable=False),
    Column("patterns", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("delivered_sequence", BigInteger, nullable=False),
    Column("delivered_count", BigInteger, nullable=False),
    Column("redelivery_count", BigInteger, nullable=False),
    Column("dead_letter_count", BigInteger, nullable=False),
    Column("last_error", String(1024), nullable=False),
)

dead_letters = Table(
    "eventbus_dead_letters",
    metadata,
    Column("dead_letter_id", String(64), primary_key=True),
    Column("subscription_id", String(128), nullable=False, index=True),
    Column("domain_id", String(128), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("event", LargeBinary, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("reason", String(1024), nullable=False),
    Column("failed_at", Float, nullable=False),
    Column("redelivering", Boolean, nullable=False),
)


class EventRow(NamedTuple):
    """One event as stored (fields in column order)."""

    sequence: int
    source_domain: str
    event_id: str
    event_type: str
    published_at: float
    payload: bytes


RowValues: TypeAlias = tuple[int, str, str, str, float, bytes]
"""An event row's values in column order, as an insert takes them (an `EventRow` is one;
the log's hot path writes plain tuples, cheaper to build)."""


@dataclass(frozen=True)
class LogFilter:
    """What a reader wants from the log: patterns (empty or "*" for all) and a source."""

    patterns: tuple[str, ...] = ()
    source_domain: str = ""

    def clause(self) -> ColumnElement[bool] | None:
        """A SQL pre-filter. SQLite's LIKE ignores ASCII case, so callers re-check every
        row with the exact matcher."""
        parts: list[ColumnElement[bool]] = []
        if self.patterns and "*" not in self.patterns:
            parts.append(or_(*(_like(events.c.event_type, p) for p in self.patterns)))
        if self.source_domain:
            parts.append(events.c.source_domain == self.source_domain)
        return and_(*parts) if parts else None


def _like(column: Any, pattern: str) -> ColumnElement[bool]:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%"), escape="\\")  # type: ignore[no-any-return]


class BusState(Protocol):
    """What the bus keeps besides events: durable consumers, push subscriptions with
    their counters, and dead letters. `EventStore` keeps them in the bus's tables (one
    process owns them); `jetstream_state.JetStreamState` in JetStream, where every
    instance sees what any other stored (`shared`)."""

    shared: bool

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def counters(self) -> dict[str, int]: ...
    async def consumers(self) -> list[ConsumerState]: ...
    async def consumer(self, name: str) -> ConsumerState | None: ...
    async def save_consumer(self, consumer: ConsumerState) -> None: ...
    async def subscriptions(self) -> list[SubscriptionState]: ...
    async def insert_subscription(self, sub: SubscriptionState) -> None: ...
    async def delete_subscription(self, subscription_id: str) -> None: ...
    async def flush(self, subs: Sequence[SubscriptionState], delivered_total: int) -> None: ...
    async def add_dead_letter(self, record: DeadLetterRecord) -> None: ...
    async def dead_letter(self, dead_letter_id: str) -> DeadLetterRecord | None: ...
    async def dead_letters(
        self,
        *,
        subscription_id: str = "",
        before: tuple[float, str] | None = None,
        limit: int = 50,
        redelivering: bool | None = None,
    ) -> list[DeadLetterRecord]: ...
    async def count_dead_letters(self) -> int: ...
    async def remove_dead_letter(self, dead_letter_id: str) -> None: ...


class EventStore:
    """Reads and writes the bus's tables.

    Args:
        db: The database to use.
    """

    shared = False

    def __init__(self, db: Database) -> None:
        self.db = db
        columns = [c.name for c in events.columns]
        if db.engine.dialect.paramstyle == "numeric_dollar":
            marks = [f"${i}" for i in range(1, len(columns) + 1)]
        else:
            marks = ["?"] * len(columns)
        self._insert_sql = (
            f"INSERT INTO {events.name} ({', '.join(columns)}) VALUES ({', '.join(marks)})"
        )
        # On SQLite's writer thread: many rows per statement (see RowInsert).
        self._insert_rows = RowInsert(events.name, columns)
        self._count_rows = RowInsert(
            type_counts.name,
            ("event_type", "count"),
            on_conflict="ON CONFLICT (event_type) DO UPDATE SET count = count + excluded.count",
        )
        # On SQLite a group commit goes through the writer (SqliteWriter.commit: about five
        # times less per small commit than through the async engine, which sets the latency
        # when publishes arrive one at a time); PostgreSQL uses the engine.
        self._writer: SqliteWriter | None = db.sqlite_writer("eventbus-writer")

    async def open(self) -> None:
        """Creates the tables if they are missing."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the database."""
        if self._writer is not None:
            await self._writer.close()
        await self.db.close()

    # -- the log ---------------------------------------------------------------------

    async def bounds(self) -> tuple[int, int]:
        """(first retained sequence, head sequence); (0, 0) when empty."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(func.min(events.c.sequence), func.max(events.c.sequence)))
            ).one()
        return int(row[0] or 0), int(row[1] or 0)

    async def existing(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The sequences of already stored (source_domain, event_id) pairs."""
        by_source: dict[str, list[str]] = {}
        for source, event_id in keys:
            by_source.setdefault(source, []).append(event_id)
        found: dict[tuple[str, str], int] = {}
        if not by_source:
            return found
        async with self.db.read() as conn:
            for source, ids in by_source.items():
                for start in range(0, len(ids), 500):
                    rows = await conn.execute(
                        select(events.c.event_id, events.c.sequence).where(
                            events.c.source_domain == source,
                            events.c.event_id.in_(ids[start : start + 500]),
                        )
                    )
                    for event_id, sequence in rows:
                        found[(source, event_id)] = int(sequence)
        return found

    async def append(self, rows: Sequence[RowValues], by_type: dict[str, int]) -> None:
        """Stores events and their per-type counts in one transaction. Raises DuplicateEvent
        (and stores nothing) when an (source_domain, event_id) pair is already stored."""
        if self._writer is not None:
            counts = list(by_type.items())
            await self._writer.commit(
                lambda conn: self._append_sqlite(conn, rows, counts),
                durable=True,
                inline=len(rows) <= SQLITE_INLINE_MAX_ROWS,
            )
            return
        try:
            async with self.db.transaction() as conn:
                await self._append(conn, rows, by_type)
        except IntegrityError as exc:
            raise DuplicateEvent(str(exc.orig)) from None

    def _append_sqlite(
        self, conn: sqlite3.Connection, rows: Sequence[RowValues], counts: list[tuple[str, int]]
    ) -> None:
        try:
            with sqlite_transaction(conn):
                self._insert_rows.run(conn, rows)
                self._count_rows.run(conn, counts)
        except sqlite3.IntegrityError as exc:
            raise DuplicateEvent(str(exc)) from None

    async def _append(
        self, conn: AsyncConnection, rows: Sequence[RowValues], by_type: dict[str, int]
    ) -> None:
        # One driver-level executemany: about five times cheaper per row than a Core insert
        # (no per-row parameter processing).
        await conn.exec_driver_sql(self._insert_sql, [tuple(row) for row in rows])
        for event_type, count in by_type.items():
            stmt = self.db.insert(type_counts).values(event_type=event_type, count=count)
            stmt = stmt.on_conflict_do_update(
                index_elements=[type_counts.c.event_type],
                set_={"count": type_counts.c.count + stmt.excluded.count},
            )
            await conn.execute(stmt)

    async def read(
        self,
        after: int,
        upto: int,
        limit: int,
        log_filter: LogFilter,
        *,
        newest_first: bool = False,
        start_time: float = 0.0,
        end_time: float = 0.0,
    ) -> list[EventRow]:
        """Events with after < sequence <= upto passing the SQL pre-filter, in order."""
        query = select(events).where(events.c.sequence > after, events.c.sequence <= upto)
        clause = log_filter.clause()
        if clause is not None:
            query = query.where(clause)
        if start_time:
            query = query.where(events.c.published_at >= start_time)
        if end_time:
            query = query.where(events.c.published_at < end_time)
        order = events.c.sequence.desc() if newest_first else events.c.sequence
        async with self.db.read() as conn:
            rows = await conn.execute(query.order_by(order).limit(limit))
            return [EventRow(*row) for row in rows]

    async def published_at(self, sequence: int) -> float | None:
        """When the event at `sequence` was stored, or None when it is not retained."""
        async with self.db.read() as conn:
            value = (
                await conn.execute(
                    select(events.c.published_at).where(events.c.sequence == sequence)
                )
            ).scalar_one_or_none()
        return None if value is None else float(value)

    async def truncate_before(self, sequence: int) -> int:
        """Deletes every event before `sequence`; returns how many went."""
        async with self.db.transaction() as conn:
            result = await conn.execute(delete(events).where(events.c.sequence < sequence))
        return int(result.rowcount or 0)

    async def type_counts(self) -> dict[str, int]:
        """Events stored per type since the log began."""
        async with self.db.read() as conn:
            return {t: int(c) for t, c in await conn.execute(select(type_counts))}

    async def counters(self) -> dict[str, int]:
        """Persisted counters (delivered_total, ...)."""
        async with self.db.read() as conn:
            return {k: int(v) for k, v in await conn.execute(select(counters))}

    # -- consumers and subscriptions ---------------------------------------------------

    async def consumers(self) -> list[ConsumerState]:
        """Every durable consumer."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(consumers).order_by(consumers.c.name))
            return [
                ConsumerState(
                    r.name, tuple(r.patterns), r.source_domain, r.acked_sequence, r.updated_at
                )
                for r in rows
            ]

    async def consumer(self, name: str) -> ConsumerState | None:
        """One durable consumer, or None."""
        return next((c for c in await self.consumers() if c.name == name), None)

    async def save_consumer(self, consumer: ConsumerState) -> None:
        """Creates or updates a durable consumer."""
        row = {
            "name": consumer.name,
            "patterns": list(consumer.patterns),
            "source_domain": consumer.source_domain,
            "acked_sequence": consumer.acked_sequence,
            "updated_at": consumer.updated_at,
        }
        async with self.db.transaction() as conn:
            stmt = self.db.insert(consumers).values(**row)
            stmt = stmt.on_conflict_do_update(
                index_elements=[consumers.c.name],
                set_={k: v for k, v in row.items() if k != "name"},
            )
            await conn.execute(stmt)

    async def subscriptions(self) -> list[SubscriptionState]:
        """Every push subscription."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(subscriptions))
            return [
                SubscriptionState(**{**r._mapping, "patterns": tuple(r.patterns)}) for r in rows
            ]

    async def insert_subscription(self, sub: SubscriptionState) -> None:
        """Stores a new push subscription."""
        async with self.db.transaction() as conn:
            await conn.execute(subscriptions.insert().values(**_subscription_row(sub)))

    async def delete_subscription(self, subscription_id: str) -> None:
        """Deletes a push subscription (its dead letters stay)."""
        async with self.db.transaction() as conn:
            await conn.execute(
                delete(subscriptions).where(subscriptions.c.subscription_id == subscription_id)
            )

    async def flush(self, subs: Sequence[SubscriptionState], delivered_total: int) -> None:
        """Persists subscription positions and counters in one transaction."""
        async with self.db.transaction() as conn:
            for sub in subs:
                row = _subscription_row(sub)
                await conn.execute(
                    update(subscriptions)
                    .where(subscriptions.c.subscription_id == sub.subscription_id)
                    .values(**{k: v for k, v in row.items() if k != "subscription_id"})
                )
            stmt = self.db.insert(counters).values(key="delivered_total", value=delivered_total)
            stmt = stmt.on_conflict_do_update(
                index_elements=[counters.c.key], set_={"value": delivered_total}
            )
            await conn.execute(stmt)

    # -- dead letters --------------------------------------------------------------------

    async def add_dead_letter(self, record: DeadLetterRecord) -> None:
        """Stores a dead letter, or updates it after a failed redelivery."""
        row = record.__dict__.copy()
        async with self.db.transaction() as conn:
            stmt = self.db.insert(dead_letters).values(**row)
            stmt = stmt.on_conflict_do_update(
                index_elements=[dead_letters.c.dead_letter_id],
                set_={k: v for k, v in row.items() if k != "dead_letter_id"},
            )
            await conn.execute(stmt)

    async def dead_letter(self, dead_letter_id: str) -> DeadLetterRecord | None:
        """One dead letter, or None."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(dead_letters).where(dead_letters.c.dead_letter_id == dead_letter_id)
                )
            ).one_or_none()
        return None if row is None else DeadLetterRecord(**row._mapping)

    async def dead_letters(
        self,
        *,
        subscription_id: str = "",
        before: tuple[float, str] | None = None,
        limit: int = 50,
        redelivering: bool | None = None,
    ) -> list[DeadLetterRecord]:
        """Dead letters newest first, after the keyset position `before`."""
        query = select(dead_letters)
        if subscription_id:
            query = query.where(dead_letters.c.subscription_id == subscription_id)
        if redelivering is not None:
            query = query.where(dead_letters.c.redelivering == redelivering)
        if before is not None:
            at, key = before
            query = query.where(
                or_(
                    dead_letters.c.failed_at < at,
                    and_(dead_letters.c.failed_at == at, dead_letters.c.dead_letter_id < key),
                )
            )
        query = query.order_by(
            dead_letters.c.failed_at.desc(), dead_letters.c.dead_letter_id.desc()
        ).limit(limit)
        async with self.db.read() as conn:
            return [DeadLetterRecord(**r._mapping) for r in await conn.execute(query)]

    async def count_dead_letters(self) -> int:
        """How many dead letters are held."""
        async with self.db.read() as conn:
            value = (await conn.execute(select(func.count()).select_from(dead_letters))).scalar()
        return int(value or 0)

    async def remove_dead_letter(self, dead_letter_id: str) -> None:
        """Deletes a dead letter (it was redelivered)."""
        async with self.db.transaction() as conn:
            await _delete_dead_letter(conn, dead_letter_id)


async def _delete_dead_letter(conn: AsyncConnection, dead_letter_id: str) -> None:
    await conn.execute(delete(dead_letters).where(dead_letters.c.dead_letter_id == dead_letter_id))


def _subscription_row(sub: SubscriptionState) -> dict[str, Any]:
    row = dict(sub.__dict__)
    row["patterns"] = list(sub.patterns)
    row["last_error"] = sub.last_error[:1024]
    return row
