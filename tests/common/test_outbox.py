"""The transactional outbox: events wait while the publisher fails, then go out in order."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import MetaData

from services.common.outbox import (
    OUTBOX_COLUMNS,
    Outbox,
    OutboxEvent,
    OutboxRelay,
    flush_and_close,
    outbox_table,
    sqlite_outbox_insert,
    sqlite_outbox_rows,
)
from services.common.storage import Database
from tests.conftest import DatabaseTarget


class FlakyPublisher:
    """Fails while `down` is set; records what it published."""

    def __init__(self) -> None:
        self.down = True
        self.published: list[str] = []

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        if self.down:
            raise ConnectionError("bus is down")
        self.published += [e.event_type for e in events]


@pytest.fixture
async def outbox(database: DatabaseTarget) -> Outbox:
    metadata = MetaData()
    table = outbox_table(metadata, "test")
    db = Database(database.url, schema=database.schema)
    await db.create_tables(metadata)
    yield Outbox(db, table, "test")  # type: ignore[misc]
    await db.close()


async def test_events_wait_during_an_outage_and_go_out_in_order(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    async with outbox.db.transaction() as conn:
        for index in range(5):
            await outbox.enqueue(conn, f"thing.{index}", {"index": index})
    publisher = FlakyPublisher()
    relay = OutboxRelay(outbox, publisher, batch=2, poll_interval_s=0.01, max_backoff_s=0.02)
    with caplog.at_level(logging.DEBUG, logger="services.common.outbox"):
        task = asyncio.create_task(relay.run())
        try:
            for _ in range(500):
                if relay.failures >= 4:
                    break
                await asyncio.sleep(0.01)
            assert await outbox.count() == 5
            publisher.down = False
            relay.wake()
            for _ in range(500):
                if any("publishing again" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.01)
            assert await outbox.count() == 0
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert publisher.published == [f"thing.{i}" for i in range(5)]
    assert relay.published == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "an outage is reported once, not at every retry"
    assert "bus is down" in warnings[0].getMessage()
    assert any("publishing again" in r.getMessage() for r in caplog.records)


async def test_an_event_enqueued_in_a_rolled_back_transaction_never_goes_out(
    outbox: Outbox,
) -> None:
    async def failing_change() -> None:
        async with outbox.db.transaction() as conn:
            await outbox.enqueue(conn, "never.happened", {})
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    assert await outbox.count() == 0


def test_the_raw_sqlite_insert_stores_rows_the_outbox_reads_back(tmp_path: Path) -> None:
    metadata = MetaData()
    table = outbox_table(metadata, "raw")
    path = tmp_path / "raw.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(
        "CREATE TABLE raw_outbox (row_id INTEGER PRIMARY KEY AUTOINCREMENT, event_id, "
        "event_type, source_domain, subject, data, traceparent, created_at)"
    )
    row = {
        "event_id": "e1",
        "event_type": "x.happened",
        "source_domain": "ai_domain",
        "subject": "s",
        "data": {"n": 1},
        "traceparent": "",
        "created_at": 1.5,
    }
    sqlite_outbox_insert(table).run(conn, sqlite_outbox_rows([row]))
    stored = conn.execute(f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM raw_outbox").fetchall()
    conn.close()
    assert stored == [("e1", "x.happened", "ai_domain", "s", '{"n": 1}', "", 1.5)]


class SyncClosingPublisher(FlakyPublisher):
    """Records whether it was closed, by a plain `close`."""

    closed = False

    def close(self) -> None:
        self.closed = True


class AsyncClosingPublisher(FlakyPublisher):
    """Records whether it was closed, by a coroutine `close`."""

    closed = False

    async def close(self) -> None:
        self.closed = True


async def test_the_shutdown_flush_sends_what_it_can_keeps_the_rest_and_closes_every_publisher(
    outbox: Outbox,
) -> None:
    async with outbox.db.transaction() as conn:
        await outbox.enqueue(conn, "thing.kept", {})
    down = SyncClosingPublisher()
    up = AsyncClosingPublisher()
    up.down = False

    await flush_and_close([OutboxRelay(outbox, down)], [down, up])
    assert await outbox.count() == 1  # a publisher that fails leaves the event for later
    assert down.closed
    assert up.closed

    await flush_and_close([OutboxRelay(outbox, up)], [])
    assert up.published == ["thing.kept"]
    assert await outbox.count() == 0
