"""Durable state of the learning kernel: batches taken (so a batch sent again is counted
once), the patterns found, the outbox of `insight.*` events and that of immutable-log
entries.

Outcome counters are in memory (see `detector.Aggregates`): the outcomes themselves stay
durable in each domain's own ring until they are sent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Index,
    MetaData,
    String,
    Table,
    delete,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.outbox import outbox_table
from services.common.storage import Database

metadata = MetaData()

batches = Table(
    "learning_batches",
    metadata,
    Column("domain_id", String(128), primary_key=True),
    Column("batch_id", String(128), primary_key=True),
    Column("received_at", Float, nullable=False),
    Index("learning_batches_at", "received_at"),
)

patterns = Table(
    "learning_patterns",
    metadata,
    Column("pattern_id", String(64), primary_key=True),
    Column("domain_id", String(128), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("strength", Float, nullable=False),
    Column("record", JSON, nullable=False),
    Column("contribution_id", String(128), nullable=False),
    # Set once the pattern is contributed to shared memory and its event is in the outbox.
    Column("announced", Boolean, nullable=False),
    Column("first_found", Float, nullable=False),
    Column("last_found", Float, nullable=False),
)

outbox = outbox_table(metadata, "learning")
# Entries for the immutable log: each pattern found, as announced.
log_outbox = outbox_table(metadata, "learning_log")


class LearningStore:
    """Reads and writes learning state.

    Args:
        db: The database.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self) -> None:
        """Creates the tables if missing."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the database."""
        await self.db.close()

    async def take_batch(self, domain_id: str, batch_id: str, now: float) -> bool:
        """Records a batch; False when it was taken before."""
        statement = (
            self.db.insert(batches)
            .values(domain_id=domain_id, batch_id=batch_id, received_at=now)
            .on_conflict_do_nothing(index_elements=["domain_id", "batch_id"])
        )
        async with self.db.transaction() as conn:
            result = await conn.execute(statement)
        return bool(result.rowcount)

    async def forget_batches(self, older_than: float) -> int:
        """Forgets batch ids taken before `older_than`; returns how many."""
        async with self.db.transaction() as conn:
            result = await conn.execute(delete(batches).where(batches.c.received_at < older_than))
        return int(result.rowcount or 0)

    async def known(self, conn: AsyncConnection) -> dict[str, dict[str, Any]]:
        """Every stored pattern by id, inside the caller's transaction."""
        rows = await conn.execute(select(patterns))
        return {row.pattern_id: dict(row._mapping) for row in rows}

    async def insert(self, conn: AsyncConnection, row: dict[str, Any]) -> None:
        """Adds a pattern."""
        await conn.execute(patterns.insert().values(**row))

    async def refresh(
        self,
        conn: AsyncConnection,
        pattern_id: str,
        record: dict[str, Any],
        strength: float,
        now: float,
    ) -> None:
        """Updates a known pattern's evidence."""
        await conn.execute(
            update(patterns)
            .where(patterns.c.pattern_id == pattern_id)
            .values(record=record, strength=strength, last_found=now)
        )

    async def announced(self, conn: AsyncConnection, pattern_id: str, contribution_id: str) -> None:
        """Records, in the caller's transaction, that a pattern was contributed (as
        `contribution_id`, "" without a shared memory) and its event enqueued."""
        await conn.execute(
            update(patterns)
            .where(patterns.c.pattern_id == pattern_id)
            .values(contribution_id=contribution_id, announced=True)
        )

    async def unannounced(self) -> list[dict[str, Any]]:
        """Patterns not yet contributed and announced."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(patterns)
                .where(patterns.c.announced.is_(False))
                .order_by(patterns.c.first_found)
            )
            return [dict(row._mapping) for row in rows]

    async def list(
        self, *, domain_id: str = "", kind: str = "", offset: int = 0, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Patterns, strongest first."""
        query = select(patterns)
        if domain_id:
            query = query.where(patterns.c.domain_id == domain_id)
        if kind:
            query = query.where(patterns.c.kind == kind)
        query = query.order_by(patterns.c.strength.desc(), patterns.c.pattern_id)
        async with self.db.read() as conn:
            rows = await conn.execute(query.offset(offset).limit(limit))
            return [dict(row._mapping) for row in rows]

    async def get(self, pattern_id: str) -> dict[str, Any] | None:
        """One pattern, or None."""
        async with self.db.read() as conn:
            row = (
                await conn.execute(select(patterns).where(patterns.c.pattern_id == pattern_id))
            ).first()
        return None if row is None else dict(row._mapping)

    async def count(self) -> int:
        """How many patterns are known."""
        async with self.db.read() as conn:
            return len((await conn.execute(select(patterns.c.pattern_id))).all())
