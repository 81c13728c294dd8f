"""Fixtures shared by every test: database backends and in-process servers.

Store tests take the `database` fixture and run once on SQLite and once on PostgreSQL;
the PostgreSQL run needs `GRACE_TEST_POSTGRES_URL` (for example
`postgresql://postgres@127.0.0.1:5432/test`) and is skipped cleanly without it. Each
PostgreSQL test gets a schema of its own, dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

from services.common.config import sqlite_url
from tests.support import session_pki

# Property tests judge what code does, never how fast: hypothesis' per-example deadline
# fails examples that merely ran on a busy machine, so the suite runs without it.
settings.register_profile("grace", deadline=None)
settings.load_profile("grace")

# Every server a test starts, in this process or as a child process, is secure and uses
# the session's test CA and token file (grace up's children get their own from Guardian).
os.environ.update(session_pki().env())


@dataclass(frozen=True)
class DatabaseTarget:
    """Where a store under test keeps its data."""

    url: str
    schema: str | None = None

    @property
    def backend(self) -> str:
        return "sqlite" if self.url.startswith("sqlite") else "postgresql"


def postgres_url() -> str | None:
    """The PostgreSQL URL tests may use, or None."""
    return os.environ.get("GRACE_TEST_POSTGRES_URL") or None


async def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DatabaseTarget]:
    """A fresh, empty database on each backend."""
    if request.param == "sqlite":
        yield DatabaseTarget(sqlite_url(tmp_path / "test.db"))
        return
    url = postgres_url()
    if url is None:
        pytest.skip("GRACE_TEST_POSTGRES_URL is not set")
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    dsn = await _asyncpg_dsn(url)
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL at GRACE_TEST_POSTGRES_URL is unreachable: {exc}")
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    try:
        yield DatabaseTarget(url, schema)
    finally:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await conn.close()


@pytest.fixture
async def fresh_postgres_database() -> AsyncIterator[str]:
    """The URL of a PostgreSQL database of its own, dropped afterwards: for tests that
    start servers as processes, which cannot be handed a schema."""
    url = postgres_url()
    if url is None:
        pytest.skip("GRACE_TEST_POSTGRES_URL is not set")
    import asyncpg

    dsn = await _asyncpg_dsn(url)
    name = f"grace_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL at GRACE_TEST_POSTGRES_URL is unreachable: {exc}")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"{url.rsplit('/', 1)[0]}/{name}"
    finally:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await conn.close()
