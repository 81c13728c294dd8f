"""The SQLite writer thread: calls in order on one thread, errors handed back, a call
cancelled before it started never runs, and close ends the thread; `flush` syncs the WAL
after commits made without waiting for the disk, one sync for many callers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from services.common import storage
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


class Syncs:
    """Stands in for fdatasync: records the inode of every file synced; with `hold`, each
    sync waits on the writer thread until the test releases it."""

    def __init__(self, *, hold: bool = False, fail_first: bool = False) -> None:
        self.inodes: list[int] = []
        self.hold = hold
        self.fail_first = fail_first
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)

    def __call__(self, fd: int) -> None:
        self.started.release()
        if self.hold:
            assert self.release.acquire(timeout=10)
        if self.fail_first:
            self.fail_first = False
            raise OSError(5, "Input/output error")
        self.inodes.append(os.fstat(fd).st_ino)

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.acquire, True, 10)


@pytest.fixture
def install_syncs(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Syncs]:
    """Installs a `Syncs` (with these options) as the writer's fdatasync."""

    def install(**options: bool) -> Syncs:
        fake = Syncs(**options)
        monkeypatch.setattr(storage, "_fdatasync", fake)
        return fake

    return install


@pytest.fixture
def syncs(install_syncs: Callable[..., Syncs]) -> Syncs:
    return install_syncs()


def insert_row(n: int) -> Callable[[sqlite3.Connection], None]:
    def transaction(conn: sqlite3.Connection) -> None:
        with storage.sqlite_transaction(conn):
            conn.execute("INSERT INTO t VALUES (?)", (n,))

    return transaction


async def commit_inline(writer: SqliteWriter, n: int) -> None:
    """A commit on the event loop that does not wait for the disk."""
    await writer.commit(insert_row(n), durable=False)


async def test_a_commit_runs_inline_and_a_durable_one_is_synced_before_it_returns(
    writer: SqliteWriter, syncs: Syncs, tmp_path: Path
) -> None:
    threads: list[str] = []

    def record_thread(conn: sqlite3.Connection) -> None:
        threads.append(threading.current_thread().name)
        insert_row(1)(conn)

    await writer.commit(record_thread, durable=False)
    assert threads == [threading.current_thread().name]  # the event loop's
    assert syncs.inodes == []
    await writer.commit(insert_row(2), durable=True)
    assert syncs.inodes == [os.stat(tmp_path / "w.db-wal").st_ino]
    assert await writer.run(rows) == [1, 2]
    await writer.close()


async def test_a_commit_not_inline_runs_on_the_thread_with_synchronous_full(
    writer: SqliteWriter, syncs: Syncs
) -> None:
    seen: list[tuple[str, int]] = []

    def record(conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA synchronous").fetchone()[0]
        seen.append((threading.current_thread().name, mode))
        insert_row(1)(conn)

    await writer.commit(record, durable=True, inline=False)
    assert seen == [("test-writer", 2)]  # FULL: the commit synced the WAL itself
    await writer.flush()
    assert syncs.inodes == []
    await writer.close()


async def test_a_commit_waits_on_the_thread_while_another_connection_holds_the_lock(
    writer: SqliteWriter, syncs: Syncs, tmp_path: Path
) -> None:
    await commit_inline(writer, 1)  # the WAL exists
    other = sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    committing = asyncio.create_task(writer.commit(insert_row(2), durable=True))
    await asyncio.sleep(0.05)  # the event loop is free meanwhile: the commit waits on the thread
    assert not committing.done()
    other.execute("COMMIT")
    other.close()
    await committing
    assert await writer.run(rows) == [1, 2]
    await writer.close()


async def test_the_wal_is_folded_back_every_so_many_commits(
    writer: SqliteWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Automatic checkpoints are off for inline commits (one would sync the disk on the
    # event loop); a run of them ends with a commit on the thread, where they are on.
    monkeypatch.setattr(storage, "SQLITE_INLINE_RUN", 3)
    monkeypatch.setattr(storage, "SQLITE_CHECKPOINT_PAGES", 1)

    def in_database_file() -> list[int]:
        """The rows of the database file alone, without what is still only in the WAL."""
        copy = tmp_path / "copy.db"
        shutil.copyfile(tmp_path / "w.db", copy)
        with contextlib.closing(sqlite3.connect(copy)) as conn:
            return rows(conn)

    for n in range(3):
        await commit_inline(writer, n)
    assert in_database_file() == []
    await commit_inline(writer, 3)  # the fourth goes to the thread, and checkpoints
    assert in_database_file() == [0, 1, 2, 3]
    await writer.close()


async def test_flush_syncs_the_wal_once_for_the_commits_before_it(
    writer: SqliteWriter, syncs: Syncs, tmp_path: Path
) -> None:
    await writer.flush()
    assert syncs.inodes == []  # nothing committed, nothing to sync
    await commit_inline(writer, 1)
    await commit_inline(writer, 2)
    await writer.flush()
    assert syncs.inodes == [os.stat(tmp_path / "w.db-wal").st_ino]
    await writer.flush()
    assert len(syncs.inodes) == 1  # already durable
    await commit_inline(writer, 3)
    await writer.flush()
    assert len(syncs.inodes) == 2
    await writer.close()


async def test_callers_during_a_sync_wait_for_the_next_one_and_share_it(
    writer: SqliteWriter, install_syncs: Callable[..., Syncs]
) -> None:
    held = install_syncs(hold=True)
    await commit_inline(writer, 1)
    first = asyncio.create_task(writer.flush())
    await held.wait_started()
    # Committed while the first sync runs, which may not cover it.
    await commit_inline(writer, 2)
    later = [asyncio.create_task(writer.flush()) for _ in range(5)]
    held.release.release()
    await first
    await held.wait_started()  # the second sync, for the later callers
    assert not any(task.done() for task in later)
    assert len(held.inodes) == 1
    held.release.release()
    await asyncio.gather(*later)
    assert len(held.inodes) == 2  # five callers, one sync
    await writer.close()


async def test_a_failed_sync_raises_and_the_next_flush_syncs_again(
    writer: SqliteWriter, install_syncs: Callable[..., Syncs]
) -> None:
    failing = install_syncs(fail_first=True)
    with pytest.raises(OSError, match="Input/output error"):
        await writer.commit(insert_row(1), durable=True)
    await writer.flush()
    assert len(failing.inodes) == 1
    assert await writer.run(rows) == [1]  # committed: only its sync failed
    await writer.close()


async def test_close_syncs_what_is_not_durable_yet(writer: SqliteWriter, syncs: Syncs) -> None:
    await commit_inline(writer, 1)
    await writer.close()
    assert len(syncs.inodes) == 1
    await writer.flush()  # after close: nothing left to sync, and no error


async def test_without_a_wal_the_database_file_is_synced(
    writer: SqliteWriter, syncs: Syncs, tmp_path: Path
) -> None:
    # Where SQLite cannot use WAL mode (no shared memory), commits land in the main file.
    await writer.run(lambda conn: conn.execute("PRAGMA journal_mode=DELETE").fetchall())
    await writer.commit(insert_row(1), durable=True)
    assert not (tmp_path / "w.db-wal").exists()
    assert syncs.inodes == [os.stat(tmp_path / "w.db").st_ino]
    await writer.close()
