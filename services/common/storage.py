"""Storage on SQLAlchemy 2 (async): embedded SQLite by default, PostgreSQL by URL.

Every service keeps its tables in one `MetaData` with names prefixed by the service
(`registry_domains`), so all services can share one PostgreSQL database. SQLite files run
in WAL mode with `synchronous=FULL`: a transaction that returned is on disk, so nothing
acknowledged to a client is lost on a crash or power cut.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

log = logging.getLogger(__name__)

_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


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
        """Creates the service's tables if missing (idempotent)."""
        async with self.engine.begin() as conn:
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

    def insert(self, table: Table) -> Any:
        """A dialect-specific INSERT that supports `on_conflict_do_update/nothing`."""
        if self.is_sqlite:
            return sqlite.insert(table)
        return postgresql.insert(table)

    def sync_sqlite_engine(self) -> Engine:
        """A synchronous engine on the same SQLite file, with the same pragmas.

        For a hot write path that batches many statements into one transaction on a
        dedicated thread: one thread hop per batch instead of one per statement. Only for
        SQLite; PostgreSQL goes through the async engine.
        """
        if not self.is_sqlite:
            raise ValueError("sync_sqlite_engine is only available for SQLite")
        url = make_url(self.url).set(drivername="sqlite")
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    async def close(self) -> None:
        """Closes every pooled connection."""
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()
