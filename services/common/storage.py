"""Storage on SQLAlchemy 2 (async): embedded SQLite by default, PostgreSQL by URL.

Every service keeps its tables in one `MetaData` with names prefixed by the service
(`registry_domains`), so all services can share one PostgreSQL database. SQLite files run
in WAL mode with `synchronous=FULL`: a transaction that returned is on disk, so nothing
acknowledged to a client is lost on a crash or power cut.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

# The embedded default's driver. SQLAlchemy would import it at the first engine, in every
# component's own process (about 7 ms of the 85 ms of CPU a kernel takes to start); imported
# with this module, it is imported once, by the fork server, and shared.
import aiosqlite  # noqa: F401
from sqlalchemy import Connection, MetaData, Table, event, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

T = TypeVar("T")

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}

# What SQLite's unix VFS calls to sync a file: fdatasync where the platform has it (it
# skips metadata a read does not need), fsync elsewhere (macOS).
_fdatasync = getattr(os, "fdatasync", os.fsync)


def normalize_url(url: str) -> str:
    """Adds the async driver to a plain `sqlite://` or `postgresql://` URL."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend not in _DRIVERS:
        raise ValueError(f"database URL {parsed!r}: only sqlite and postgresql are supported")
    if parsed.drivername == backend:
        parsed = parsed.set(drivername=_DRIVERS[backend])
    return parsed.render_as_string(hide_password=False)


class Database:
    """An async engine plus the conventions Grace stores rely on.

    Args:
        url: SQLAlchemy URL (`sqlite+aiosqlite:///path.db`, `postgresql+asyncpg://...`).
        schema: PostgreSQL schema to use as the search path (tests isolate themselves
            this way); ignored for SQLite.
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self.url = normalize_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        else:
            kwargs["pool_size"] = 10
            kwargs["max_overflow"] = 10
            kwargs["pool_pre_ping"] = True
            if schema:
                kwargs["connect_args"] = {"server_settings": {"search_path": schema}}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite backend."""
        return self.dialect == "sqlite"

    async def create_tables(self, metadata: MetaData) -> None:
        """Creates the service's tables if missing (idempotent).

        Most starts find every table there: one catalog query (`missing_tables`) then
        settles it, instead of `create_all`'s reflection of each table in turn, a round
        trip and SQLAlchemy's bookkeeping per table (about 40% of this call on an
        existing SQLite file). That is no weaker than `create_all`, which also only creates
        the tables it does not find and never alters one that exists. On PostgreSQL,
        instances starting together take a transaction-scoped advisory lock before they
        create anything: concurrent CREATE TABLE statements can otherwise collide. The
        catalog query runs before the lock, so instances that find everything never queue
        on it.
        """
        async with self.engine.begin() as conn:
            if not await conn.run_sync(missing_tables, metadata):
                return
            if not self.is_sqlite:
                await conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7471826)")
            await conn.run_sync(metadata.create_all)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction: committed on exit, rolled back on error."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads."""
        async with self.engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def dedicated_connection(self) -> AsyncIterator[Any]:
        """The driver's own connection (asyncpg), kept apart from the pool's work for as
        long as the block runs: for LISTEN and session-level advisory locks. It is closed
        on exit, never handed back to the pool, so its listeners and locks end with it."""
        if self.is_sqlite:
            raise RuntimeError("a dedicated connection needs PostgreSQL")
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            try:
                yield raw.driver_connection
            finally:
                await conn.invalidate()

    def insert(self, table: Table) -> Any:
        """A dialect-specific INSERT that supports `on_conflict_do_update/nothing`."""
        if self.is_sqlite:
            return sqlite.insert(table)
        return postgresql.insert(table)

    def sqlite_writer(self, name: str) -> SqliteWriter | None:
        """The dedicated writer thread of a hot write path, or None where there is none
        (PostgreSQL, whose driver is already asynchronous, and in-memory SQLite)."""
        database = make_url(self.url).database
        if not self.is_sqlite or not database or database == ":memory:":
            return None
        return SqliteWriter(database, name)

    async def close(self) -> None:
        """Closes every pooled connection."""
        await self.engine.dispose()


def missing_tables(connection: Connection, metadata: MetaData) -> list[str]:
    """The tables of `metadata` that the database does not have, from one catalog query
    per schema (tables of the connection's default schema, unless a table names one)."""
    inspector = inspect(connection)
    by_schema: dict[str | None, list[str]] = {}
    for table in metadata.sorted_tables:
        by_schema.setdefault(table.schema, []).append(table.name)
    missing: list[str] = []
    for schema, names in by_schema.items():
        present = set(inspector.get_table_names(schema=schema))
        missing.extend(name for name in names if name not in present)
    return missing


