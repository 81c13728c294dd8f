"""The SQLite writer thread: calls in order on one thread, errors handed back, a call
cancelled before it started never runs, and close ends the thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from services.common.storage import SqliteWriter


@pytest.fixture
def writer(tmp_path: Path) -> SqliteWriter:
    path = tmp_path / "w.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (n INTEGER)")
    return SqliteWriter(str(path), "test-writer")


def insert(n: int) -> Callable[[sqlite3.Connection], tuple[str, int]]:
    def write(conn: sqlite3.Connection) -> tuple[str, int]:
        conn.execute("INSERT INTO t VALUES (?)", (n,))
        return threading.current_thread().name, n

    return write


def rows(conn: sqlite3.Connection) -> list[int]:
    return [n for (n,) in conn.execute("SELECT n FROM t ORDER BY rowid")]


async def test_calls_run_in_order_on_the_writer_thread_and_return_their_results(
    writer: SqliteWriter,
) -> None:
    results = await asyncio.gather(*(writer.run(insert(n)) for n in range(20)))
    assert results == [("test-writer", n) for n in range(20)]
    assert await writer.run(rows) == list(range(20))
    await writer.close()


async def test_an_error_is_raised_to_the_caller_and_the_thread_goes_on(
    writer: SqliteWriter,
) -> None:
    def broken(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO missing VALUES (1)")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await writer.run(broken)
    assert await writer.run(insert(7)) == ("test-writer", 7)
    await writer.close()


async def test_a_call_cancelled_before_the_thread_took_it_never_runs(
    writer: SqliteWriter,
) -> None:
    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> str:
        started.set()
        release.wait(10)
        return "held"

    holding = asyncio.create_task(writer.run(hold))
    await asyncio.to_thread(started.wait, 10)
    queued = asyncio.create_task(writer.run(insert(1)))
    await asyncio.sleep(0)  # queued behind the held call
    queued.cancel()
    release.set()
    assert await holding == "held"
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert await writer.run(rows) == []
    await writer.close()


async def test_a_cancelled_caller_of_a_running_call_leaves_it_to_finish(
    writer: SqliteWriter,
) -> None:
    started, release = threading.Event(), threading.Event()

    def slow_insert(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)
        conn.execute("INSERT INTO t VALUES (5)")

    running = asyncio.create_task(writer.run(slow_insert))
    await asyncio.to_thread(started.wait, 10)
    running.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert await writer.run(rows) == [5]
    await writer.close()


async def test_close_closes_the_connection_and_ends_the_thread(writer: SqliteWriter) -> None:
    conn = await writer.run(lambda c: c)
    names = {t.name for t in threading.enumerate()}
    assert "test-writer" in names
    await writer.close()
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    assert "test-writer" not in {t.name for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="closed"):
        await writer.run(rows)
