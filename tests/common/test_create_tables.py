"""Database.create_tables: a current schema is settled by one catalog query, and a table
that is missing (new in the code, or dropped) is created, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, event, insert, select, text

from services.common.storage import Database, missing_tables
from tests.conftest import DatabaseTarget


def _metadata(*extra: str) -> MetaData:
    metadata = MetaData()
    Table("ct_items", metadata, Column("id", Integer, primary_key=True), Column("name", String))
    Table("ct_notes", metadata, Column("id", Integer, primary_key=True))
    for name in extra:
        Table(name, metadata, Column("id", Integer, primary_key=True))
    return metadata


def _statements(db: Database) -> list[str]:
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    return seen


async def _tables(db: Database, metadata: MetaData) -> list[str]:
    async with db.read() as conn:
        return await conn.run_sync(missing_tables, metadata)


async def test_a_current_schema_is_settled_without_ddl_or_per_table_reflection(
    database: DatabaseTarget,
) -> None:
    db = Database(database.url, schema=database.schema)
    try:
        metadata = _metadata()
        await db.create_tables(metadata)
        seen = _statements(db)
        await db.create_tables(metadata)
        assert not [s for s in seen if "CREATE" in s.upper()]
        # create_all would reflect each table with a statement naming it.
        assert not [s for s in seen if "ct_items" in s or "ct_notes" in s]
        assert await _tables(db, metadata) == []
    finally:
        await db.close()


async def test_a_table_new_in_the_code_is_created_and_existing_rows_are_kept(
    database: DatabaseTarget,
) -> None:
    db = Database(database.url, schema=database.schema)
    try:
        first = _metadata()
        await db.create_tables(first)
        async with db.transaction() as conn:
            await conn.execute(insert(first.tables["ct_items"]).values(id=1, name="kept"))
        grown = _metadata("ct_added")
        assert await _tables(db, grown) == ["ct_added"]
        await db.create_tables(grown)
        assert await _tables(db, grown) == []
        async with db.read() as conn:
            names = (await conn.execute(select(grown.tables["ct_items"].c.name))).scalars()
            assert list(names) == ["kept"]
    finally:
        await db.close()


async def test_a_dropped_table_is_created_again(database: DatabaseTarget) -> None:
    db = Database(database.url, schema=database.schema)
    try:
        metadata = _metadata()
        await db.create_tables(metadata)
        async with db.transaction() as conn:
            await conn.execute(text("DROP TABLE ct_notes"))
        assert await _tables(db, metadata) == ["ct_notes"]
        await db.create_tables(metadata)
        assert await _tables(db, metadata) == []
    finally:
        await db.close()


async def test_instances_creating_the_same_tables_at_once_all_succeed(
    database: DatabaseTarget,
) -> None:
    # Instances of a component start together on one database; only PostgreSQL runs
    # them in parallel (its advisory lock serializes the DDL), SQLite's writers queue.
    dbs = [Database(database.url, schema=database.schema) for _ in range(4)]
    try:
        metadata = _metadata()
        if dbs[0].is_sqlite:
            for db in dbs:
                await db.create_tables(metadata)
        else:
            await asyncio.gather(*(db.create_tables(metadata) for db in dbs))
        assert await _tables(dbs[0], metadata) == []
    finally:
        for db in dbs:
            await db.close()