# The page cache of a pooled SQLite connection, in KiB. SQLite's default, 2,000 KiB, fills
# slowly as a database grows: under steady load a component kept growing for tens of
# minutes (the librarian by about 5 MB per 30 minutes), which looks like a leak and adds up
# over twenty processes. Most of it buys little: a connection's cache is emptied whenever
# another connection commits (WAL), which in Grace's write-heavy components is all the time,
# and a page not cached is read from the kernel's page cache, not the disk. What must fit is
# one query's working set: at 256 KiB the bus's duplicate check (a batch of ids looked up in
# one index) lost its inner pages between lookups and PublishBatch was 7% slower; at 1,024
# KiB no difference from the default was measurable.
SQLITE_CACHE_KIB = 1024
# A writer thread's connection (`SqliteWriter`) keeps SQLite's default: it is the only
# writer of its tables, so its cache survives its own commits and keeps the pages every
# insert touches.
SQLITE_WRITER_CACHE_KIB = 2000
# A writer's commits on its thread let SQLite fold the WAL back into the database once it
# holds this many pages (SQLite's automatic checkpoint, at its default); commits on the
# event loop never do, as a checkpoint syncs the disk. So at most `SQLITE_INLINE_RUN`
# commits in a row run inline: the next one runs on the thread, and checkpoints there if
# the WAL has grown past the bound.
SQLITE_CHECKPOINT_PAGES = 1000
SQLITE_INLINE_RUN = 200
# A batch of at most this many records (events, log entries, decisions: the rows of its
# main table) is committed on the event loop (`SqliteWriter.commit`): for writes that come
# one or a few at a time that is one hop to the writer thread (for the sync) instead of one
# GIL hand-over per statement. A larger batch is committed on the thread, where SQLite's
# work for it (tens of microseconds per row) runs beside the event loop's instead of
# between its turns.
SQLITE_INLINE_MAX_ROWS = 32


