"""A domain's own durable state: stored results for idempotency, and a key-value store.

Both live in the domain's database (SQLite `<data dir>/<domain id>.db` by default,
PostgreSQL by URL), in tables named for the domain (`sdk_<domain>_results`, ...; see
`DomainTables`), so domains sharing one database keep apart. SQLite runs with
`synchronous=FULL`, so a result or record that was written survives a crash.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    func,
    inspect,
    make_url,
    select,
    text,
)

from services.common.outbox import outbox_table
from services.common.storage import Database

MAX_KEY_LENGTH = 256
MAX_COLLECTION_LENGTH = 128
# Longest readable part of a domain id in its table names (PostgreSQL names have at most
# 63 characters: "sdk_" + stem + "_" + 8 hex + "_results" must fit).
_MAX_STEM = 32
_LEGACY_PREFIX = "sdk"
_LEGACY_INDEXES = ("ix_sdk_results_created_at",)

log = logging.getLogger(__name__)


def table_prefix(domain_id: str) -> str:
    """`sdk_<domain>`: the prefix of the domain's tables.

    A domain id that is already a plain lower-case SQL name is used as it is
    (`sdk_ai_domain_results`); any other (upper case, '-', '.', long) is folded to one and
    suffixed with a hash of the id, so two ids never share tables.
    """
    stem = re.sub(r"[^a-z0-9_]", "_", domain_id.lower())
    if stem != domain_id or len(stem) > _MAX_STEM:
        digest = hashlib.sha256(domain_id.encode()).hexdigest()[:8]
        stem = f"{stem[:_MAX_STEM]}_{digest}"
    return f"sdk_{stem}"


@dataclass(frozen=True)
class DomainTables:
    """The tables of one domain, named for it (see `table_prefix`), so domains that share
    a database (one `GRACE_DATABASE_URL` for the whole system) never read, replay or
    relay each other's rows.

    Attributes:
        prefix: `sdk_<domain>`.
        metadata: Holds the tables (create them with `Database.create_tables`).
        results: First results by (kind, idempotency key).
        started: Runs marked started and not yet ended (see `ResultStore`).
        records: The key-value store.
        outbox: Events published and not yet relayed.
        outcomes: The ring of action outcomes not yet sent to the learning kernel (see
            `services.sdk.outcomes`).
    """

    prefix: str
    metadata: MetaData
    results: Table
    started: Table
    records: Table
    outbox: Table
    outcomes: Table

    @classmethod
    def of(cls, domain_id: str) -> DomainTables:
        """The tables of `domain_id`."""
        return cls.named(table_prefix(domain_id))

    @classmethod
    def named(cls, prefix: str) -> DomainTables:
        """The tables with this prefix."""
        metadata = MetaData()
        results = Table(
            f"{prefix}_results",
            metadata,
            Column("kind", String(16), primary_key=True),
            Column("idempotency_key", String(MAX_KEY_LENGTH), primary_key=True),
            Column("action", String(128), nullable=False),
            Column("output", JSON, nullable=False),
            Column("created_at", Float, nullable=False),
            Index(f"{prefix}_results_at", "created_at"),
        )
        # A call with an idempotency key is marked here (durably) before its function
        # runs and unmarked in the transaction that stores its result (or when it fails).
        # A mark without a result after a restart: the run was interrupted, effect unknown.
        started = Table(
            f"{prefix}_started",
            metadata,
            Column("kind", String(16), primary_key=True),
            Column("idempotency_key", String(MAX_KEY_LENGTH), primary_key=True),
            Column("action", String(128), nullable=False),
            Column("started_at", Float, nullable=False),
            Index(f"{prefix}_started_at", "started_at"),
        )
        records = Table(
            f"{prefix}_records",
            metadata,
            Column("collection", String(MAX_COLLECTION_LENGTH), primary_key=True),
            Column("key", String(MAX_KEY_LENGTH), primary_key=True),
            Column("value", JSON, nullable=False),
            Column("updated_at", Float, nullable=False),
        )
        outbox = outbox_table(metadata, prefix)
        outcomes = Table(
            f"{prefix}_outcomes",
            metadata,
            Column("row_id", Integer, primary_key=True, autoincrement=True),
            Column("action", String(128), nullable=False),
            Column("success", Boolean, nullable=False),
            Column("latency_ms", Float, nullable=False),
            Column("input_size", Integer, nullable=False),
            Column("hour", Integer, nullable=False),
            Column("weekday", Integer, nullable=False),
            Column("attempt", Integer, nullable=False),
            Column("in_flight", Integer, nullable=False),
            Column("sequence", Integer, nullable=False),
            Column("at", Float, nullable=False),
        )
        return cls(prefix, metadata, results, started, records, outbox, outcomes)


async def create_domain_tables(db: Database, domain_id: str, tables: DomainTables) -> None:
    """Creates the domain's tables; in the domain's own SQLite file, first renames the
    tables of earlier versions (`sdk_results`, `sdk_records`, `sdk_outbox`) to its names.

    Earlier versions used those three names for every domain. In `<domain id>.db` they
    can only be this domain's, so they are adopted; in a shared database they may hold
    several domains' rows mixed, so they are left alone (with a warning).
    """
    legacy = {
        f"{_LEGACY_PREFIX}_{name}": f"{tables.prefix}_{name}"
        for name in ("results", "records", "outbox")
    }

    def adopt(conn: Connection) -> None:
        existing = set(inspect(conn).get_table_names())
        found = [old for old, new in legacy.items() if old in existing and new not in existing]
        if not found:
            return
        database = make_url(db.url).database or ""
        if not (db.is_sqlite and Path(database).stem == domain_id):
            log.warning(
                "tables %s of an earlier version are in this shared database; domain %s "
                "does not adopt them (they may hold other domains' rows)",
                ", ".join(found),
                domain_id,
            )
            return
        for index in _LEGACY_INDEXES:
            conn.execute(text(f'DROP INDEX IF EXISTS "{index}"'))
        for old in found:
            conn.execute(text(f'ALTER TABLE "{old}" RENAME TO "{legacy[old]}"'))
        log.info("domain %s adopted its tables of an earlier version: %s", domain_id, found)

    async with db.transaction() as conn:
        await conn.run_sync(adopt)
    await db.create_tables(tables.metadata)


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
        tables: The domain's tables.
        clock: Epoch seconds (injectable for tests).
    """

    def __init__(
        self, db: Database, tables: DomainTables, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.tables = tables
        self.clock = clock

    async def get(self, kind: str, key: str) -> StoredResult | None:
        """The stored result, or None."""
        table = self.tables.results
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
            self.db.insert(self.tables.results)
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
        table = self.tables.started
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
            self.db.insert(self.tables.started)
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
        table = self.tables.started
        return delete(table).where(table.c.kind == kind, table.c.idempotency_key == key)

    async def prune(self, older_than_s: float) -> int:
        """Forgets results (and start marks) older than `older_than_s`; returns how many."""
        cutoff = self.clock() - older_than_s
        async with self.db.transaction() as conn:
            results, started = self.tables.results, self.tables.started
            result = await conn.execute(delete(results).where(results.c.created_at < cutoff))
            marks = await conn.execute(delete(started).where(started.c.started_at < cutoff))
        return int(result.rowcount or 0) + int(marks.rowcount or 0)


class KeyValueStore:
    """Durable JSON documents by collection and key, for a domain's own state.

    Every method is one transaction. Values are JSON objects (dicts of JSON values).

    Args:
        db: The domain's database.
        tables: The domain's tables.
        clock: Epoch seconds (injectable for tests).
    """

    def __init__(
        self, db: Database, tables: DomainTables, clock: Callable[[], float] = time.time
    ) -> None:
        self.db = db
        self.tables = tables
        self.clock = clock

    async def put(self, collection: str, key: str, value: dict[str, Any]) -> None:
        """Stores `value` under `key`, replacing what was there."""
        _check(collection, key)
        statement = self.db.insert(self.tables.records).values(
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
        table = self.tables.records
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
        table = self.tables.records
        async with self.db.transaction() as conn:
            result = await conn.execute(
                delete(table).where(table.c.collection == collection, table.c.key == key)
            )
        return bool(result.rowcount)

    async def list(
        self, collection: str, *, after: str = "", limit: int = 100
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` (key, value) pairs with keys greater than `after`, in key order."""
        table = self.tables.records
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
        table = self.tables.records
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
