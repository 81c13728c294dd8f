"""Fixtures of the immutable log tests: a log core on each database backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest

from services.common.signing import SigningKey
from services.common.storage import Database
from services.kernels.immutable_log.log import ImmutableLog, LogSettings
from services.kernels.immutable_log.store import LogStore
from tests.conftest import DatabaseTarget

OpenLog = Callable[[], AbstractAsyncContextManager[ImmutableLog]]


@pytest.fixture
def log_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def open_log(database: DatabaseTarget, log_key: SigningKey) -> OpenLog:
    """Opens the log over the test database; call again to simulate a restart."""

    @asynccontextmanager
    async def opener() -> AsyncIterator[ImmutableLog]:
        log = ImmutableLog(
            LogStore(Database(database.url, schema=database.schema)),
            log_key,
            LogSettings(origin="test.example/log"),
            clock=lambda: 1_800_000_000.0,
        )
        await log.open()
        try:
            yield log
        finally:
            await log.close()

    return opener
