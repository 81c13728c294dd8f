"""Durable state of the immutable log: entries (exact leaf bytes and leaf hashes), the
Merkle tree's inner nodes, the request ids of appends (idempotent retries) and the signed
tree head of every commit.

The nodes table holds the hash of every complete aligned subtree of level >= 1 (level 0,
the leaf hashes, is the entries' `leaf_hash` column): about one row per entry. A commit
writes the nodes its leaves complete in the same transaction as the leaves, so the
invariant "every node within the first `size` leaves is stored" survives any crash, and
roots and proofs of any size read O(log n) rows (`hashes`, one query).

Rows are only ever inserted: nothing here updates or deletes an entry or a node.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    and_,
    func,
    or_,
    select,
)

from services.common.storage import (
    SQLITE_INLINE_MAX_ROWS,
    Database,
    RowInsert,
    SqliteWriter,
    sqlite_transaction,
)
from services.kernels.immutable_log.merkle import Node

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

nodes = Table(
    "immutable_log_nodes",
    metadata,
    Column("level", SmallInteger, primary_key=True, autoincrement=False),
    Column("idx", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    # On SQLite the rows live in the primary key's B-tree: no rowid, no second index.
    sqlite_with_rowid=False,
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
        node_marks = ", ".join("?" if db.is_sqlite else f"${n}" for n in range(1, 4))
        self._insert_nodes_sql = (
            f"INSERT INTO {nodes.name} (level, idx, hash) VALUES ({node_marks})"
        )
        # On SQLite a commit goes through the writer (SqliteWriter.commit), with many rows
        # per statement; PostgreSQL uses the engine.
        self._writer: SqliteWriter | None = db.sqlite_writer("immutable-log-writer")
        self._entries_sqlite = RowInsert(
            entries.name, ("idx", "leaf_data", "leaf_hash", "kind", "actor", "time")
        )
        self._nodes_sqlite = RowInsert(nodes.name, ("level", "idx", "hash"))
        self._requests_sqlite = RowInsert(requests.name, ("request_id", "first_index", "count"))
        self._head_sqlite = RowInsert(heads.name, ("tree_size", "root_hash", "checkpoint"))

    async def open(self) -> None:
        """Creates the tables if missing."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the database."""
        if self._writer is not None:
            await self._writer.close()
        await self.db.close()

    async def leaf_hashes(
        self, start: int = 0, chunk: int = 50_000
    ) -> AsyncIterator[list[tuple[int, bytes]]]:
        """(index, stored leaf hash) of every entry from `start` on, in index order, a
        chunk at a time."""
        query = select(entries.c.idx, entries.c.leaf_hash)
        async for rows in self._chunks(query, chunk, after=start - 1):
            yield [(int(index), bytes(leaf)) for index, leaf in rows]

    async def leaf_hash_range(self, start: int, end: int) -> list[bytes]:
        """The stored leaf hashes of entries [start, end), in order."""
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(entries.c.leaf_hash)
                .where(entries.c.idx >= start, entries.c.idx < end)
                .order_by(entries.c.idx)
            )
            return [bytes(leaf) for (leaf,) in rows]

    async def size(self) -> int:
        """One past the highest stored index (the log's size when no row is missing)."""
        async with self.db.read() as conn:
            top = (await conn.execute(select(func.max(entries.c.idx)))).scalar_one_or_none()
        return 0 if top is None else int(top) + 1

    async def nodes_stored_through(self) -> int:
        """How many leaves the stored nodes are complete for: an even count m such that
        every node within the first m leaves is stored (0 for a log written before nodes
        were stored). Commits and back-fills write nodes in leaf order, so the last level-1
        node bounds it."""
        async with self.db.read() as conn:
            top = (
                await conn.execute(select(func.max(nodes.c.idx)).where(nodes.c.level == 1))
            ).scalar_one_or_none()
        return 0 if top is None else 2 * (int(top) + 1)

    async def hashes(self, wanted: set[Node]) -> dict[Node, bytes]:
        """The stored hashes of these nodes (leaves from the entries, the rest from the
        nodes table), in one query; a node not stored is absent from the answer."""
        if not wanted:
            return {}
        # Plain driver SQL: the statement's shape changes with every proof, and compiling
        # it through SQLAlchemy cost twice the query itself.
        marks = self._marks()
        params: list[int] = []
        leaves = sorted(index for level, index in wanted if level == 0)
        inner = sorted(node for node in wanted if node[0] > 0)
        parts = []
        if leaves:
            parts.append(
                f"SELECT 0, idx, leaf_hash FROM {entries.name} "
                f"WHERE idx IN ({', '.join(next(marks) for _ in leaves)})"
            )
            params += leaves
        if inner:
            terms = " OR ".join(f"(level = {next(marks)} AND idx = {next(marks)})" for _ in inner)
            parts.append(f"SELECT level, idx, hash FROM {nodes.name} WHERE {terms}")
            params += [value for node in inner for value in node]
        async with self.db.read() as conn:
            result = await conn.exec_driver_sql(" UNION ALL ".join(parts), tuple(params))
            rows: list[Any] = list(result)
        return {(int(level), int(index)): bytes(digest) for level, index, digest in rows}

    def _marks(self) -> Iterator[str]:
        """Parameter placeholders of the driver, in order."""
        if self.db.is_sqlite:
            return itertools.repeat("?")
        return (f"${n}" for n in itertools.count(1))

    async def nodes_completed(self, start: int, end: int) -> dict[Node, bytes]:
        """The stored nodes (levels >= 1) that leaves [start, end) complete: node
        (L, i) is completed by leaf (i + 1) * 2^L - 1."""
        ranges = []
        level = 1
        while (1 << level) <= end:
            first, last = (start + 1 + (1 << level) - 1) >> level, end >> level
            if first <= last:
                ranges.append(
                    and_(nodes.c.level == level, nodes.c.idx >= first - 1, nodes.c.idx < last)
                )
            level += 1
        if not ranges:
            return {}
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(nodes.c.level, nodes.c.idx, nodes.c.hash).where(or_(*ranges))
            )
            return {(int(level), int(index)): bytes(digest) for level, index, digest in rows}

    async def add_nodes(self, completed: Sequence[tuple[int, int, bytes]]) -> None:
        """Inserts nodes of leaves already stored, in one transaction (back-fill)."""
        if completed:
            async with self.db.transaction() as conn:
                await conn.exec_driver_sql(self._insert_nodes_sql, list(completed))

    async def scan(self, chunk: int = 10_000) -> AsyncIterator[StoredEntry]:
        """Every entry in index order (for integrity checks)."""
        query = select(entries.c.idx, entries.c.leaf_data, entries.c.leaf_hash)
        async for rows in self._chunks(query, chunk):
            for index, data, leaf in rows:
                yield StoredEntry(int(index), bytes(data), bytes(leaf))

    async def _chunks(
        self, query: Any, chunk: int, after: int = -1, key: Any = entries.c.idx
    ) -> AsyncIterator[list[Any]]:
        # Keyset pages keep memory flat and work the same on SQLite and PostgreSQL.
        while True:
            async with self.db.read() as conn:
                result = await conn.execute(query.where(key > after).order_by(key).limit(chunk))
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
        completed: Sequence[tuple[int, int, bytes]] = (),
    ) -> None:
        """Inserts rows from `first_index` on, the (level, index, hash) of the tree nodes
        they complete, their request ids and the new tree head, in one transaction."""
        if self._writer is not None:
            await self._writer.commit(
                lambda conn: self._commit_sqlite(
                    conn, first_index, rows, request_ids, head, completed
                ),
                durable=True,
                inline=len(rows) <= SQLITE_INLINE_MAX_ROWS,
            )
            return
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
            if completed:
                await conn.exec_driver_sql(self._insert_nodes_sql, list(completed))
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

    def _commit_sqlite(
        self,
        conn: sqlite3.Connection,
        first_index: int,
        rows: Sequence[NewRow],
        request_ids: Sequence[tuple[str, int, int]],
        head: Head,
        completed: Sequence[tuple[int, int, bytes]],
    ) -> None:
        with sqlite_transaction(conn):
            self._entries_sqlite.run(
                conn,
                [
                    (first_index + offset, r.leaf_data, r.leaf_hash, r.kind, r.actor, r.time)
                    for offset, r in enumerate(rows)
                ],
            )
            if completed:
                self._nodes_sqlite.run(conn, completed)
            if request_ids:
                self._requests_sqlite.run(conn, request_ids)
            self._head_sqlite.run(conn, [(head.tree_size, head.root_hash, head.checkpoint)])

    async def heads(self, chunk: int = 10_000) -> AsyncGenerator[Head, None]:
        """Every recorded tree head, by size."""
        async for rows in self._chunks(select(heads), chunk, key=heads.c.tree_size):
            for size, root, note in rows:
                yield Head(int(size), bytes(root), note)

    async def head(self, tree_size: int) -> Head | None:
        """The head recorded at exactly this size, if any."""
        async with self.db.read() as conn:
            row = (await conn.execute(select(heads).where(heads.c.tree_size == tree_size))).first()
        return (
            None if row is None else Head(int(row.tree_size), bytes(row.root_hash), row.checkpoint)
        )