def apply_sqlite_pragmas(connection: Any, cache_kib: int = SQLITE_CACHE_KIB) -> None:
    """Grace's SQLite settings, the one copy: WAL with synchronous=FULL (a transaction that
    returned is on disk), foreign keys on, waiting up to 10 s for another writer, and a
    page cache of `cache_kib`."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
    cursor.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    apply_sqlite_pragmas(dbapi_connection)


class SqliteWriter:
    """One `sqlite3` connection on one dedicated thread, for a group-committed write path.

    Through the async engine every statement of a transaction is a separate hop to the
    driver's thread plus SQLAlchemy's bookkeeping (about 2.5 ms and 0.6 ms of CPU per small
    commit here). A writer runs a whole batch (its statements and the COMMIT) as one call on
    its own thread with the standard `sqlite3` module: one hop per batch, C-level
    `executemany`. The connection has the same pragmas as the engine's and is in autocommit
    mode: a batch opens its transaction explicitly (`transaction`).

    The hop is a plain queue to the thread and `call_soon_threadsafe` back, not an
    executor: `run_in_executor` costs a work item, two chained futures and the executor's
    locks per call, which showed as several percent of a busy orchestrator's event loop.

    Commits go through `commit`, which may run a small one inline on the event loop
    instead: with `synchronous=NORMAL` a commit only appends to the WAL in the page cache,
    and a durable one is then made so by `flush`, which syncs the WAL on the thread (what
    `synchronous=FULL` does within each commit; one sync covers every commit before it).
    Inline, a commit holds the event loop for its writes only, never for the disk, nor for
    the GIL: on the thread beside a busy event loop each statement hands the GIL over and
    waits to get it back (an orchestrator batch took 2.4 ms there against 0.3 ms inline, at
    16 concurrent workflows). The connection never waits inside SQLite (`busy_timeout` 0):
    `commit` waits for another connection's lock on the thread, in short steps, and SQLite's
    automatic checkpoints only run there (`SQLITE_INLINE_RUN`).

    Args:
        path: The database file (its tables already exist).
        name: Names the thread.
    """

    def __init__(self, path: str, name: str) -> None:
        self._path = path
        self._name = name
        self._jobs: queue.SimpleQueue[_WriterJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        # Commits made on the connection, and how many of them are known to be on disk:
        # counted by whoever holds the connection (`_in_use`), as each commit returns.
        self._written = 0
        self._durable = 0
        self._flushing: asyncio.Future[None] | None = None
        # Held by whoever uses the connection: the thread, or an inline commit, which never
        # waits for it (it commits on the thread instead).
        self._in_use = threading.Lock()
        self._settings = ("FULL", 0)  # synchronous, wal_autocheckpoint (see `_connection`)
        self._inline_run = 0  # commits made inline since the last one on the thread

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            apply_sqlite_pragmas(conn, SQLITE_WRITER_CACHE_KIB)
            conn.execute("PRAGMA busy_timeout=0")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            self._settings = ("FULL", 0)
            self._conn = conn
        return self._conn

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Runs `work(connection)` on the writer thread and returns its result (for reads
        and settings: commits go through `commit`, which keeps the WAL folded back).

        Calls run one at a time, in the order they were made. A call cancelled before the
        thread took it up is not run; once running, it runs to its end (its result is then
        dropped), as with an executor.
        """
        return await self._submit(lambda: self._holding_connection(work))

    def _holding_connection(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._in_use:
            return work(self._connection())

    async def commit(
        self,
        transaction: Callable[[sqlite3.Connection], T],
        *,
        durable: bool,
        inline: bool = True,
    ) -> T:
        """Runs `transaction(connection)` (its statements, BEGIN to COMMIT) and returns its
        result once it is committed and, when `durable`, on disk.

        Inline on the event loop with `synchronous=NORMAL` when `inline` allows it, then
        (`durable`) a `flush`. On the writer thread instead, with `synchronous=FULL` when
        `durable`: when `inline` is False (a large batch, whose SQLite work then runs beside
        the event loop's instead of between its turns), while the thread uses the
        connection, when another connection holds SQLite's lock (the thread waits for it in
        short steps), and after `SQLITE_INLINE_RUN` inline commits in a row (so that the
        WAL is folded back).
        """
        if inline and self._inline_run < SQLITE_INLINE_RUN and self._in_use.acquire(blocking=False):
            try:
                committed, result = self._commit_inline(transaction)
            finally:
                self._in_use.release()
            if committed:
                if durable:
                    await self.flush()
                return result
        return await self._submit(
            lambda: self._holding_connection(
                lambda conn: self._commit_on_thread(conn, transaction, durable)
            )
        )

    def _commit_inline(self, transaction: Callable[[sqlite3.Connection], T]) -> tuple[bool, T]:
        """(True, its result), or (False, None) when another connection holds the lock."""
        conn = self._connection()
        self._configure(conn, "NORMAL", 0)
        try:
            result = transaction(conn)
        except sqlite3.OperationalError as exc:
            if not is_sqlite_busy(exc):
                raise
            return False, None  # type: ignore[return-value]  # the caller ignores it
        self._written += 1
        self._inline_run += 1
        return True, result

    def _commit_on_thread(
        self,
        conn: sqlite3.Connection,
        transaction: Callable[[sqlite3.Connection], T],
        durable: bool,
    ) -> T:
        self._configure(conn, "FULL" if durable else "NORMAL", SQLITE_CHECKPOINT_PAGES)
        result = retry_while_busy(lambda: transaction(conn), pause_s=0.002)
        self._written += 1
        if durable:  # its sync of the WAL made every commit before it durable too
            self._durable = self._written
        self._inline_run = 0
        return result

    def _configure(self, conn: sqlite3.Connection, synchronous: str, checkpoint: int) -> None:
        """Sets the connection's `synchronous` and `wal_autocheckpoint` where they differ
        from what the last commit used."""
        if (synchronous, checkpoint) == self._settings:
            return
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA wal_autocheckpoint={int(checkpoint)}")
        self._settings = (synchronous, checkpoint)

    async def flush(self) -> None:
        """Returns once every commit made so far is on disk.

        One sync at a time: callers that arrive while one is in flight wait for it, and sync
        again (together) if it started before their commits. A failed sync raises in the
        caller that made it; the others then try again themselves.
        """
        target = self._written
        while self._durable < target:
            in_flight = self._flushing
            if in_flight is not None:
                await asyncio.wait({in_flight})
                continue
            covered = self._written  # committed before the sync starts: it covers them
            self._flushing = in_flight = asyncio.get_running_loop().create_future()
            try:
                # Awaited directly rather than in a task of its own: a task costs the
                # caller two more turns of a busy event loop before it resumes.
                await self._submit(self._fsync_wal)
                # A commit on the thread may raise it meanwhile; a lost update only ever
                # lowers it, which costs a sync, never durability.
                self._durable = max(self._durable, covered)
            finally:
                self._flushing = None
                in_flight.set_result(None)

    def _fsync_wal(self) -> None:
        # Opened for each sync rather than kept: a sync through any descriptor flushes the
        # file, and a new one can never point at a WAL file SQLite has since replaced. A
        # database SQLite could not put in WAL mode (a file system without shared memory)
        # commits into its main file, which is then the one to sync.
        try:
            fd = os.open(f"{self._path}-wal", os.O_RDWR)
        except FileNotFoundError:
            fd = os.open(self._path, os.O_RDWR)
        try:
            _fdatasync(fd)
        finally:
            os.close(fd)

    async def _submit(self, call: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError(f"{self._name}: the writer is closed")
        if self._thread is None:
            # Daemon: a process that stops without closing its writers (a fatal error) must
            # not hang at exit on a thread waiting for work. Owners close their writers.
            self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_WriterJob(call, loop, future))
        return await future

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.future.cancelled():
                continue
            try:
                result = job.call()
            except BaseException as exc:  # handed to the caller, like an executor does
                job.settle(None, exc)
            else:
                job.settle(result, None)

    async def close(self) -> None:
        """Flushes what is not yet durable, closes the connection and stops the thread
        (calls made before it still run)."""
        if self._written > self._durable:
            await self.flush()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._submit(conn.close)
        self._closed = True
        if self._thread is not None:
            thread, self._thread = self._thread, None
            self._jobs.put(None)
            # Every call made before is done (the connection's close ran after them): the
            # thread only has to take the sentinel and return.
            thread.join()


@dataclass(frozen=True)
class _WriterJob:
    """A call for the writer thread and the future of the event loop that waits for it."""

    call: Callable[[], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]

    def settle(self, result: Any, error: BaseException | None) -> None:
        """From the writer thread: hands the outcome to the waiting event loop."""
        with suppress(RuntimeError):  # The loop is closed: nobody waits any more.
            self.loop.call_soon_threadsafe(self._set, result, error)

    def _set(self, result: Any, error: BaseException | None) -> None:
        if self.future.cancelled():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


def is_sqlite_busy(exc: sqlite3.OperationalError) -> bool:
    """True when `exc` means another connection holds SQLite's lock."""
    text = str(exc)
    return "locked" in text or "busy" in text


def retry_while_busy(
    attempt: Callable[[], T], *, timeout_s: float = 10.0, pause_s: float = 0.001
) -> T:
    """`attempt()`, again after `pause_s` while SQLite is busy, for at most `timeout_s`.

    For writer threads whose connection never waits inside SQLite (busy_timeout 0, so that
    an inline commit on an event loop cannot stall it): on the thread, waiting for another
    writer is fine, so it waits here. Any other error, or busy past the deadline, raises.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return attempt()
        except sqlite3.OperationalError as exc:
            if not is_sqlite_busy(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause_s)


@contextmanager
def sqlite_transaction(conn: sqlite3.Connection, *, immediate: bool = True) -> Iterator[None]:
    """BEGIN (IMMEDIATE: take the write lock now, not at the first write) ... COMMIT, or
    ROLLBACK when the block raises, on an autocommit-mode `sqlite3` connection."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class RowInsert:
    """An INSERT (or, with `on_conflict`, an upsert) of many rows on a raw `sqlite3`
    connection, in as few statements as it takes.

    Python's `sqlite3` releases the GIL around every step of a statement, and `executemany`
    steps once per row. A writer thread beside a busy event loop then hands the GIL over
    once per row and waits, each time, until the loop gives it back: up to the
    interpreter's switch interval (5 ms) while the loop runs Python. A multi-row `VALUES`
    list binds a chunk of rows and inserts them all in one step: one hand-over per chunk,
    and SQLite's work for the whole chunk runs beside the loop instead of between its turns.
    Rows are inserted in order, one after another as with `executemany` (an upsert's later
    row sees the earlier ones of the same statement).

    Full chunks are `max_rows` rows (fewer when SQLite's limit on bound parameters requires
    it) and the rest is split in powers of two, so a connection prepares, and its statement
    cache keeps, a handful of statement shapes, not one per batch size.

    Args:
        table: The table's name.
        columns: The columns each row gives, in order.
        on_conflict: What follows the `VALUES` list (`ON CONFLICT (...) DO UPDATE ...`).
        max_rows: The most rows one statement inserts.
    """

    def __init__(
        self, table: str, columns: Sequence[str], *, on_conflict: str = "", max_rows: int = 256
    ) -> None:
        if not columns or max_rows < 1:
            raise ValueError("an insert needs columns and at least one row per statement")
        self._head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
        self._row = f"({', '.join('?' for _ in columns)})"
        self._tail = f" {on_conflict}" if on_conflict else ""
        self._width = len(columns)
        self._max_rows = max_rows
        self._chunk = 0  # rows per full statement: set at the first run (SQLite's limit)
        self._sql: dict[int, str] = {}

    @property
    def sql(self) -> str:
        """The statement for one row (what `executemany` would run)."""
        return self._statement(1)

    def run(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]]) -> None:
        """Inserts `rows` on `conn`, inside the caller's transaction."""
        if not self._chunk:
            limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // self._width
            self._chunk = 1 << (max(1, min(self._max_rows, limit)).bit_length() - 1)
        start, total = 0, len(rows)
        size = self._chunk
        while start < total:
            while size > total - start:
                size >>= 1
            values = list(chain.from_iterable(rows[start : start + size]))
            conn.execute(self._statement(size), values)
            start += size

    def _statement(self, rows: int) -> str:
        sql = self._sql.get(rows)
        if sql is None:
            sql = self._sql[rows] = self._head + ",".join([self._row] * rows) + self._tail
        return sql
