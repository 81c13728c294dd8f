"""Librarian fixtures: the core on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.storage import Database
from services.kernels.librarian.librarian import Librarian
from tests.conftest import DatabaseTarget
from tests.support import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(1_000_000.0)


@pytest.fixture
async def librarian(database: DatabaseTarget, clock: ManualClock) -> AsyncIterator[Librarian]:
    """An open librarian core on SQLite and on PostgreSQL."""
    core = Librarian(Database(database.url, schema=database.schema), clock)
    await core.open()
    try:
        yield core
    finally:
        await core.close()
