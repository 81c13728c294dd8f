"""The LISTEN connection: notifications arrive, and a lost connection comes back with
`on_connect` run again (where listeners catch up on what they missed)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from sqlalchemy import text

from services.common.backoff import Backoff
from services.common.notifications import Listener
from services.common.storage import Database
from tests.conftest import DatabaseTarget


async def test_notifications_arrive_and_a_killed_connection_is_listened_on_again(
    database: DatabaseTarget,
) -> None:
    if database.backend == "sqlite":
        pytest.skip("SQLite has no LISTEN/NOTIFY")
    db = Database(database.url, schema=database.schema)
    received: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    backends: list[int] = []

    async def on_connect(conn: Any) -> None:
        backends.append(await conn.fetchval("SELECT pg_backend_pid()"))

    listener = Listener(
        db,
        ["grace_test_a", "grace_test_b"],
        lambda channel, payload: received.put_nowait((channel, payload)),
        on_connect,
        keepalive_s=0.05,
        backoff=Backoff(0.01, max_s=0.05),
    )
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(10):
            await listener.connected.wait()
        async with db.transaction() as conn:
            await conn.execute(text("SELECT pg_notify('grace_test_b', 'first')"))
        async with asyncio.timeout(10):
            assert await received.get() == ("grace_test_b", "first")
        async with db.transaction() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backends[0]})
        async with asyncio.timeout(10):
            while listener.connections < 2:  # noqa: ASYNC110  # reconnection has no event
                await asyncio.sleep(0.01)
        assert backends[1] != backends[0]
        async with db.transaction() as conn:
            await conn.execute(text("SELECT pg_notify('grace_test_a', 'second')"))
        async with asyncio.timeout(10):
            assert await received.get() == ("grace_test_a", "second")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await db.close()
