"""Each domain's own tables: names, isolation in a shared database, adoption of old tables."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.common.config import sqlite_url
from services.common.outbox import Outbox
from services.common.storage import Database
from services.sdk.store import (
    DomainTables,
    KeyValueStore,
    ResultStore,
    create_domain_tables,
    table_prefix,
)
from tests.conftest import DatabaseTarget


def test_a_plain_domain_id_names_its_tables_as_it_is() -> None:
    assert table_prefix("ai_domain") == "sdk_ai_domain"
    assert DomainTables.of("ai_domain").results.name == "sdk_ai_domain_results"


def test_other_ids_are_folded_and_hashed_so_they_never_collide() -> None:
    prefixes = {table_prefix(i) for i in ("a-b", "a_b", "A_b", "a.b", "x" * 128, "x" * 127)}
    assert len(prefixes) == 6
    assert all(len(f"{p}_started") <= 63 for p in prefixes)  # PostgreSQL's name limit.


async def test_domains_sharing_a_database_never_see_each_others_rows(
    database: DatabaseTarget,
) -> None:
    db = Database(database.url, schema=database.schema)
    try:
        mine, theirs = DomainTables.of("data_domain"), DomainTables.of("ai_domain")
        for domain_id, tables in (("data_domain", mine), ("ai_domain", theirs)):
            await create_domain_tables(db, domain_id, tables)
        await ResultStore(db, mine).put("execute", "ex_1/step_1", "ingest", {"id": 1})
        await ResultStore(db, mine).mark_started("execute", "ex_1/step_2", "ingest")
        await KeyValueStore(db, mine).put("documents", "d1", {"text": "mine"})
        async with db.transaction() as conn:
            await Outbox(db, mine.outbox, "data_domain").enqueue(conn, "data.ingested", {})
        assert await ResultStore(db, theirs).get("execute", "ex_1/step_1") is None
        assert await ResultStore(db, theirs).started("execute", "ex_1/step_2") is None
        assert await KeyValueStore(db, theirs).get("documents", "d1") is None
        assert await Outbox(db, theirs.outbox, "ai_domain").pending(10) == []
        [event] = await Outbox(db, mine.outbox, "data_domain").pending(10)
        assert event.source_domain == "data_domain"
    finally:
        await db.close()


async def _legacy_database(path: Path) -> Database:
    """A database with the tables every domain shared before, holding one row each."""
    db = Database(sqlite_url(path))
    legacy = DomainTables.named("sdk")
    await db.create_tables(legacy.metadata)
    await ResultStore(db, legacy).put("execute", "old-key", "ingest", {"id": 7})
    await KeyValueStore(db, legacy).put("documents", "d7", {"text": "kept"})
    return db


async def test_a_domain_adopts_the_old_tables_of_its_own_database_file(tmp_path: Path) -> None:
    db = await _legacy_database(tmp_path / "data_domain.db")
    try:
        tables = DomainTables.of("data_domain")
        await create_domain_tables(db, "data_domain", tables)
        stored = await ResultStore(db, tables).get("execute", "old-key")
        assert stored is not None
        assert stored.output == {"id": 7}
        assert await KeyValueStore(db, tables).get("documents", "d7") == {"text": "kept"}
    finally:
        await db.close()


async def test_old_tables_in_a_shared_database_are_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = await _legacy_database(tmp_path / "shared.db")
    try:
        tables = DomainTables.of("data_domain")
        with caplog.at_level(logging.WARNING):
            await create_domain_tables(db, "data_domain", tables)
        assert await ResultStore(db, tables).get("execute", "old-key") is None
        assert "shared database" in caplog.text
        legacy = DomainTables.named("sdk")
        assert await KeyValueStore(db, legacy).get("documents", "d7") == {"text": "kept"}
    finally:
        await db.close()
