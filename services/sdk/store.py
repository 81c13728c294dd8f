"""A domain's own durable state: stored results for idempotency, and a key-value store.

Both live in the domain's database (SQLite `<data dir>/<domain id>.db` by default,
PostgreSQL by URL), in tables prefixed `sdk_`. SQLite runs with `synchronous=FULL`, so a
result or record that was written survives a crash.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Column, Float, MetaData, String, Table, delete, func, select

from services.common.storage import Database

MAX_KEY_LENGTH = 256
MAX_COLLECTION_LENGTH = 128

metadata = MetaData()

results_table = Table(
    "sdk_results",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("idempotency_key", String(MAX_KEY_LENGTH), primary_key=True),
    Column("action", String(128), nullable=False),
    Column("output", JSON, nullable=False),
    Column("created_at", Float, nullable=False, index=True),
)

# A call with an idempotency key is marked here (durably) before its function runs and
# unmarked in the transaction that stores its result (or when it fails). A mark without a
# result after a restart means the run was interrupted with its effect unknown.
started_table = Table(
    "sdk_started",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("idempotency_key", String(MAX_KEY_LENGTH), primary_key=True),
    Column("action", String(128), nullable=False),
    Column("started_at", Float, nullable=False, index=True),
)

records_table = Table(
    "sdk_records",
    metadata,
    Column("collection", String(MAX_COLLECTION_LENGTH), primary_key=True),
    Column("key", String(MAX_KEY_LENGTH), primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)


@dataclass(frozen=True)
class StoredResult:
    """The first result of a call, kept for replay."""

    action: str
    output: dict[str, Any]
    created_at: float


class ResultStore:
    """Results of completed calls by (kind, idempotency key).

    Args:
        db: The domain's database.
        clock: Epoch seconds (injectable for tests).
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def get(self, kind: str, key: str) -> StoredResult | None:
        """The stored result, or None."""
        table = results_table
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(table.c.action, table.c.output, table.c.created_at).where(
                        table.c.kind == kind, table.c.idempotency_key == key
                    )
                )
            ).first()
        return None if row is None else StoredResult(row.action, dict(row.output), row.created_at)

    async def put(self, kind: str, key: str, action: str, output: dict[str, Any]) -> None:
        """Stores a result and clears the key's start mark, in one transaction; an existing
        result for the key is kept (the first result wins)."""
        statement = (
            self.db.insert(results_table)
            .values(
                kind=kind,
                idempotency_key=key,
                action=action,
                output=output,
                created_at=self.clock(),
            )
            .on_conflict_do_nothing(index_elements=["kind", "idempotency_key"])
        )
        async with self.db.transaction() as conn:
            await conn.execute(statement)
            await conn.execute(self._unmark(kind, key))

    async def started(self, kind: str, key: str) -> str | None:
        """The action of a run of the key that was marked started and never ended, or None."""
        table = started_table
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(table.c.action).where(
                        table.c.kind == kind, table.c.idempotency_key == key
                    )
                )
            ).first()
        return None if row is None else str(row.action)

    async def mark_started(self, kind: str, key: str, action: str) -> None:
        """Records durably that a run of the key is starting."""
        statement = (
            self.db.insert(started_table)
            .values(kind=kind, idempotency_key=key, action=action, started_at=self.clock())
            .on_conflict_do_nothing(index_elements=["kind", "idempotency_key"])
        )
        async with self.db.transaction() as conn:
            await conn.execute(statement)

    async def unmark_started(self, kind: str, key: str) -> None:
        """Clears the start mark of a run that ended without a result (it failed)."""
        async with self.db.transaction() as conn:
            await conn.execute(self._unmark(kind, key))

    def _unmark(self, kind: str, key: str) -> Any:
        table = started_table
        return delete(table).where(table.c.kind == kind, table.c.idempotency_key == key)

    async def prune(self, older_than_s: float) -> int:
        """Forgets results (and start marks) older than `older_than_s`; returns how many."""
        cutoff = self.clock() - older_than_s
        async with self.db.transaction() as conn:
            result = await conn.execute(
                delete(results_table).where(results_table.c.created_at < cutoff)
            )
            marks = await conn.execute(
                delete(started_table).where(started_table.c.started_at < cutoff)
            )
        return int(result.rowcount or 0) + int(marks.rowcount or 0)


class KeyValueStore:
    """Durable JSON documents by collection and key, for a domain's own state.

    Every method is one transaction. Values are JSON objects (dicts of JSON values).

    Args:
        db: The domain's database.
        clock: Epoch seconds (injectable for tests).
    """

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def put(self, collection: str, key: str, value: dict[str, Any]) -> None:
        """Stores `value` under `key`, replacing what was there."""
        _check(collection, key)
        statement = self.db.insert(records_table).values(
            collection=collection, key=key, value=value, updated_at=self.clock()
        )
        statement = statement.on_conflict_do_update(
            index_elements=["collection", "key"],
            set_={"value": statement.excluded.value, "updated_at": statement.excluded.updated_at},
        )
        async with self.db.transaction() as conn:
            await conn.execute(statement)

    async def get(self, collection: str, key: str) -> dict[str, Any] | None:
        """The value under `key`, or None."""
        _check(collection, key)
        table = records_table
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(table.c.value).where(
                        table.c.collection == collection, table.c.key == key
                    )
                )
            ).first()
        return None if row is None else dict(row.value)

    async def delete(self, collection: str, key: str) -> bool:
        """Removes `key`; True when it existed."""
        _check(collection, key)
        table = records_table
        async with self.db.transaction() as conn:
            result = await conn.execute(
                delete(table).where(table.c.collection == collection, table.c.key == key)
            )
        return bool(result.rowcount)

    async def list(
        self, collection: str, *, after: str = "", limit: int = 100
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` (key, value) pairs with keys greater than `after`, in key order."""
        table = records_table
        async with self.db.read() as conn:
            rows = await conn.execute(
                select(table.c.key, table.c.value)
                .where(table.c.collection == collection, table.c.key > after)
                .order_by(table.c.key)
                .limit(limit)
            )
            return [(row.key, dict(row.value)) for row in rows]

    async def count(self, collection: str) -> int:
        """How many keys the collection holds."""
        table = records_table
        async with self.db.read() as conn:
            result = await conn.execute(
                select(func.count()).select_from(table).where(table.c.collection == collection)
            )
            return int(result.scalar_one())


def _check(collection: str, key: str) -> None:
    if not 0 < len(collection) <= MAX_COLLECTION_LENGTH:
        raise ValueError(f"collection must be 1-{MAX_COLLECTION_LENGTH} characters")
    if not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValueError(f"key must be 1-{MAX_KEY_LENGTH} characters")
