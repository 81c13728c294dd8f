"""Every SQLite connection Grace opens, pooled or a writer's, has the same settings:
durable WAL, foreign keys, a busy wait, and a bounded page cache (a writer's larger). A
writer's connection, which may commit on the event loop, never waits inside SQLite (no busy
wait, no automatic checkpoints: it waits and checkpoints on its thread)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from services.common.storage import SQLITE_CACHE_KIB, SQLITE_WRITER_CACHE_KIB, Database

EXPECTED = {
    "journal_mode": "wal",
    "synchronous": 2,  # FULL
    "foreign_keys": 1,
    "busy_timeout": 10000,
    # Negative: a size in KiB rather than in pages.
    "cache_size": -SQLITE_CACHE_KIB,
}


def settings(conn: sqlite3.Connection) -> dict[str, object]:
    return {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in EXPECTED}


async def test_pooled_and_writer_connections_have_grace_settings(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'settings.db'}")
    try:
        async with db.read() as conn:
            pooled = {
                name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar() for name in EXPECTED
            }
        assert pooled == EXPECTED
        writer = db.sqlite_writer("settings-writer")
        assert writer is not None
        assert await writer.run(settings) == {
            **EXPECTED,
            "cache_size": -SQLITE_WRITER_CACHE_KIB,
            "busy_timeout": 0,
        }
        assert await writer.run(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
        await writer.close()
    finally:
        await db.close()
