"""Durable state of the immutable log: entries (exact leaf bytes and leaf hashes), the
request ids of appends (idempotent retries) and the signed tree head of every commit.

Rows are only ever inserted: nothing here updates or deletes an entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    select,
)

from services.common.storage import Database

metadata = MetaData()

entries = Table(
    "immutable_log_entries",
    metadata,
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("leaf_data", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary(32), nullable=False),
    Column("kind", String(128), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("time", Float, nullable=False),
    Index("immutable_log_entries_leaf_hash", "leaf_hash"),
)

requests = Table(
    "immutable_log_requests",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("first_index", BigInteger, nullable=False),
    Column("count", BigInteger, nullable=False),
)

heads = Table(
    "immutable_log_heads",
    metadata,
    Column("tree_size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("checkpoint", Text, nullable=False),
)


@dataclass(frozen=True)
class StoredEntry:
    """One entry row as stored."""

    index: int
    leaf_data: bytes
    leaf_hash: bytes


@dataclass(frozen=True)
class NewRow:
    """An entry ready to insert."""

    leaf_data: bytes
    leaf_hash: bytes
    kind: str
    actor: str
    time: float


@dataclass(frozen=True)
class Head:
    """A signed tree head recorded at a commit."""

    tree_size: int
    root_hash: bytes
    checkpoint: str


class LogStore:
    """Reads and appends log rows; each commit is one transaction.

    Args:
        db: The database to use.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        marks = ", ".join("?" if db.is_sqlite else f"${n}" for n in range(1, 7))
        self._insert_sql = (
            f"INSERT INTO {entries.name} (idx, leaf_data, leaf_hash, kind, actor, time) "
            f"VALUES ({marks})"
        )

    async def open(self) -> None:
        """Creates the tables if missing."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the database."""
        await self.db.close()

    async def leaf_hashes(self, chunk: int = 50_000) -> AsyncIterator[tuple[int, bytes]]:
        """Every (index, stored leaf hash) in index order."""
        async for rows in self._chunks(select(entries.c.idx, entries.c.leaf_hash), chunk):
            for index, leaf in rows:
                yield int(index), bytes(leaf)

    async def scan(self, chunk: int = 10_000) -> AsyncIterator[StoredEntry]:
        """Every entry in index order (for integrity checks)."""
        query = select(entries.c.idx, entries.c.leaf_data, entries.c.leaf_hash)
        async for rows in self._chunks(query, chunk):
            for index, data, leaf in rows:
                yield StoredEntry(int(index), bytes(data), bytes(leaf))

    async def _chunks(self, query: Any, chunk: int) -> AsyncIterator[list[Any]]:
        # Keyset pages keep memory flat and work the same on SQLite and PostgreSQL.
        after = -1
        while True:
            async with self.db.read() as conn:
                result = await conn.execute(
                    query.where(entries.c.idx > after).order_by(entries.c.idx).limit(chunk)
                )
                rows = [tuple(r) for r in result]
            if not rows:
                return
            yield rows
            after = int(rows[-1][0])

    async def entries(self, start: int, end: int) -> list[StoredEntry]:
        """Entries with start <= index < end, in order."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(entries.c.idx, entries.c.leaf_data, entries.c.leaf_hash)
                .where(entries.c.idx >= start, entries.c.idx < end)
                .order_by(entries.c.idx)
            )
            return [StoredEntry(int(i), bytes(d), bytes(h)) for i, d, h in rows]

    async def index_of(self, leaf: bytes) -> int | None:
        """The first index whose stored leaf hash is `leaf`."""
        async with self.db.read() as conn:
            found = await conn.execute(
                select(func.min(entries.c.idx)).where(entries.c.leaf_hash == leaf)
            )
            value = found.scalar_one_or_none()
        return None if value is None else int(value)

    async def requests(self, request_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(first index, count) of earlier appends with these request ids."""
        if not request_ids:
            return {}
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(requests).where(requests.c.request_id.in_(list(request_ids)))
            )
            return {
                r._mapping["request_id"]: (int(r._mapping["first_index"]), int(r._mapping["count"]))
                for r in rows
            }

    async def commit(
        self,
        first_index: int,
        rows: Sequence[NewRow],
        request_ids: Sequence[tuple[str, int, int]],
        head: Head,
    ) -> None:
        """Inserts rows from `first_index` on, their request ids and the new tree head, in
        one transaction."""
        async with self.db.transaction() as conn:
            # The hot path of the log: a driver-level executemany of plain tuples skips
            # SQLAlchemy's per-row parameter processing (about a third of an append's cost).
            await conn.exec_driver_sql(
                self._insert_sql,
                [
                    (first_index + offset, r.leaf_data, r.leaf_hash, r.kind, r.actor, r.time)
                    for offset, r in enumerate(rows)
                ],
            )
            if request_ids:
                await conn.execute(
                    requests.insert(),
                    [
                        {"request_id": rid, "first_index": first, "count": count}
                        for rid, first, count in request_ids
                    ],
                )
            await conn.execute(
                heads.insert().values(
                    tree_size=head.tree_size, root_hash=head.root_hash, checkpoint=head.checkpoint
                )
            )

    async def heads(self) -> list[Head]:
        """Every recorded tree head, by size."""
        async with self.db.read() as conn:
            rows = await conn.execute(select(heads).order_by(heads.c.tree_size))
            return [Head(int(r.tree_size), bytes(r.root_hash), r.checkpoint) for r in rows]

    async def head(self, tree_size: int) -> Head | None:
        """The head recorded at exactly this size, if any."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(heads).where(heads.c.tree_size == tree_size))).first()
        return (
            None if row is None else Head(int(row.tree_size), bytes(row.root_hash), row.checkpoint)
        )
